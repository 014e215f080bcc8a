"""Table and plot for recipes/shape: every arm's child before and after the same continued training, over seeds.

Usage: python recipes/shape/compare.py OUT RUNS DEST
       python recipes/shape/compare.py --choose RUNS/ARM SEED   (prints the arm's learning rate by the rule below)
Reads the runs that run.sh wrote under RUNS (RUNS/ARM/lr<LR>/seed<S>; data and pruning log under OUT) and writes
shape.md, shape.json and curves.png into DEST.

The rule that fixes an arm's learning rate (run.sh applies it before the other seeds run): of the rates swept on the
first seed, the one whose run has the lowest best validation loss (its best/best.json); the test split plays no part.
"""

import json
import sys
from pathlib import Path

from litgpt import Config
from litgpt.data import TextFiles

from litgpt_inheritune.checkpoint import write_json
from litgpt_inheritune.experiments.arms import aggregate, choose_lr, plot_curves, val_curve
from litgpt_inheritune.pruning.shapes import parameter_count
from litgpt_inheritune.validation import test_loss, val_loss

ARMS = {  # run dir under RUNS -> what its child is
    "blocks": "Inheritune: first 11 of 30 blocks, full width",
    "width": "one-shot width inheritance (Minitron importance), 24 blocks x 448",
    "prune_cpt": "learned pruning (Sheared-LLaMA masks, 100 steps), 24 blocks x 448",
    "random": "random init, 24 blocks x 448",
}
BASELINE = "blocks"  # every arm is compared with Inheritune's child
SEQ, BATCH, ITERS = 64, 4, 12  # config_hub/smollm2_shape.yaml


def best_of(run: Path) -> dict:
    return json.loads((run / "best" / "best.json").read_text())


def sweep(arm_dir: Path, seed: int) -> list[dict]:
    """The first seed's runs of one arm, one per learning rate, with their best validation loss."""
    runs = []
    for lr_dir in sorted(arm_dir.glob("lr*")):
        run = lr_dir / f"seed{seed}"
        if (run / "best" / "best.json").is_file():
            runs.append({"lr": float(lr_dir.name[2:]), "best_loss": float(best_of(run)["val_loss"])})
    return runs


def lr_name(lr: float) -> str:
    return f"{lr:g}" if lr >= 1e-3 else f"{lr:.4f}".rstrip("0")  # as run.sh spells it: 0.001, 0.0003


def measure(out: Path, runs: Path, data: TextFiles) -> tuple[list[dict], dict]:
    measured, sweeps = [], {}
    for arm, what in ARMS.items():
        seed_dirs = sorted((runs / arm).glob("lr*/seed*/final/lit_model.pth"))
        if not seed_dirs:
            print(f"skipping {arm}: no runs under {runs / arm}")
            continue
        first = min(int(p.parents[1].name[4:]) for p in seed_dirs)
        sweeps[arm] = sweep(runs / arm, first)
        chosen = choose_lr(sweeps[arm])
        for path in seed_dirs:
            run = path.parents[1]
            lr, seed = float(run.parent.name[2:]), int(run.name[4:])
            if lr != chosen:
                continue  # a swept rate that lost: reported in the sweep, not in the table
            config = Config.from_file(run / "final" / "model_config.yaml")
            best = best_of(run)
            curve = val_curve(run)
            start = val_loss(run / "initial", data, SEQ, BATCH, ITERS)
            measured.append({
                "arm": arm, "seed": seed, "lr": lr, "what": what, "parameters": parameter_count(config, tied=True),
                "shape": {k: getattr(config, k) for k in ("n_layer", "n_embd", "n_head", "n_query_groups",
                                                           "intermediate_size")},
                "start_loss": start,
                "final_loss": val_loss(run / "final", data, SEQ, BATCH, ITERS),
                "best_loss": float(best["val_loss"]), "best_step": best.get("step"),
                "test_loss": test_loss(run / "best", out / "data" / "test", max_seq_length=SEQ, batch_size=BATCH,
                                       max_iters=ITERS),
                "curve": curve, "token_curve": [(0, start)] + [((s + 1) * BATCH * SEQ, l) for s, l in curve],
            })
    return measured, sweeps


def cell(mean, std) -> str:
    return "-" if mean is None else (f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}")


def versus(difference: dict | None) -> str:
    if difference is None:
        return "baseline"
    if difference["se"] is None:
        return f"{difference['diff']:+.3f} (one seed)"
    noise = "within noise" if difference["within_noise"] else "beyond noise"
    return f"{difference['diff']:+.3f} (2 SE {2 * difference['se']:.3f}, {noise})"


def main(out: Path, runs: Path, dest: Path) -> None:
    reference = Path("checkpoints/SmolLM2-135M-Instruct")
    data = TextFiles(train_data_path=out / "data" / "train", val_data_path=out / "data" / "val", num_workers=0)
    measured, sweeps = measure(out, runs, data)
    rows = aggregate(measured, baseline=BASELINE)  # the "vs" columns: against Inheritune's block child
    ref_val = val_loss(reference, data, SEQ, BATCH, ITERS)
    ref_test = test_loss(reference, out / "data" / "test", max_seq_length=SEQ, batch_size=BATCH, max_iters=ITERS)
    prune_log = out / "prune" / "metrics.jsonl"
    pruning = [json.loads(line) for line in prune_log.read_text().splitlines()] if prune_log.is_file() else []
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / "shape.json", {"reference_val_loss": ref_val, "reference_test_loss": ref_test, "rows": rows,
                                     "lr_sweeps": sweeps, "pruning": pruning})
    lines = [
        "| arm | parameters | shape (layers, n_embd, heads/groups, MLP) | lr (sweep on seed 0: best val) | seeds "
        "| start val loss | best val loss | vs blocks | test loss | vs blocks | per seed (best val / test) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["best_loss"]):
        first = r["runs"][0]
        s = first["shape"]
        swept = ", ".join(f"{lr_name(x['lr'])}: {x['best_loss']:.3f}" for x in sweeps[r["arm"]])
        per_seed = "; ".join(f"{x['seed']}: {x['best_loss']:.3f} / {x['test_loss']:.3f}" for x in r["runs"])
        lines.append(
            f"| {r['arm']} | {first['parameters'] / 1e6:.1f}M | {s['n_layer']}, {s['n_embd']}, "
            f"{s['n_head']}/{s['n_query_groups']}, {s['intermediate_size']} | {lr_name(r['lr'])} ({swept}) | "
            f"{', '.join(str(x) for x in r['seeds'])} | {cell(r['start_loss'], r['start_loss_std'])} | "
            f"{cell(r['best_loss'], r['best_loss_std'])} | {versus(r['best_vs_inherit'])} | "
            f"{cell(r['test_loss'], r['test_loss_std'])} | {versus(r['test_vs_inherit'])} | {per_seed} |")
    lines.append(f"| reference | {parameter_count(Config.from_file(reference / 'model_config.yaml'), tied=True) / 1e6:.1f}M "
                 f"| 30, 576, 9/3, 1536 | - | - | {ref_val:.3f} | - | - | {ref_test:.3f} | - | SmolLM2-135M-Instruct |")
    (dest / "shape.md").write_text("\n".join(lines) + "\n")
    plot_curves(rows, dest / "curves.png", "Half-size children of SmolLM2-135M, same continued training "
                "(mean ± std over seeds)", BATCH * SEQ)
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1] == "--choose":
        print(lr_name(choose_lr(sweep(Path(sys.argv[2]), int(sys.argv[3])))))
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))

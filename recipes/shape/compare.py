"""Table and plot for recipes/shape: every arm's child before and after the same continued training.

Usage: python recipes/shape/compare.py OUT RUNS DEST LR
Reads the runs that run.sh wrote under RUNS (data and pruning log under OUT) and writes shape_lr<LR>.md,
shape_lr<LR>.json and curves_lr<LR>.png into DEST.
"""

import json
import sys
from pathlib import Path

from litgpt.data import TextFiles

from litgpt_inheritune.experiments.arms import plot_curves, val_curve
from litgpt_inheritune.checkpoint import write_json
from litgpt_inheritune.validation import val_loss
from litgpt_inheritune.pruning.shapes import parameter_count

ARMS = {  # run dir under OUT -> what its child is
    "blocks": "Inheritune: first 11 of 30 blocks, full width",
    "width": "one-shot width inheritance (Minitron importance), 24 blocks x 448",
    "prune_cpt": "learned pruning (Sheared-LLaMA masks, 100 steps), 24 blocks x 448",
    "random": "random init, 24 blocks x 448",
}
SEQ, BATCH, ITERS = 64, 4, 12  # config_hub/smollm2_shape.yaml


def main(out: Path, runs: Path, dest: Path, lr: str) -> None:
    from litgpt import Config

    data = TextFiles(train_data_path=out / "data" / "train", val_data_path=out / "data" / "val", num_workers=0)
    reference = Path("checkpoints/SmolLM2-135M-Instruct")
    rows = []
    for arm, what in ARMS.items():
        run = runs / arm
        if not (run / "final" / "lit_model.pth").is_file():
            print(f"skipping {arm}: no {run}/final")
            continue
        config = Config.from_file(run / "final" / "model_config.yaml")
        curve = val_curve(run)
        best = min(curve, key=lambda p: p[1]) if curve else (None, None)
        rows.append({
            "arm": arm, "what": what, "parameters": parameter_count(config, tied=True),
            "shape": {k: getattr(config, k) for k in ("n_layer", "n_embd", "n_head", "n_query_groups", "intermediate_size")},
            "start_loss": val_loss(run / "initial", data, SEQ, BATCH, ITERS),
            "final_loss": val_loss(run / "final", data, SEQ, BATCH, ITERS),
            "best_loss": best[1], "best_step": best[0], "curve": curve,
        })
    ref_loss = val_loss(reference, data, SEQ, BATCH, ITERS)
    prune_log = out / "prune" / "metrics.jsonl"
    pruning = [json.loads(line) for line in prune_log.read_text().splitlines()] if prune_log.is_file() else []
    dest.mkdir(parents=True, exist_ok=True)
    write_json(dest / f"shape_lr{lr}.json", {"reference_loss": ref_loss, "arms": rows, "pruning": pruning})
    lines = [
        "| arm | parameters | shape (layers, n_embd, heads/groups, MLP) | start val loss | final val loss | best (step) | child |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["final_loss"]):
        s = r["shape"]
        best = f"{r['best_loss']:.3f} ({r['best_step']})" if r["best_loss"] is not None else "-"
        lines.append(f"| {r['arm']} | {r['parameters'] / 1e6:.1f}M | {s['n_layer']}, {s['n_embd']}, "
                     f"{s['n_head']}/{s['n_query_groups']}, {s['intermediate_size']} | {r['start_loss']:.3f} | "
                     f"{r['final_loss']:.3f} | {best} | {r['what']} |")
    lines.append(f"| reference | {parameter_count(Config.from_file(reference / 'model_config.yaml'), tied=True) / 1e6:.1f}M "
                 f"| 30, 576, 9/3, 1536 | {ref_loss:.3f} | - | - | SmolLM2-135M-Instruct |")
    (dest / f"shape_lr{lr}.md").write_text("\n".join(lines) + "\n")
    plot_curves(rows, dest / f"curves_lr{lr}.png", f"Half-size children of SmolLM2-135M, same continued training, lr {lr}", BATCH * SEQ)
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])

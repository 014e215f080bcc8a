"""Arms (`litgpt inheritune_arms`): Inheritune next to its baselines and ablations, on the same data and budget.

Every arm is a `litgpt inheritune` run of a child with the same number of blocks, trained by LitGPT's loop with the
same data, budget, optimizer and seed; arms differ only in how the child starts (and, for the KD arms, in the
training loss). Each arm's run lives in ``out_dir/<arm>/``; the comparison is written to ``arms.md`` (table),
``arms.json`` and ``curves.png`` (validation loss against training tokens). Rerunning skips finished arms.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from litgpt.args import EvalArgs, LogArgs, TrainArgs
from litgpt.data import DataModule

from litgpt_inheritune.errors import InherituneError

NO_NORMS = ["embedding", "attention", "mlp", "head"]
ARMS: dict[str, dict[str, Any]] = {
    "inherit": {"what": "first n blocks + embedding, final norm, head (Inheritune)"},
    "random": {"parts": [], "what": "random init of the same shape (LitGPT's pretraining init)"},
    "even": {"select": "even", "what": "n blocks spread evenly over the reference"},
    "block_influence": {"select": "block_influence", "what": "the n most influential blocks (needs --analysis)"},
    "angular_distance": {"select": "angular_distance", "what": "drop the most redundant run of blocks (needs --analysis)"},
    "attention_norms": {"parts": ["embedding", "attention", "norms", "final_norm", "head"],
                        "what": "ablation: attention and norms inherited, MLPs fresh"},
    "mlp_norms": {"parts": ["embedding", "mlp", "norms", "final_norm", "head"],
                  "what": "ablation: MLPs and norms inherited, attention fresh"},
    "no_norms": {"parts": NO_NORMS, "what": "ablation: attention and MLPs inherited, norms fresh"},
    "kd": {"kd": True, "what": "Inheritune child trained with logit distillation from the reference"},
    "kd_random": {"parts": [], "kd": True, "what": "random-init child trained with logit distillation"},
}


def check_arms(arms: list[str], analysis: Path | None) -> None:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise InherituneError(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    if len(set(arms)) != len(arms):
        raise InherituneError("an arm is listed twice in --arms; list each once")
    needs = [a for a in arms if ARMS[a].get("select") in ("block_influence", "angular_distance")]
    if needs and analysis is None:
        raise InherituneError(f"arm(s) {needs} need --analysis from `litgpt inheritune_analyze`")


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val_loss) pairs from the CSV logs of a run (all its versions, later values win)."""
    points: dict[int, float] = {}
    for path in sorted(Path(run_dir).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime):
        with path.open() as stream:
            for row in csv.DictReader(stream):
                if row.get("val_loss") not in (None, ""):
                    points[int(float(row["step"]))] = float(row["val_loss"])
    return sorted(points.items())


def arms_table(rows: list[dict]) -> str:
    lines = ["| arm | blocks | start val loss | final val loss | best val loss (step) | how it starts |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["final_loss"]):
        best = f"{r['best_loss']:.4f} ({r['best_step']})" if r["best_loss"] is not None else "-"
        lines.append(f"| {r['arm']} | {r['layers']} | {r['start_loss']:.4f} | {r['final_loss']:.4f} | {best} | {r['what']} |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], path: Path, title: str, tokens_per_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for r in rows:
        points = [(0, r["start_loss"])] + [(step + 1, loss) for step, loss in r["curve"]]
        ax.plot([s * tokens_per_step for s, _ in points], [l for _, l in points], marker=".", label=r["arm"])
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def run_arms(
    reference_dir: Path,
    n_layers: int,
    data: DataModule | None,
    out_dir: Path,
    arms: list[str],
    train: TrainArgs,
    eval: EvalArgs,
    optimizer: str | dict,
    analysis: Path | None = None,
    log: LogArgs | None = None,
    kd_temperature: float = 2.0,
    kd_alpha: float = 0.5,
    kd_quantize: str | None = None,
    precision: str | None = None,
    devices: int | str = "auto",
    num_nodes: int = 1,
    seed: int = 42,
    compile: bool = True,
    resume: bool | Literal["auto"] = "auto",
    overwrite: bool = False,
    strategy: Literal["auto", "ddp", "fsdp"] = "auto",
) -> list[dict]:
    """The body of the command (``commands``), raising ``InherituneError`` on bad input; returns the table's rows."""
    import litgpt.pretrain as pretrain

    from litgpt_inheritune import rundir
    from litgpt_inheritune.checks import check_out_dir
    from litgpt_inheritune import strategy as strategies
    from litgpt_inheritune.checkpoint import load_reference_config, write_json
    from litgpt_inheritune.distill import distillation
    from litgpt_inheritune.validation import val_loss
    from litgpt_inheritune.training import run, tokens_per_epoch

    if data is None:
        raise InherituneError("--data is required, e.g. --data TextFiles --data.train_data_path path/to/txt_dir")
    from litgpt_inheritune.checks import check_data

    check_data(data)
    check_arms(arms, analysis)
    if (train.epochs is None) == (train.max_tokens is None):
        raise InherituneError("give the budget every arm shares as --train.epochs E or --train.max_tokens T (one of them)")
    config = load_reference_config(reference_dir)
    strategies.resolve(strategy, devices, num_nodes)  # a bad choice is refused before any work
    max_seq_length = train.max_seq_length or config.block_size
    out_dir = Path(out_dir)

    def start() -> dict:
        """Global rank 0 alone: decide what out_dir holds (rundir's rules); the rows of earlier calls; the shared
        budget in tokens, counted once, before any arm starts processes."""
        check_out_dir(out_dir, reference_dir)
        started = (out_dir / "arms.json").is_file() or any((out_dir / arm).is_dir() for arm in ARMS)
        decision = rundir.decide(out_dir, started, False, resume, overwrite, what="comparison of arms")
        max_tokens = train.max_tokens
        if train.epochs is not None and train.max_tokens is None:
            max_tokens = train.epochs * tokens_per_epoch(data, reference_dir, train.micro_batch_size, max_seq_length)
        if decision == "overwrite":
            rundir.remove_run(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        earlier = json.loads((out_dir / "arms.json").read_text()) if (out_dir / "arms.json").is_file() else []
        return {"earlier": earlier, "max_tokens": max_tokens}

    prepared = rundir.rank_zero_value(out_dir, "arms", start, what="preparing the arms")
    earlier = prepared["earlier"]
    if train.epochs is not None and train.max_tokens is None:  # every arm gets the same budget, in tokens
        print(f"{train.epochs} epochs: --train.max_tokens {prepared['max_tokens']:,} for every arm")
        train = replace(train, epochs=None, max_tokens=prepared["max_tokens"])
    rows = []
    for arm in arms:
        spec = ARMS[arm]
        run_dir = out_dir / arm
        kwargs = dict(reference_dir=reference_dir, n_layers=n_layers, layers=None, parts=spec.get("parts"),
                      out_dir=run_dir, precision=precision, resume="auto", data=data, train=train, eval=eval,
                      log=log or LogArgs(), optimizer=optimizer, devices=devices, num_nodes=num_nodes,
                      tokenizer_dir=None, logger_name="csv", seed=seed, compile=compile, overwrite=False,
                      select=spec.get("select", "first"), analysis=analysis, strategy=strategy)
        trained = rundir.rank_zero_value(out_dir, f"arm-{arm}-trained", (run_dir / "final" / "lit_model.pth").is_file)
        if not trained:
            print(f"Arm {arm}: {spec['what']}")
            if spec.get("kd"):
                with distillation(pretrain, reference_dir, kd_temperature, kd_alpha, kd_quantize):
                    run(**kwargs)
            else:
                run(**kwargs)

        def measure(arm: str = arm, spec: dict = spec, run_dir: Path = run_dir) -> dict:
            start = val_loss(run_dir / "initial", data, max_seq_length, train.micro_batch_size, eval.max_iters)
            final = val_loss(run_dir / "final", data, max_seq_length, train.micro_batch_size, eval.max_iters)
            curve = val_curve(run_dir)
            best = min(curve, key=lambda p: p[1]) if curve else (None, None)
            layers = json.loads((run_dir / "initial" / "inheritune.json").read_text())["layers"]
            return {"arm": arm, "what": spec["what"], "layers": layers, "parts": spec.get("parts"),
                    "kd": bool(spec.get("kd")), "start_loss": start, "final_loss": final, "best_loss": best[1],
                    "best_step": best[0], "curve": curve}

        # rank 0 measures; every rank gets the same row
        rows.append(rundir.rank_zero_value(out_dir, f"arm-{arm}", measure, what=f"evaluating arm {arm}"))
    tokens_per_step = train.micro_batch_size * max_seq_length
    ran = {r["arm"] for r in rows}
    rows = [r for r in earlier if r["arm"] not in ran] + rows  # arms of earlier calls stay in the comparison
    if rundir.is_rank_zero():  # one writer of the comparison
        write_json(out_dir / "arms.json", rows)
        rundir.write_text(out_dir / "arms.md", (
            f"# {n_layers}-block children of {config.name} ({config.n_layer} blocks), same data and budget\n\n"
            f"Validation loss on the data module's validation set ({eval.max_iters} batches of "
            f"{train.micro_batch_size} x {max_seq_length} tokens); best = lowest in the run's evaluations every "
            f"{eval.interval} steps.\n\n" + arms_table(rows) + "\n"
        ))
        plot_curves(rows, out_dir / "curves.png", f"{n_layers}-block children of {config.name}", tokens_per_step)
    return rows

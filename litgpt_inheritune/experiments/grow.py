"""Inheritune v2 (`litgpt inheritune_grow`): grow the child until its validation loss matches the reference's.

Round r trains a child of n_r blocks for ``steps`` optimizer steps with `litgpt inheritune` (LitGPT's loop), then
measures its validation loss on the same validation data as the reference. If the loss is above the target, the
next round has n_r + ``grow_by`` blocks. As in the paper, every round inherits afresh from the REFERENCE (its first
n_r blocks) and trains from the start: the new blocks come from the reference, not from the previous round's
trained child, so each round is an independent, equally budgeted run.

Everything a round produced stays in ``out_dir/n<NN>/`` (a normal `litgpt inheritune` run dir); the table of
rounds is rewritten after each one (``rounds.json``, ``rounds.md``). Running the same command again after an
interruption skips finished rounds and resumes the unfinished one from its last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Literal

from litgpt.args import EvalArgs, LogArgs, TrainArgs
from litgpt.data import DataModule
from litgpt.types import LoggerChoice

from litgpt_inheritune.errors import InherituneError

SETTINGS = "grow.json"
ROUNDS = "rounds.json"


def round_depths(reference_depth: int, start: int, grow_by: int) -> list[int]:
    """n0, n0 + g, ... capped at the reference depth (which is always the last candidate)."""
    if not 1 <= start <= reference_depth:
        raise InherituneError(f"--n_layers_start must be between 1 and the reference depth {reference_depth}, got {start}")
    if grow_by < 1:
        raise InherituneError(f"--grow_by must be at least 1, got {grow_by}")
    depths = list(range(start, reference_depth + 1, grow_by))
    if depths[-1] != reference_depth:
        depths.append(reference_depth)
    return depths


def parse_target(target: str | float) -> str | float:
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        return float(target)
    if target == "reference":
        return "reference"
    try:
        return float(target)
    except (TypeError, ValueError):
        raise InherituneError(f"--target must be 'reference' or a loss such as 3.1, got {target!r}") from None


def rounds_table(rows: list[dict]) -> str:
    lines = ["| round | blocks | steps | tokens | val loss | target | matched |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['n_layers']} | {r['steps']} | {r['tokens']:,} | {r['val_loss']:.4f} | "
                     f"{r['target_loss']:.4f} | {'yes' if r['matched'] else 'no'} |")
    return "\n".join(lines)


def grow(
    reference_dir: Path,
    data: DataModule,
    out_dir: Path,
    steps: int,
    train: TrainArgs,
    eval: EvalArgs,
    optimizer: str | dict,
    n_layers_start: int | None = None,
    grow_by: int = 2,
    target: str | float = "reference",
    tolerance: float = 0.0,
    log: LogArgs | None = None,
    precision: str | None = None,
    devices: int | str = "auto",
    num_nodes: int = 1,
    logger_name: LoggerChoice = "csv",
    seed: int = 42,
    compile: bool = True,
    overwrite: bool = False,
    resume: bool | Literal["auto"] = "auto",
    strategy: Literal["auto", "ddp", "fsdp", "fsdp2"] = "auto",
    _train_run=None,
    _val_loss=None,
) -> list[dict]:
    """The body of the command (``commands``), raising ``InherituneError`` on bad input; returns the rows of the rounds table."""
    from litgpt_inheritune import rundir
    from litgpt_inheritune.checks import check_out_dir
    from litgpt_inheritune import strategy as strategies
    from litgpt_inheritune import training as train_module
    from litgpt_inheritune.checkpoint import load_reference_config, write_json
    from litgpt_inheritune.validation import val_loss as measure

    train_run = _train_run or train_module.run
    val_loss = _val_loss or measure
    out_dir, reference_dir = Path(out_dir), Path(reference_dir)
    if steps < 1:
        raise InherituneError(f"--steps must be at least 1, got {steps}")
    if data is None:
        raise InherituneError("--data is required, e.g. --data TextFiles --data.train_data_path path/to/txt_dir")
    from litgpt_inheritune.checks import check_data

    check_data(data)
    target = parse_target(target)
    config = load_reference_config(reference_dir)
    depths = round_depths(config.n_layer, n_layers_start or max(1, config.n_layer // 2), grow_by)
    max_seq_length = train.max_seq_length or config.block_size
    train_module.check_seq_length(max_seq_length, config.block_size)
    tokens = steps * train.global_batch_size * max_seq_length
    settings = {"reference_dir": str(reference_dir), "depths": depths, "steps": steps, "tokens": tokens,
                "target": target, "tolerance": tolerance, "seed": seed}
    strategy_name = strategy
    strategies.resolve(strategy_name, devices, num_nodes)  # a bad choice is refused before any work
    # launched first, as every training command: the rounds train on this launch's processes
    fabric = rundir.launch(devices, num_nodes, strategy_name, precision)
    with rundir.Claim(out_dir) as claim, rundir.one_line_peer_errors(fabric):
        def start() -> list[dict]:
            """Global rank 0 alone: claim out_dir, decide what it holds (rundir's rules), write the settings, read the
            rows."""
            claim.take()
            train_module.check_batches(train, fabric.world_size)
            check_out_dir(out_dir, reference_dir)
            started = (out_dir / SETTINGS).is_file()
            if not started and out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
                raise InherituneError(f"{str(out_dir)!r} is not empty; choose another --out_dir or pass --overwrite true")
            decision = rundir.decide(out_dir, started, False, resume, overwrite, what="growth run")
            if decision == "resume":
                previous = json.loads((out_dir / SETTINGS).read_text())
                if previous != settings:
                    changed = sorted(k for k in settings if previous.get(k) != settings[k])
                    raise InherituneError(
                        f"{str(out_dir)!r} holds a growth run with other settings ({', '.join(changed)}); "
                        "rerun with the same arguments to resume it, --overwrite true to start again, or another --out_dir"
                    )
            if decision == "overwrite":
                rundir.remove_run(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / SETTINGS, settings)
            return json.loads((out_dir / ROUNDS).read_text()) if (out_dir / ROUNDS).is_file() else []

        rows: list[dict] = rundir.agree(fabric, start, what="preparing the growth run")

        def loss_of(checkpoint: Path) -> float:
            return val_loss(checkpoint, data, max_seq_length, train.micro_batch_size, eval.max_iters)

        if target == "reference":
            def reference_loss() -> float:
                cached = out_dir / "reference_loss.json"
                if cached.is_file():
                    return json.loads(cached.read_text())["val_loss"]
                loss = loss_of(reference_dir)
                write_json(cached, {"val_loss": loss, "checkpoint": str(reference_dir)})
                return loss

            target_loss = rundir.agree(fabric, reference_loss, what="measuring the reference's loss")
            fabric.print(f"Reference ({config.n_layer} blocks) validation loss: {target_loss:.4f}")
        else:
            target_loss = target

        done = {r["n_layers"] for r in rows}
        for n in depths:
            if rows and rows[-1]["matched"]:
                break
            if n in done:
                continue
            run_dir = out_dir / f"n{n:03d}"
            fabric.print(f"Round {len(rows) + 1}: {n} of {config.n_layer} blocks, {steps} steps ({tokens:,} tokens)")
            trained = rundir.agree(fabric, (run_dir / "final" / "lit_model.pth").is_file, what=f"looking at round {n}")
            if not trained:  # else it was trained but not yet evaluated
                train_run(
                    reference_dir=reference_dir, n_layers=n, layers=None, parts=None, out_dir=run_dir, precision=precision,
                    resume="auto", data=data, train=replace(train, epochs=None, max_tokens=tokens), eval=eval,
                    log=log or LogArgs(), optimizer=optimizer, devices=devices, num_nodes=num_nodes, tokenizer_dir=None,
                    logger_name=logger_name, seed=seed, compile=compile, overwrite=False, strategy=strategy_name,
                )

            def evaluate(n: int = n, run_dir: Path = run_dir) -> list[dict]:
                loss = loss_of(run_dir / "final")
                new = rows + [{"n_layers": n, "steps": steps, "tokens": tokens, "val_loss": loss, "target_loss": target_loss,
                               "matched": loss <= target_loss + tolerance, "checkpoint": str(run_dir / "final")}]
                write_json(out_dir / ROUNDS, new)
                rundir.write_text(out_dir / "rounds.md", (
                    f"# Inheritune growth from {config.name} ({config.n_layer} blocks)\n\nEach round inherits the first n "
                    f"blocks of the reference afresh and trains {steps} steps; target: "
                    f"{'the reference' if target == 'reference' else 'given'} validation loss {target_loss:.4f}"
                    f" (+ tolerance {tolerance}).\n\n{rounds_table(new)}\n"
                ))
                return new

            # rank 0 measures and writes; every rank goes on with the same rows (the same next round or the same stop)
            rows = rundir.agree(fabric, evaluate, what=f"evaluating round {n}")
            fabric.print(rounds_table(rows))
        return rows

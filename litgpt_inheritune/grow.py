"""`litgpt inheritune_grow`: Inheritune v2 — grow the child until its validation loss matches the reference's.

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
    strategy: Literal["auto", "ddp", "fsdp"] = "auto",
    _train_run=None,
    _val_loss=None,
) -> list[dict]:
    """``setup`` without the error conversion; returns the rows of the rounds table."""
    from litgpt_inheritune import rundir
    from litgpt_inheritune.checks import check_out_dir
    from litgpt_inheritune import strategy as strategies
    from litgpt_inheritune import train as train_module
    from litgpt_inheritune.checkpoint import load_reference_config, write_json
    from litgpt_inheritune.evaluation import val_loss as measure

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
    tokens = steps * train.global_batch_size * max_seq_length
    settings = {"reference_dir": str(reference_dir), "depths": depths, "steps": steps, "tokens": tokens,
                "target": target, "tolerance": tolerance, "seed": seed}
    strategy_name = strategy
    strategies.resolve(strategy_name, devices, num_nodes)  # a bad choice is refused before any work

    def start() -> list[dict]:
        """Global rank 0 alone: decide what out_dir holds (rundir's rules), write the settings, read the rows."""
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

    rows: list[dict] = rundir.rank_zero_value(out_dir, "grow", start, what="preparing the growth run")

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

        target_loss = rundir.rank_zero_value(out_dir, "reference_loss", reference_loss, what="the reference's loss")
        print(f"Reference ({config.n_layer} blocks) validation loss: {target_loss:.4f}")
    else:
        target_loss = target

    done = {r["n_layers"] for r in rows}
    for n in depths:
        if rows and rows[-1]["matched"]:
            break
        if n in done:
            continue
        run_dir = out_dir / f"n{n:03d}"
        print(f"Round {len(rows) + 1}: {n} of {config.n_layer} blocks, {steps} steps ({tokens:,} tokens)")
        trained = rundir.rank_zero_value(out_dir, f"round-{n}-trained", (run_dir / "final" / "lit_model.pth").is_file)
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
        rows = rundir.rank_zero_value(out_dir, f"round-{n}", evaluate, what=f"evaluating round {n}")
        print(rounds_table(rows))
    return rows


def setup(
    reference_dir: Path,
    data: DataModule | None = None,
    out_dir: Path = Path("out/inheritune_grow"),
    steps: int = 1000,
    n_layers_start: int | None = None,
    grow_by: int = 2,
    target: str = "reference",
    tolerance: float = 0.0,
    precision: Literal["bf16-true", "bf16-mixed", "32-true", None] = None,
    train: TrainArgs = TrainArgs(
        save_interval=1000,
        log_interval=1,
        global_batch_size=8,
        micro_batch_size=1,
        lr_warmup_steps=100,
        max_seq_length=2048,
        max_norm=1.0,
        min_lr=3e-5,
    ),
    eval: EvalArgs = EvalArgs(interval=1000, max_iters=100),
    log: LogArgs = LogArgs(),
    optimizer: str | dict = {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 3e-4, "weight_decay": 0.01, "betas": [0.9, 0.95]},
    },
    devices: int | str = "auto",
    num_nodes: int = 1,
    logger_name: LoggerChoice = "csv",
    seed: int = 42,
    compile: bool = True,
    overwrite: bool = False,
    resume: bool | Literal["auto"] = "auto",
    strategy: Literal["auto", "ddp", "fsdp"] = "auto",
) -> None:
    """Inheritune v2: train children of growing depth until one matches the reference's validation loss.

    Round by round, a child inherits the reference's first n blocks (n = ``n_layers_start``, then + ``grow_by``,
    up to the reference's depth), is trained for ``steps`` optimizer steps with `litgpt inheritune`, and is
    evaluated on the data module's validation set, the same data the reference is evaluated on. The loop stops at
    the first child whose loss is at most the target. Each round starts again from the reference (the paper's
    protocol); it does not continue the previous round's child. Rounds live in ``out_dir/n<NN>``, the table in
    ``out_dir/rounds.md`` and ``rounds.json``. Rerun the same command to resume after an interruption.

    Arguments:
        reference_dir: LitGPT checkpoint dir of the reference model.
        data: A LitGPT data module with a validation set, e.g. ``LitData`` with ``split_names``.
        out_dir: Directory for the rounds and the table.
        steps: Optimizer steps per round (tokens = steps x ``train.global_batch_size`` x ``train.max_seq_length``).
        n_layers_start: Blocks of the first round (default: half the reference's depth, the paper's start).
        grow_by: Blocks added per round (the paper: 2).
        target: ``reference`` (the reference checkpoint's validation loss) or a loss value such as ``3.1``.
        tolerance: A round matches when its loss is at most target + tolerance.
        precision: The precision to train in.
        train: Training arguments as for `litgpt pretrain`; the budget comes from ``steps``.
        eval: Evaluation arguments; ``eval.max_iters`` batches also measure each round's final loss.
        log: Logging arguments, as for `litgpt pretrain`.
        optimizer: An optimizer name or config.
        devices: How many devices/GPUs to use.
        num_nodes: How many nodes the code is being run on.
        logger_name: The logger for each round's metrics (csv by default, so curves can be compared).
        seed: The random seed of every round.
        compile: Compile the model with ``torch.compile`` as `litgpt pretrain` does.
        overwrite: Delete an existing growth run in ``out_dir`` and start again.
        resume: ``auto`` (default) continues a growth run in ``out_dir`` started with the same settings, at its
            unfinished round; ``true`` requires one; ``false`` refuses an existing run.
        strategy: For several devices: ``fsdp``, ``ddp`` or ``auto`` (FSDP on GPUs, DDP on CPUs), as for
            `litgpt inheritune`. Only global rank 0 writes the table and evaluates the rounds.
    """
    arguments = dict(locals())
    try:
        rows = grow(**arguments)
    except InherituneError as exc:
        raise SystemExit(f"error: {exc}") from None
    last = rows[-1] if rows else None
    if last is not None:
        verdict = "matches" if last["matched"] else "does not match"
        print(f"The {last['n_layers']}-block child {verdict} the target ({last['val_loss']:.4f} vs {last['target_loss']:.4f})")

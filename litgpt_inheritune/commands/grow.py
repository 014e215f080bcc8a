"""`litgpt inheritune_grow`: Inheritune v2, grow the child until its validation loss matches the reference's
(``litgpt_inheritune.experiments.grow``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.args import EvalArgs, LogArgs, TrainArgs
from litgpt.data import DataModule
from litgpt.types import LoggerChoice

from litgpt_inheritune.rundir import is_rank_zero
from litgpt_inheritune.errors import one_line_errors
from litgpt_inheritune.experiments.grow import grow


@one_line_errors
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
    strategy: Literal["auto", "ddp", "fsdp", "fsdp2"] = "auto",
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
        strategy: For several devices: ``fsdp2``, ``fsdp``, ``ddp`` or ``auto`` (fsdp2 on GPUs, ddp on CPUs), as for
            `litgpt inheritune`. Only global rank 0 writes the table and evaluates the rounds.
    """
    arguments = dict(locals())
    rows = grow(**arguments)
    last = rows[-1] if rows else None
    if last is not None and is_rank_zero():  # printed once
        verdict = "matches" if last["matched"] else "does not match"
        print(f"The {last['n_layers']}-block child {verdict} the target ({last['val_loss']:.4f} vs {last['target_loss']:.4f})")

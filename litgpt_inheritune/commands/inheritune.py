"""`litgpt inheritune`: inherit the first blocks of a reference model, then train the child with `litgpt pretrain`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

# Imported at module level, not lazily: jsonargparse reads the types of setup's arguments.
from litgpt.args import EvalArgs, LogArgs
from litgpt.data import DataModule
from litgpt.types import LoggerChoice

from litgpt_inheritune.errors import one_line_errors
from litgpt_inheritune.training import InherituneTrainArgs, run


@one_line_errors
def setup(
    reference_dir: Path,
    n_layers: int | None = None,
    layers: list[int] | None = None,
    parts: list[str] | None = None,
    out_dir: Path = Path("out/inheritune"),
    precision: Literal["bf16-true", "bf16-mixed", "32-true", None] = None,
    resume: bool | Literal["auto"] | Path = False,
    data: DataModule | None = None,
    train: InherituneTrainArgs = InherituneTrainArgs(
        save_interval=1000,
        log_interval=1,
        global_batch_size=8,
        micro_batch_size=1,
        lr_warmup_steps=1000,
        epochs=None,
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
    tokenizer_dir: Path | None = None,
    logger_name: LoggerChoice = "tensorboard",
    seed: int = 42,
    compile: bool = True,
    overwrite: bool = False,
    select: Literal["first", "even", "block_influence", "angular_distance"] = "first",
    analysis: Path | None = None,
    speed: str = "none",
    strategy: Literal["auto", "ddp", "fsdp", "fsdp2"] = "auto",
) -> None:
    """Inheritune: give a child the first blocks of a reference model, then pretrain it with LitGPT.

    The child inherits the reference's token embedding, the chosen blocks, the final norm and the LM head
    (tied if the reference ties them), and is trained by `litgpt pretrain`'s own loop. The inherited,
    untrained child is kept in ``out_dir/initial``; checkpoints go to ``out_dir/step-*`` and ``out_dir/final``, and
    the step with the lowest validation loss to ``out_dir/best`` (with best.json). Every evaluation measures the
    same fixed, unshuffled batches of the validation set.

    Arguments:
        reference_dir: LitGPT checkpoint dir of the reference model (lit_model.pth, model_config.yaml, tokenizer).
        n_layers: Inherit the first ``n_layers`` blocks. Give this or ``layers``.
        layers: Explicit reference block indices to inherit, in the child's order, e.g. ``[0, 1, 2, 29]``.
        parts: What to inherit; default all of embedding, attention, mlp, norms, final_norm, head.
            Parts left out get LitGPT's pretraining init (``[]`` trains a random-init child of the same shape).
        out_dir: Directory for the child, checkpoints and logs.
        precision: The precision to train in. Determines a compatible precision setting by default.
        resume: Path to a checkpoint to resume from, ``True`` to resume from the latest checkpoint in ``out_dir``,
            or ``'auto'`` to resume if one exists. Resuming reuses ``out_dir/initial``; nothing is inherited again.
        data: A LitGPT data module, e.g. ``TextFiles`` or ``LitData``, or
            ``litgpt_inheritune.data.mixture.DomainMixture`` for weighted domains with dynamic batch loading.
        train: Training arguments as for `litgpt pretrain`. The budget: ``--train.epochs E`` (passes over the data
            module's train set, turned into ``max_tokens`` from its size; the paper trains 8) or
            ``--train.max_tokens T`` (for an infinite or unsized dataset too): give one of them.
            ``--train.keep_best false`` skips writing ``out_dir/best``.
        eval: Evaluation arguments, as for `litgpt pretrain`.
        log: Logging arguments, as for `litgpt pretrain`.
        optimizer: An optimizer name (such as "AdamW") or config.
        devices: How many devices/GPUs to use (see ``strategy``).
        num_nodes: How many nodes the code is being run on.
        tokenizer_dir: The tokenizer to prepare data with (default: the reference's). Must match its vocabulary.
        logger_name: The name of the logger to send metrics to.
        seed: The random seed (model init of parts not inherited, data order).
        compile: Compile the model with ``torch.compile`` as `litgpt pretrain` does. Turn off for quick CPU runs.
        overwrite: Delete a finished or interrupted run in ``out_dir`` and start again.
        select: How ``n_layers`` blocks are chosen: ``first`` (Inheritune), ``even``, ``block_influence`` or
            ``angular_distance`` (the last two read ``analysis``); recorded in ``out_dir/initial/inheritune.json``.
        analysis: ``analysis.json`` (or its dir) written by `litgpt inheritune_analyze` for this reference.
        speed: Options around LitGPT's loop (``litgpt_inheritune.speed``), e.g. ``fused_ce,checkpoint``: ``fused_ce``
            (chunked LM head + cross-entropy, same loss and gradients), ``checkpoint`` (activation checkpointing
            per block, for small GPUs), ``cudnn_attention``; ``default``, ``all`` or ``none``.
        strategy: For several devices: ``fsdp2`` (shards the child with torch's ``fully_shard``, per block; on
            GPUs and CPUs), ``fsdp`` (LitGPT's FSDP1, GPUs only), ``ddp`` (a whole copy per device: faster when the
            child fits) or ``auto`` (fsdp2 on GPUs, ddp on CPUs). Only global rank 0 writes files; see
            ``litgpt_inheritune.rundir``.
    """
    arguments = dict(locals())
    run(**arguments)


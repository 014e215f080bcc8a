"""`litgpt inheritune_prune`: Sheared-LLaMA's targeted structured pruning on LitGPT's model and Fabric."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.args import EvalArgs, TrainArgs
from litgpt.data import DataModule

from litgpt_inheritune.rundir import is_rank_zero
from litgpt_inheritune.errors import one_line_errors
from litgpt_inheritune.pruning.training import prune


@one_line_errors
def setup(
    reference_dir: Path,
    target: str | dict[str, int] | None = None,
    data: DataModule | None = None,
    out_dir: Path = Path("out/inheritune_prune"),
    steps: int = 3200,
    lagrangian_warmup_steps: int | None = None,
    train: TrainArgs = TrainArgs(
        save_interval=100,
        log_interval=1,
        global_batch_size=32,
        micro_batch_size=4,
        lr_warmup_steps=320,
        max_seq_length=None,
        max_norm=1.0,
        min_lr=1e-5,
    ),
    eval: EvalArgs = EvalArgs(interval=50, max_iters=100),
    lr: float = 1e-4,
    mask_lr: float = 1.0,
    lambda_lr: float = 1.0,
    weight_decay: float = 0.0,
    precision: Literal["bf16-true", "bf16-mixed", "16-true", "16-mixed", "32-true", None] = None,
    speed: str = "none",
    devices: int | str = 1,
    num_nodes: int = 1,
    seed: int = 42,
    resume: bool | Literal["auto"] = "auto",
    overwrite: bool = False,
    strategy: Literal["auto", "ddp", "fsdp", "fsdp2"] = "auto",
) -> None:
    """Targeted structured pruning (Sheared-LLaMA): a child of an exact target shape, with learned masks.

    Learns which blocks, query groups, heads, MLP and embedding channels to keep for the target shape, then writes
    that child as a LitGPT checkpoint in ``out_dir/final``.

    Every forward samples hard-concrete masks; the loss is the LM loss plus, per mask type, lambda_1 (s - t) +
    lambda_2 (s - t)^2 with s the expected sparsity and t the target's, warmed up linearly over
    ``lagrangian_warmup_steps``; the lambdas rise by gradient ascent. Grouped-query attention is pruned by whole
    query groups (and query heads within groups when the target has fewer per group). Validation uses the
    deterministic target-shaped masks, so its loss is the extracted child's. ``out_dir`` holds prune.json (settings),
    metrics.jsonl (losses, expected sparsities, multipliers per step) and prune_state.pth (for resuming).
    With ``--data litgpt_inheritune.data.mixture.DomainMixture --data.dynamic true`` the domain weights follow
    Sheared-LLaMA's dynamic batch loading at every evaluation (give ``--data.reference_losses``).

    Arguments:
        reference_dir: LitGPT checkpoint dir of the reference model (standard blocks, no post-branch norms).
        target: The child's shape: a LitGPT model name (only its sizes are used; same head size required) or a
            dict of ``n_layer``, ``n_embd``, ``n_head``, ``n_query_groups``, ``intermediate_size``.
        data: A LitGPT data module with a validation set.
        out_dir: Directory for the run and the extracted child (``out_dir/final``).
        steps: Optimizer steps (Sheared-LLaMA: 3,200 of 32 x 4,096 tokens).
        lagrangian_warmup_steps: Steps over which the target sparsity rises from 0 (default: 20% of ``steps``).
        train: Batch sizes, sequence length (``max_seq_length``, at most and by default the reference's block_size;
            Sheared-LLaMA: 4,096), learning-rate warm-up, ``min_lr`` (cosine floor), ``max_norm``, ``save_interval``
            (steps between resumable saves) and ``log_interval``, as for `litgpt pretrain`.
        eval: ``interval`` (steps between validations of the target-shaped model) and ``max_iters``.
        lr: Learning rate of the model's weights.
        mask_lr: Learning rate of the masks' log-alphas (Sheared-LLaMA: 1.0).
        lambda_lr: Learning rate of the Lagrange multipliers, which follow gradient ascent (Sheared-LLaMA: 1.0).
        weight_decay: Weight decay of the model's weights.
        precision: The precision to train in; default, as `litgpt pretrain`: bf16-mixed (16-mixed on GPUs without bf16).
        speed: Memory and speed options, as `litgpt inheritune --speed`: ``checkpoint`` (activation checkpointing: every
            block recomputed in the backward pass, about a third more compute, for larger micro-batches or longer
            sequences) and ``cudnn_attention``; ``none`` (default). No ``torch.compile`` option.
        devices: How many devices/GPUs to use (see ``strategy``).
        num_nodes: How many nodes the code is being run on.
        seed: The random seed (mask samples, data order).
        resume: ``auto`` continues an interrupted run in ``out_dir`` with the same settings; ``True`` requires one.
        overwrite: Delete a finished or interrupted run in ``out_dir`` and start again.
        strategy: For several devices: ``fsdp2`` (shards the model per block; GPUs and CPUs), ``fsdp`` (FSDP1, GPUs
            only), ``ddp`` (a whole copy per device) or ``auto`` (fsdp2 on GPUs, ddp on CPUs). Only global rank 0
            writes files.
    """
    final = prune(reference_dir=reference_dir, target=target, data=data, out_dir=out_dir, steps=steps, train=train,
                  eval=eval, lagrangian_warmup_steps=lagrangian_warmup_steps, lr=lr, mask_lr=mask_lr,
                  lambda_lr=lambda_lr, weight_decay=weight_decay, precision=precision, speed=speed, devices=devices,
                  num_nodes=num_nodes, seed=seed, resume=resume, overwrite=overwrite, strategy=strategy)
    if is_rank_zero():  # printed once
        print(f"Wrote the pruned child to {str(final)!r}")


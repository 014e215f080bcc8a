"""`litgpt inheritune_width`: one-shot width inheritance (Minitron-style) to any target shape, no training."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from litgpt_inheritune.errors import one_line_errors
from litgpt_inheritune.pruning.width import build_width_child
from litgpt_inheritune.rundir import other_rank_skips


@one_line_errors
def setup(
    reference_dir: Path,
    target: str | dict[str, int] | None = None,
    data: Path | None = None,
    out_dir: Path = Path("out/inheritune_width"),
    n_sequences: int = 64,
    seq_len: int = 256,
    select: Literal["first", "even", "block_influence", "angular_distance"] = "first",
    analysis: Path | None = None,
    seed: int = 42,
    text_key: str = "text",
    batch_size: int = 4,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    overwrite: bool = False,
) -> None:
    """Write a child of any smaller shape: the most important heads, query groups, MLP and embedding channels.

    One-shot width inheritance (Minitron-style): the reference runs on a calibration sample of real text; each
    head, MLP channel and embedding channel is scored by its activations; the best ones at the target sizes are
    kept, in the reference's order (grouped-query attention: whole query groups, the same number of query heads in
    each; norms sliced with the embedding channels; the head size, hence RoPE, unchanged; tied embeddings stay
    tied). Blocks are chosen by ``select`` as in `litgpt inheritune_init`. The output is a LitGPT checkpoint
    (config.json rewritten for the new sizes) that `litgpt inheritune <out_dir> --n_layers <its depth>` or
    `litgpt pretrain --initial_checkpoint_dir` trains further. ``out_dir/inheritune.json`` records what was kept
    and the exact score; ``importance.pt`` holds the scores.

    Arguments:
        reference_dir: LitGPT checkpoint dir of the reference model (any zoo model with standard blocks).
        target: The child's shape: a LitGPT model name (only its sizes are used; same head size required) or a
            dict of ``n_layer``, ``n_embd``, ``n_head``, ``n_query_groups``, ``intermediate_size`` (missing
            ones stay the reference's), e.g. ``'{n_layer: 24, n_embd: 448, n_head: 6, n_query_groups: 2}'``.
        data: Calibration text: a file or directory of .jsonl, .jsonl.zst, .parquet or .txt files.
        out_dir: Where to write the child checkpoint (written to a temporary dir first, then renamed).
        n_sequences: Calibration sequences (Minitron: 512 to 1024).
        seq_len: Tokens per calibration sequence.
        select: How the target's ``n_layer`` blocks are chosen: ``first`` (Inheritune), ``even``,
            ``block_influence`` or ``angular_distance`` (the last two read ``analysis``).
        analysis: ``analysis.json`` (or its dir) written by `litgpt inheritune_analyze` for this reference.
        seed: Which documents are read for calibration (seeded key order, as in `litgpt inheritune_data`).
        text_key: The record field holding the text (dotted for nested fields).
        batch_size: Sequences per forward pass.
        device: Where to run the reference (``auto``: CUDA when available, in bf16; else CPU in float32).
        overwrite: Replace an existing checkpoint in ``out_dir``.
    """
    if other_rank_skips("inheritune_width"):
        return
    t0 = time.perf_counter()
    child, keep = build_width_child(reference_dir, target, data, out_dir, n_sequences, seq_len, select, analysis,
                                    seed, text_key, batch_size, device, overwrite)
    print(
        f"Wrote a child with {child.n_layer} blocks (reference blocks {keep.layers}), n_embd {child.n_embd}, "
        f"{child.n_head} heads in {child.n_query_groups} groups, MLP {child.intermediate_size} to {str(out_dir)!r} "
        f"in {time.perf_counter() - t0:.1f} s"
    )

"""`litgpt inheritune_width`: one-shot width inheritance (Minitron-style) to any target shape, no training."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.rundir import other_rank_skips

METHOD = (
    "Minitron activation importance (litgpt_inheritune.importance): heads by the L2 norm of their attention output, "
    "MLP channels by |activation|, embedding channels by |norm output| summed over the blocks' norms; mean over "
    "positions, L2 over sequences; query groups by the sum of their heads"
)


def build_width_child(
    reference_dir: Path,
    target: str | dict,
    data: Path | None,
    out_dir: Path,
    n_sequences: int = 64,
    seq_len: int = 256,
    select: str = "first",
    analysis: Path | None = None,
    seed: int = 42,
    text_key: str = "text",
    batch_size: int = 4,
    device: str = "auto",
    overwrite: bool = False,
):
    """``setup`` without the error conversion; returns ``(child_config, keep)``."""
    import torch
    from litgpt import Tokenizer

    from litgpt_inheritune.analysis import check_sampling, hooked_model, load_analysis, sample_sequences, select_layers
    from litgpt_inheritune.checkpoint import (atomic_dir, check_weights_match_config, load_reference_config,
                                              load_state_dict_lazily, write_checkpoint)
    from litgpt_inheritune.importance import activation_importance
    from litgpt_inheritune.inherit import reference_ties_embeddings
    from litgpt_inheritune.init import INHERITANCE_FILE
    from litgpt_inheritune.shape import check_standard, prune_state_dict, shape_record, target_sizes, top_k_keep

    reference_dir, out_dir = Path(reference_dir), Path(out_dir)
    from litgpt_inheritune.checks import check_out_dir

    check_out_dir(out_dir, reference_dir)  # a file, an unwritable place, inside the reference: before any work
    if (out_dir / "lit_model.pth").exists() and not overwrite:
        raise InherituneError(f"{str(out_dir)!r} already holds a checkpoint; choose another --out_dir or pass --overwrite true")
    if target is None:
        raise InherituneError("--target is required: a LitGPT model name or sizes such as '{n_embd: 448, n_head: 6}'")
    if data is None:
        raise InherituneError("--data is required: calibration text, a file or directory of .jsonl/.jsonl.zst/.parquet/.txt")
    config = load_reference_config(reference_dir)
    check_standard(config)
    sizes = target_sizes(config, target)
    check_sampling(config, reference_dir, data, n_sequences, seq_len, batch_size)
    layers = select_layers(select, sizes["n_layer"], config.n_layer, load_analysis(analysis))
    state_dict = load_state_dict_lazily(reference_dir / "lit_model.pth")
    check_weights_match_config(config, state_dict, reference_dir / "lit_model.pth")

    sequences = sample_sequences(data, Tokenizer(reference_dir), n_sequences, seq_len, seed, text_key=text_key)
    model = hooked_model(config, state_dict, device)
    scores = activation_importance(model, sequences, batch_size=batch_size)
    del model
    keep = top_k_keep(config, sizes, layers, scores["hidden"], scores["head"], scores["intermediate"])
    child, child_state = prune_state_dict(config, state_dict, keep)
    record = shape_record(reference_dir, config, child, keep, sizes, reference_ties_embeddings(state_dict),
                          method="width", select=select, analysis=None if analysis is None else str(analysis),
                          score=METHOD, calibration={"data": str(data), "n_sequences": n_sequences, "seq_len": seq_len,
                                                     "seed": seed})
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_checkpoint(tmp, child, child_state, reference_dir, keep.layers, widths=True)
        (tmp / INHERITANCE_FILE).write_text(json.dumps(record) + "\n")
        torch.save(scores, tmp / "importance.pt")
    return child, keep


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
    try:
        child, keep = build_width_child(reference_dir, target, data, out_dir, n_sequences, seq_len, select, analysis,
                                        seed, text_key, batch_size, device, overwrite)
    except InherituneError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"Wrote a child with {child.n_layer} blocks (reference blocks {keep.layers}), n_embd {child.n_embd}, "
        f"{child.n_head} heads in {child.n_query_groups} groups, MLP {child.intermediate_size} to {str(out_dir)!r} "
        f"in {time.perf_counter() - t0:.1f} s"
    )

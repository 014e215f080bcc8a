"""One-shot width inheritance (Minitron-style) to any target shape, no training (the body of `litgpt inheritune_width`)."""

from __future__ import annotations

import json
from pathlib import Path

from litgpt_inheritune.errors import InherituneError

METHOD = (
    "Minitron activation importance (litgpt_inheritune.pruning.importance): heads by the L2 norm of their attention output, "
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
    """The body of the command (``commands``), raising ``InherituneError`` on bad input; returns ``(child_config, keep)``."""
    import torch
    from litgpt import Tokenizer

    from litgpt_inheritune.analysis.lazy_layers import check_sampling, hooked_model, sample_sequences
    from litgpt_inheritune.analysis.selection import load_analysis, select_layers
    from litgpt_inheritune.checkpoint import (atomic_dir, check_weights_match_config, load_reference_config,
                                              load_state_dict_lazily, write_checkpoint)
    from litgpt_inheritune.pruning.importance import activation_importance
    from litgpt_inheritune.inherit import reference_ties_embeddings
    from litgpt_inheritune.child import INHERITANCE_FILE
    from litgpt_inheritune.pruning.shapes import check_standard, prune_state_dict, shape_record, target_sizes, top_k_keep

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

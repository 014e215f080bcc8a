"""`litgpt inheritune_analyze`: which blocks of a reference are lazy, as numbers (analysis.json) and one figure."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt_inheritune.analysis.report import analyze
from litgpt_inheritune.errors import one_line_errors
from litgpt_inheritune.rundir import other_rank_skips


@one_line_errors
def setup(
    reference_dir: Path,
    data: Path | None = None,
    out_dir: Path = Path("out/inheritune_analyze"),
    n_sequences: int = 100,
    seq_len: int = 100,
    tau: float = 0.9,
    eta: float = 0.9,
    seed: int = 42,
    text_key: str = "text",
    batch_size: int = 4,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    overwrite: bool = False,
) -> None:
    """Measure how lazy each block of a reference model is, and suggest how many blocks a child should inherit.

    Writes ``out_dir/analysis.json`` (every metric per block and head, the angular-distance table, the suggested n),
    ``out_dir/analysis.png`` (one figure) and ``out_dir/analysis.md`` (a table). Metrics, exactly:
    attention rank (smallest k whose top-k singular values of a head's attention map hold ``tau`` of its squared
    norm; a block is lazy when every head has rank 1), column mass (fewest columns holding ``eta`` of it, and the
    largest column's share), normalised attention entropy, block influence (1 - cos between a block's input and
    output) and angular distance between blocks (arccos of the cosine at the last token, over pi).

    Arguments:
        reference_dir: LitGPT checkpoint dir of the reference model (any zoo model with standard blocks).
        data: Real text: a file or directory of .jsonl, .jsonl.zst, .parquet or .txt files.
        out_dir: Where to write the analysis (written to a temporary dir first).
        n_sequences: Sequences of real text to average over (the paper: 100).
        seq_len: Tokens per sequence (the paper: 100). Attention maps are seq_len x seq_len per head, one block at a time.
        tau: Share of the squared singular values that defines a head's rank (the paper: 0.9).
        eta: Share of the attention mass that defines how many columns hold it (the paper: 0.9).
        seed: Which documents are read (seeded key order, as in `litgpt inheritune_data`).
        text_key: The record field holding the text (dotted for nested fields).
        batch_size: Sequences per forward pass.
        device: Where to run the reference (``auto``: CUDA when available, in bf16; else CPU in float32).
        overwrite: Replace an existing analysis in ``out_dir``.
    """
    if other_rank_skips("inheritune_analyze"):
        return
    arguments = dict(locals())
    result = analyze(**arguments)
    print(f"Suggested n = {result['suggested_n']} ({result['suggested_n_reason']}); wrote {out_dir}/analysis.md (the "
          f"table), analysis.json and analysis.png")

"""`litgpt inheritune_analyze`: which blocks of a reference are lazy, as numbers (analysis.json) and one figure."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.rundir import other_rank_skips


def analyze(
    reference_dir: Path,
    data: Path | None,
    out_dir: Path,
    n_sequences: int = 100,
    seq_len: int = 100,
    tau: float = 0.9,
    eta: float = 0.9,
    seed: int = 42,
    text_key: str = "text",
    batch_size: int = 4,
    device: str = "auto",
    overwrite: bool = False,
) -> dict:
    """``setup`` without the error conversion; returns the analysis."""
    from litgpt import Tokenizer

    from litgpt_inheritune.analysis import analyze_model, check_sampling, hooked_model, plot, sample_sequences, summarize
    from litgpt_inheritune.checkpoint import atomic_dir, check_weights_match_config, load_reference_config
    from litgpt_inheritune.checkpoint import load_state_dict_lazily

    if data is None:
        raise InherituneError("--data is required: real text, a file or directory of .jsonl/.jsonl.zst/.parquet/.txt")
    reference_dir, out_dir = Path(reference_dir), Path(out_dir)
    from litgpt_inheritune.checks import check_out_dir

    check_out_dir(out_dir, reference_dir)  # a file, an unwritable place, inside the reference: before any work
    if (out_dir / "analysis.json").exists() and not overwrite:
        raise InherituneError(f"{str(out_dir)!r} already holds an analysis; choose another --out_dir or pass --overwrite true")
    for name, value in (("--tau", tau), ("--eta", eta)):
        if not 0 < value <= 1:
            raise InherituneError(f"{name} must be in (0, 1], got {value}")
    config = load_reference_config(reference_dir)
    check_sampling(config, reference_dir, data, n_sequences, seq_len, batch_size)
    state_dict = load_state_dict_lazily(reference_dir / "lit_model.pth")
    check_weights_match_config(config, state_dict, reference_dir / "lit_model.pth")

    t0 = time.perf_counter()
    sequences = sample_sequences(data, Tokenizer(reference_dir), n_sequences, seq_len, seed, text_key=text_key)
    model = hooked_model(config, state_dict, device)
    result = analyze_model(model, sequences, tau=tau, eta=eta, batch_size=batch_size)
    result = {"reference": str(reference_dir), "model": config.name, "data": str(data), "seed": seed, **result}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    with atomic_dir(out_dir, overwrite=overwrite) as staging:
        (staging / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
        (staging / "analysis.md").write_text(
            f"# Lazy-layer analysis of {config.name}\n\n{n_sequences} sequences of {seq_len} tokens from {data}; "
            f"suggested n = {result['suggested_n']} ({result['suggested_n_reason']}).\n\n"
            + summarize(result["blocks"]) + "\n"
        )
        plot(result, staging / "analysis.png", config.name)
    return result


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
    try:
        result = analyze(**arguments)
    except InherituneError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"Suggested n = {result['suggested_n']} ({result['suggested_n_reason']}); wrote {out_dir}/analysis.json and analysis.png")

"""The lazy-layer report of a reference (`litgpt inheritune_analyze`): analysis.json, analysis.md and one figure."""

from __future__ import annotations

import json
import time
from pathlib import Path

from litgpt_inheritune.errors import InherituneError


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
    """The body of the command (``commands``), raising ``InherituneError`` on bad input; returns the analysis."""
    from litgpt import Tokenizer

    from litgpt_inheritune.analysis.lazy_layers import analyze_model, check_sampling, hooked_model, plot, sample_sequences, summarize
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

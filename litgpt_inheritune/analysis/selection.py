"""Choosing which reference blocks a child inherits: first, even, or from a lazy-layer analysis."""

from __future__ import annotations

from pathlib import Path

from litgpt_inheritune.errors import InherituneError

SELECT = ("first", "even", "block_influence", "angular_distance")


def select_layers(method: str, n_layers: int, reference_depth: int, analysis: dict | None = None) -> list[int]:
    """The reference blocks a child of ``n_layers`` keeps, in order, chosen by ``method``:

    - first: blocks 0..n-1 (Inheritune).
    - even: n blocks spread evenly from the first to the last.
    - block_influence: the n blocks with the largest block influence (ShortGPT drops the smallest).
    - angular_distance: drops the run of K - n consecutive blocks whose input and output are closest in angle
      (Gromov et al.), keeping the rest.
    """
    K = reference_depth
    if method not in SELECT:
        raise InherituneError(f"unknown --select {method!r}; choose from {list(SELECT)}")
    if not isinstance(n_layers, int) or not 1 <= n_layers <= K:
        raise InherituneError(f"--n_layers must be between 1 and the reference depth {K}, got {n_layers}")
    if method == "first":
        return list(range(n_layers))
    if method == "even":
        if n_layers == 1:
            return [0]
        return sorted({round(i * (K - 1) / (n_layers - 1)) for i in range(n_layers)})
    if analysis is None:
        raise InherituneError(f"--select {method} needs --analysis D/analysis.json from `litgpt inheritune_analyze`")
    if analysis.get("n_blocks") != K:
        raise InherituneError(
            f"the analysis is of a {analysis.get('n_blocks')}-block model but the reference has {K}; analyze this reference"
        )
    if method == "block_influence":
        scores = [b["block_influence"] for b in analysis["blocks"]]
        keep = sorted(range(K), key=lambda l: (-scores[l], l))[:n_layers]
        return sorted(keep)
    drop = K - n_layers
    if drop == 0:
        return list(range(K))
    table = analysis["angular_distance"]
    start = min(range(K - drop + 1), key=lambda l: (table[l][drop], l))
    return [l for l in range(K) if not start <= l < start + drop]


def load_analysis(path: Path | None) -> dict | None:
    import json

    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        path = path / "analysis.json"
    if not path.is_file():
        raise InherituneError(f"no analysis at {str(path)!r}; run `litgpt inheritune_analyze` first")
    return json.loads(path.read_text())

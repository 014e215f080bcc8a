"""`litgpt inheritune_data`: cut a deterministic token-budget subset of a corpus into litdata-optimized shards.

The output dir gets ``train/`` and ``val/`` (read them with ``--data LitData --data.data_path OUT
--data.split_names '[train, val]'``) and ``summary.json``. Tokens of the whole corpus are spilled to a temporary
file on disk, never held in memory; memory grows only with the number of documents (a few dozen bytes each).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

from litgpt_inheritune.errors import InherituneError


def _write_split(spill: Path, chosen: list, offsets: dict, out: Path, chunk_bytes: str) -> None:
    import numpy as np
    import torch
    from litdata import optimize
    from litdata.streaming import TokensLoader

    tokens = np.memmap(spill, dtype=np.uint32, mode="r")
    spans = [offsets[(c.source, c.index)] for c in chosen]

    def emit(span):
        start, length = span
        yield torch.from_numpy(np.array(tokens[start:start + length], dtype=np.int32))

    # litdata stages chunks in one machine-wide cache folder by default, so two `optimize` runs at the same time
    # (another subset, LitGPT's TextFiles) would mix their chunks: give this run a private one.
    private = {name: str(spill.parent / name.lower()) for name in
               ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER")}
    with mock.patch.dict(os.environ, private):
        # One worker: the shards' bytes then depend only on the chosen documents and their order.
        optimize(fn=emit, inputs=spans, output_dir=str(out), num_workers=1, chunk_bytes=chunk_bytes,
                 item_loader=TokensLoader(), start_method="fork")
    _stamp_index(out)


def _stamp_index(out: Path) -> None:
    """litdata stamps index.json with the wall-clock time; stamp it with a hash of the chunks instead, so that the
    same subset gives the same bytes (the stamp only has to change when the data does)."""
    import hashlib

    index_path = out / "index.json"
    index = json.loads(index_path.read_text())
    digest = hashlib.sha256()
    for chunk in index["chunks"]:
        digest.update((out / chunk["filename"]).read_bytes())
    index["updated_at"] = str(int(digest.hexdigest()[:12], 16))
    index_path.write_text(json.dumps(index, sort_keys=True))


def build_subset(
    corpus: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    tokens: int | None = None,
    fraction: float | None = None,
    val_tokens: int = 100_000,
    seed: int = 42,
    text_key: str = "text",
    domain_key: str | None = None,
    overwrite: bool = False,
    chunk_bytes: str = "64MB",
    domain_weights: dict[str, float] | None = None,
) -> dict:
    """``setup`` without the error conversion; returns the summary."""
    import numpy as np
    from litgpt import Tokenizer

    from litgpt_inheritune.checkpoint import atomic_dir, has_tokenizer
    from litgpt_inheritune.mixture import normalize_weights
    from litgpt_inheritune.subset import (
        Candidate,
        corpus_files,
        document_key,
        iter_documents,
        select,
        select_per_domain,
    )

    out_dir = Path(out_dir)
    if (tokens is None) == (fraction is None):
        raise InherituneError("give exactly one budget: --tokens N or --fraction F")
    if fraction is not None and not 0 < fraction <= 1:
        raise InherituneError(f"--fraction must be in (0, 1], got {fraction}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InherituneError(f"{str(out_dir)!r} is not empty; choose another --out_dir or pass --overwrite true")
    if not has_tokenizer(tokenizer_dir):
        raise InherituneError(f"no tokenizer in {str(tokenizer_dir)!r}; pass the reference's checkpoint dir")
    if domain_weights is not None:
        if not domain_key:
            raise InherituneError("--domain_weights needs --domain_key, the record field that names the domain")
        domain_weights = normalize_weights(domain_weights)
    corpus_files(corpus)  # fails early on a missing or empty corpus
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    tokenizer = Tokenizer(tokenizer_dir)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="inheritune-data-") as tmp:
        spill = Path(tmp) / "tokens.u32"
        candidates, offsets, position = [], {}, 0
        with spill.open("wb") as sink:
            for doc in iter_documents(corpus, text_key=text_key, domain_key=domain_key):
                ids = tokenizer.encode(doc.text, bos=False, eos=True).numpy().astype(np.uint32)
                sink.write(ids.tobytes())
                offsets[(doc.source, doc.index)] = (position, len(ids))
                candidates.append(Candidate(document_key(seed, doc.source, doc.index), doc.source, doc.index,
                                            len(ids), doc.domain))
                position += len(ids)
        corpus_tokens = position
        budget = tokens if tokens is not None else max(1, round(fraction * corpus_tokens))
        if budget + val_tokens > corpus_tokens:
            raise InherituneError(
                f"the corpus holds {corpus_tokens:,} tokens, fewer than the budget {budget:,} plus --val_tokens "
                f"{val_tokens:,}; lower the budget"
            )
        val = select(candidates, val_tokens) if val_tokens > 0 else []
        taken = {(c.source, c.index) for c in val}
        rest = [c for c in candidates if (c.source, c.index) not in taken]
        if domain_weights is None:
            train = select(rest, budget)
        else:  # stratified: each domain gets its share of the budget
            train = select_per_domain(rest, {d: max(1, round(w * budget)) for d, w in domain_weights.items() if w > 0})

        def count(chosen):
            per_domain = {}
            for c in chosen:
                per_domain[c.domain] = per_domain.get(c.domain, 0) + c.n_tokens
            return {"documents": len(chosen), "tokens": sum(per_domain.values()), "tokens_per_domain": per_domain}

        summary = {
            "corpus": str(corpus), "tokenizer_dir": str(tokenizer_dir), "seed": seed, "budget_tokens": budget,
            "corpus_tokens": corpus_tokens, "corpus_documents": len(candidates),
            "domain_weights": domain_weights, "train": count(train), "val": count(val),
        }
        with atomic_dir(out_dir, overwrite=overwrite) as staging:
            _write_split(spill, train, offsets, staging / "train", chunk_bytes)
            if val:
                _write_split(spill, val, offsets, staging / "val", chunk_bytes)
            (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def setup(
    corpus: Path,
    tokenizer_dir: Path,
    out_dir: Path = Path("data/inheritune_subset"),
    tokens: int | None = None,
    fraction: float | None = None,
    val_tokens: int = 100_000,
    seed: int = 42,
    text_key: str = "text",
    domain_key: str | None = None,
    domain_weights: dict[str, float] | None = None,
    overwrite: bool = False,
) -> None:
    """Write a seeded random subset of whole documents of a corpus, with a token budget, as litdata shards.

    Arguments:
        corpus: A file or a directory of .jsonl, .jsonl.zst, .parquet and .txt files (read in sorted order).
        tokenizer_dir: The reference's checkpoint dir (its tokenizer encodes the text).
        out_dir: Gets train/, val/ (litdata-optimized) and summary.json. Written to a temporary dir first.
        tokens: Training tokens to take. Give this or ``fraction``.
        fraction: Share of the corpus's tokens to take, e.g. 0.001.
        val_tokens: Tokens of held-out documents for validation, chosen before the training subset.
        seed: Which documents are taken (the same seed, corpus and budget give byte-identical shards).
        text_key: The record field that holds the text (dotted for nested fields).
        domain_key: The record field that names the domain, e.g. ``meta.redpajama_set_name``; counted in the summary.
        domain_weights: Stratify: each domain's share of the training budget, e.g. ``{RedPajamaArXiv: 0.025, ...}``.
        overwrite: Replace a non-empty ``out_dir``.
    """
    arguments = dict(locals())
    try:
        summary = build_subset(**arguments)
    except InherituneError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(summary, indent=2))

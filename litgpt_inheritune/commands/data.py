"""`litgpt inheritune_data`: cut a deterministic token-budget subset of a corpus into litdata-optimized shards."""

from __future__ import annotations

import json
from pathlib import Path

from litgpt_inheritune.data.sampler import build_subset
from litgpt_inheritune.errors import one_line_errors
from litgpt_inheritune.rundir import other_rank_skips


@one_line_errors
def setup(
    corpus: Path,
    tokenizer_dir: Path,
    out_dir: Path = Path("data/inheritune_subset"),
    tokens: int | None = None,
    fraction: float | None = None,
    val_tokens: int = 100_000,
    test_tokens: int = 0,
    seed: int = 42,
    preset: str | None = None,
    text_key: str = "text",
    domain_key: str | None = None,
    domain_weights: dict[str, float] | None = None,
    stratify: bool = False,
    split_by_domain: bool = False,
    split: str | None = None,
    skip_unreadable: bool = False,
    num_workers: int | None = None,
    overwrite: bool = False,
) -> None:
    """Write a seeded random subset of whole documents of a corpus, with a token budget, as litdata shards.

    Arguments:
        corpus: A file or a directory of .jsonl, .jsonl.zst, .parquet, .txt and .tar(.gz/.xz) files of .txt
            documents (read in sorted order), datasets saved with HF ``save_to_disk`` and litdata dirs of text.
        tokenizer_dir: The reference's checkpoint dir (its tokenizer encodes the text).
        out_dir: Gets train/, val/, test/ with ``test_tokens`` (litdata-optimized) and summary.json. Written to a
            temporary dir first.
        tokens: Training tokens to take. Give this or ``fraction``.
        fraction: Share of the corpus's tokens to take, e.g. 0.001.
        val_tokens: Tokens of held-out documents for validation, chosen before the training subset (per domain
            with ``split_by_domain``).
        test_tokens: Tokens of other held-out documents for a test split (``test/``, disjoint from train and val),
            chosen after validation and before the training subset; 0 (default) writes none.
        seed: Which documents are taken (the same seed, corpus and budget give byte-identical shards).
        preset: A known corpus's layout and fields: redpajama_v1, redpajama_v1_sample, openwebtext or fineweb_edu.
        text_key: The record field that holds the text (dotted for nested fields).
        domain_key: The record field that names the domain, e.g. ``meta.redpajama_set_name``; counted in the summary.
        domain_weights: Stratify: each domain's share of the training budget, e.g. ``{RedPajamaArXiv: 0.025, ...}``.
        stratify: Stratify by the corpus's own proportions (each domain's share of the corpus's tokens).
        split_by_domain: Write train/<domain>/ and val/<domain>/ as separate litdata dirs, one per domain.
        split: The split of a saved HF DatasetDict to read (default: train).
        skip_unreadable: Leave out corrupt or unreadable files (whole) with a warning instead of stopping.
        num_workers: Cores that read and tokenize (default: every core this process may use): up to 8 as the
            tokenizer's own threads in one process, more as one process per core; the output does not depend on it.
        overwrite: Replace a non-empty ``out_dir``.
    """
    if other_rank_skips("inheritune_data"):
        return
    arguments = dict(locals())
    summary = build_subset(**arguments)
    print(json.dumps(summary, indent=2))


"""Deterministic token-budget subsets of a corpus: the pure parts (reading documents, keying, selecting).

Every document gets a key in [0, 1) from a seeded hash of where it lives (file path relative to the corpus root and
its index in the file), so the key does not depend on reading order, worker count or machine. A subset of budget B
is the documents with the smallest keys whose tokens add up to B (the last one taken whole): a seeded random sample
of whole documents, and the same corpus, seed and budget always give the same documents in the same order.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from litgpt_inheritune.errors import InherituneError

FORMATS = (".jsonl", ".jsonl.zst", ".parquet", ".txt")


@dataclass(frozen=True)
class Document:
    source: str  # path relative to the corpus root
    index: int  # position in its file
    text: str
    domain: str


def corpus_files(corpus: Path) -> list[Path]:
    """The corpus's readable files in a fixed order; a one-line error when there are none."""
    corpus = Path(corpus)
    if not corpus.exists():
        raise InherituneError(f"corpus {str(corpus)!r} does not exist; give a file or a directory of {FORMATS}")
    files = [corpus] if corpus.is_file() else sorted(p for p in corpus.rglob("*") if p.is_file())
    files = [p for p in files if p.name.endswith(FORMATS)]
    if not files:
        raise InherituneError(f"corpus {str(corpus)!r} holds no {'/'.join(FORMATS)} files")
    return files


def lookup(record: dict, dotted: str):
    """``record['meta']['redpajama_set_name']`` for ``'meta.redpajama_set_name'``; None when absent."""
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _records(path: Path) -> Iterator[dict]:
    name = path.name
    if name.endswith(".txt"):
        yield {"text": path.read_text(encoding="utf-8")}
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    else:
        if name.endswith(".zst"):
            import zstandard

            raw = zstandard.ZstdDecompressor().stream_reader(path.open("rb"))
            stream = io.TextIOWrapper(raw, encoding="utf-8")
        else:
            stream = path.open(encoding="utf-8")
        with stream:
            for line_number, line in enumerate(stream, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InherituneError(f"{path}:{line_number} is not JSON ({exc.msg})") from None


def iter_documents(
    corpus: Path, text_key: str = "text", domain_key: str | None = None, default_domain: str = "all"
) -> Iterator[Document]:
    """Streams the corpus's documents (one file in memory at most for .txt, one line or batch otherwise)."""
    root = Path(corpus)
    for path in corpus_files(root):
        source = path.name if root.is_file() else path.relative_to(root).as_posix()
        try:
            for index, record in enumerate(_records(path)):
                text = lookup(record, text_key)
                if not isinstance(text, str):
                    raise InherituneError(f"{path}: record {index} has no text under {text_key!r}; set --text_key")
                domain = lookup(record, domain_key) if domain_key else None
                yield Document(source, index, text, str(domain) if domain is not None else default_domain)
        except (OSError, UnicodeDecodeError) as exc:
            raise InherituneError(f"cannot read {path}: {exc}") from None


def document_key(seed: int, source: str, index: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, source, index)."""
    digest = hashlib.blake2b(f"{seed}\0{source}\0{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Candidate:
    key: float
    source: str
    index: int
    n_tokens: int
    domain: str


def select(candidates: Iterable[Candidate], budget: int, what: str = "the corpus") -> list[Candidate]:
    """The candidates with the smallest keys whose tokens reach ``budget``, in key order (last one taken whole)."""
    if budget <= 0:
        raise InherituneError(f"the token budget must be positive, got {budget}")
    chosen, total = [], 0
    for candidate in sorted(candidates, key=lambda c: (c.key, c.source, c.index)):
        if total >= budget:
            break
        chosen.append(candidate)
        total += candidate.n_tokens
    if total < budget:
        raise InherituneError(
            f"{what} holds {total:,} tokens, fewer than the budget of {budget:,}; lower --tokens or --fraction"
        )
    return chosen


def select_per_domain(candidates: Iterable[Candidate], budgets: dict[str, int]) -> list[Candidate]:
    """``select`` within each domain (stratified sampling); the result is in key order across domains."""
    by_domain: dict[str, list[Candidate]] = {name: [] for name in budgets}
    for candidate in candidates:
        if candidate.domain in by_domain:
            by_domain[candidate.domain].append(candidate)
    empty = sorted(name for name, found in by_domain.items() if not found)
    if empty:
        raise InherituneError(f"no documents of domain(s) {empty} in the corpus; check the domain names")
    chosen = [c for name, found in by_domain.items() for c in select(found, budgets[name], f"domain {name!r}")]
    return sorted(chosen, key=lambda c: (c.key, c.source, c.index))

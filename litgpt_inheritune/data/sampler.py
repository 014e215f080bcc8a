"""The sampler behind `litgpt inheritune_data`: cut a deterministic token-budget subset of a corpus into litdata-optimized shards.

The output dir gets ``train/`` and ``val/`` (read them with ``--data LitData --data.data_path OUT
--data.split_names '[train, val]'``) and ``summary.json``; with ``--split_by_domain true`` it gets
``train/<domain>/`` and ``val/<domain>/`` instead. With ``--test_tokens`` it also gets ``test/`` (or
``test/<domain>/``): held-out documents, disjoint from both, for a loss no choice has looked at
(``validation.test_loss``). Tokens are spilled to temporary files on disk, never held in
memory; memory grows only with the number of tokenized documents (``Candidate``: about 220 bytes each, about 300
while choosing sorts them), and a worker holds one batch of texts (``BATCH_CHARS``) with their ids.

How the work is done (none of it changes which documents are chosen, so the shards are the same bytes whatever
``num_workers`` is):

- The corpus is split into units (files, .arrow files of a saved dataset, litdata dirs), read and tokenized whole,
  in batches through the tokenizer's own batch encoding, into a spill file per process (``worker_layout``): on up
  to ``THREADED_CORES`` cores one process does it, the tokenizer's threads taking the cores, one batch encoded while
  the next is read and the one before written; on more cores one single-threaded process per core takes whole
  units (a corpus of fewer units than cores keeps only that many busy). Counting characters (below) is always a
  process per core.
- With a token budget (``--tokens``) and budgets fixed in advance, a first pass only counts characters, summed per
  1/65536 of the key range and per domain (no memory per document), and picks a key threshold that should hold the
  budget with a margin (6 characters per token assumed); only documents below it are tokenized. The selection is then made among them exactly as among all documents: the
  chosen documents are a key-prefix of the corpus, so if the prefix holds the budget the result is the same. If it
  does not (a corpus of unusually long tokens), the threshold is raised with the measured ratio and the missing
  documents tokenized in another pass, up to the whole corpus.
- ``--fraction`` and the corpus's own proportions (``--stratify`` or ``--split_by_domain`` without weights) need the
  token count of every document, so they tokenize everything in one pass.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from array import array
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from litgpt_inheritune.errors import InherituneError

CHARS_PER_TOKEN = 6.0  # assumed by the first threshold: more than BPE tokenizers give on prose (about 4), so safe
MARGIN = 1.25  # on the measured ratio when a pass fell short
BUCKETS = 2**16  # the counting pass sums characters per 1/65536 of the key range, per domain: no per-document memory
BATCH_CHARS = 1 << 20  # characters a worker encodes in one call of the tokenizer's batch encoding
# Up to this many cores, one process tokenizes on all of them with the tokenizer's own threads (on 2 cores: 1.3M
# tokens/s against 0.9M for two single-threaded processes, bench/RESULTS.md); past it, one process per core, as its
# reading and keying (one core's work, about 4% of tokenizing's) would hold the threads back.
THREADED_CORES = 8


# ---------------------------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class _Job:
    units: list
    seed: int
    text_key: str
    domain_key: str | None
    skip_unreadable: bool
    spill_dir: str


_JOB: _Job | None = None  # set in the parent before workers fork
_TOKENIZER = None
_SPILL: dict[str, Any] = {}


def _spill():
    """This process's spill file (appended to; a process writes only its own)."""
    path = os.path.join(_JOB.spill_dir, f"spill-{os.getpid()}.u32")
    if _SPILL.get("path") != path:
        _close_spill()
        _SPILL.update(path=path, file=open(path, "ab"))
    return path, _SPILL["file"]


def _close_spill() -> None:
    if _SPILL.get("file") is not None:
        _SPILL["file"].close()
    _SPILL.clear()


@contextmanager
def _job(job: _Job, tokenizer):
    """Makes ``job`` what this process and the workers it forks work on (they inherit the loaded tokenizer)."""
    global _JOB, _TOKENIZER
    _JOB, _TOKENIZER = job, tokenizer
    try:
        yield
    finally:
        _JOB = _TOKENIZER = None
        _close_spill()


def _documents(unit_index: int):
    from litgpt_inheritune.data.subset import unit_documents

    return unit_documents(_JOB.units[unit_index], _JOB.text_key, _JOB.domain_key)


def _scan_unit(unit_index: int) -> dict:
    """Characters per key bucket and domain of a unit's documents (no tokenizing, nothing kept per document)."""
    import numpy as np

    from litgpt_inheritune.data.subset import UnreadableError, document_key

    buckets, chars, domains = array("q"), array("d"), []  # 8 bytes a document (and a shared domain name)
    try:
        for doc in _documents(unit_index):
            buckets.append(int(document_key(_JOB.seed, doc.source, doc.index) * BUCKETS))
            chars.append(len(doc.text))
            domains.append(doc.domain)
    except UnreadableError as exc:
        if not _JOB.skip_unreadable:
            raise
        return {"unit": unit_index, "skipped": exc}
    buckets, chars = np.frombuffer(buckets, dtype=np.int64), np.frombuffer(chars, dtype=np.float64)
    histograms = {}
    for name in sorted(set(domains)):
        mine = np.array([d == name for d in domains])
        used, where = np.unique(buckets[mine], return_inverse=True)
        histograms[name] = (used, np.bincount(where, weights=chars[mine]))
    return {"unit": unit_index, "documents": len(domains), "histograms": histograms,
            "first": int(buckets.min()) if len(buckets) else BUCKETS}


def _encode_batch(tokenizer, texts: list[str]) -> list:
    """The tokenizer's own batch encoding of ``texts`` (HF tokenizers: on its threads, the GIL released)."""
    processor = tokenizer.processor
    if tokenizer.backend == "huggingface":
        encode = getattr(processor, "encode_batch_fast", processor.encode_batch)  # fast: no character offsets
        return encode(texts)
    return processor.encode(texts, num_threads=_ENCODE_THREADS)  # sentencepiece: ids already, on its own threads


def _document_ids(tokenizer, encoded: list) -> tuple[array, list[int]]:
    """LitGPT's ``tokenizer.encode(text, bos=False, eos=True)`` of each document, from ``_encode_batch``'s result:
    (all ids, one document after another, as uint32; each one's length).

    LitGPT's rules, kept exactly so that the shards are the same bytes: a leading BOS the tokenizer adds is dropped;
    EOS is appended unless the ids already end with it, in which case that EOS is dropped instead.
    """
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    ids, lengths = array("I"), []
    for document in encoded:
        document = getattr(document, "ids", document)
        first = 1 if document and document[0] == bos else 0
        if len(document) > first and document[-1] == eos:
            ids.extend(document[first:-1])
            lengths.append(len(document) - first - 1)
        else:
            ids.extend(document[first:] if first else document)
            ids.append(eos)
            lengths.append(len(document) - first + 1)
    return ids, lengths


def _tokenize_unit(task: tuple[int, float, float]) -> dict:
    """Tokenizes the unit's documents with ``lo <= key < hi`` into this process's spill file, in batches of about
    ``BATCH_CHARS`` characters (held with their ids, then dropped: memory does not follow the unit's size).

    One batch is encoded on a helper thread (the tokenizer releases the GIL) while this thread reads and keys the
    next and writes the one before, so the tokenizer's threads seldom wait for Python.

    An unreadable unit with ``skip_unreadable`` is dropped whole: the spill is cut back to where the unit began, so
    none of its documents is used even if some were read before the bad part.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from litgpt_inheritune.data.subset import UnreadableError, document_key

    unit_index, lo, hi = task
    path, sink = _spill()
    start = sink.tell()
    rows, n_documents, texts, waiting, chars = [], 0, [], [], 0
    pending = deque()  # (encoding of a batch, its documents), oldest first: its one thread takes them in turn

    def write_oldest():
        future, documents = pending.popleft()
        ids, lengths = _document_ids(_TOKENIZER, future.result())
        offset = sink.tell() // 4
        sink.write(ids)
        for (index, key, domain), length in zip(documents, lengths):
            rows.append((index, key, length, offset, domain))
            offset += length

    with ThreadPoolExecutor(1, thread_name_prefix="encode") as encoder:
        try:
            for doc in _documents(unit_index):
                n_documents += 1
                key = document_key(_JOB.seed, doc.source, doc.index)
                if not lo <= key < hi:
                    continue
                texts.append(doc.text)
                waiting.append((doc.index, key, doc.domain))
                chars += len(doc.text)
                if chars >= BATCH_CHARS:
                    pending.append((encoder.submit(_encode_batch, _TOKENIZER, texts), waiting))
                    texts, waiting, chars = [], [], 0
                    if len(pending) > 1:  # the batch before is written while this one is encoded
                        write_oldest()
            if texts:
                pending.append((encoder.submit(_encode_batch, _TOKENIZER, texts), waiting))
            while pending:
                write_oldest()
        except UnreadableError as exc:
            for future, _ in pending:
                future.cancel()
            sink.seek(start)
            sink.truncate()
            sink.flush()
            if not _JOB.skip_unreadable:
                raise
            return {"unit": unit_index, "skipped": exc}
    sink.flush()
    return {"unit": unit_index, "spill": path, "rows": rows, "documents": n_documents}


def _worker_start() -> None:
    """A worker's set-up: it tokenizes on its own core (the tokenizer's threads stay off, one process per core), and
    ends, quietly, when its parent is killed (Linux), instead of printing BrokenPipeError tracebacks."""
    import ctypes
    import signal

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by HF tokenizers at each call
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker ends when its pipe breaks
        pass


def default_workers() -> int:
    """Every core this process may run on (its CPU affinity, which a scheduler or container may limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


SPILL_PREFIX = "inheritune-data-"


def _spill_dir_prefix() -> str:
    """Spill dirs name their owner (``inheritune-data-HOST-PID-``), so a later run can remove those of killed runs."""
    return f"{SPILL_PREFIX}{socket.gethostname()}-{os.getpid()}-"


def remove_stale_spill_dirs() -> list[Path]:
    """Removes spill dirs in the temporary directory left by runs of this host whose process is gone."""
    from litgpt_inheritune.checkpoint import _owner_gone

    removed = []
    host = socket.gethostname()
    for directory in Path(tempfile.gettempdir()).glob(f"{SPILL_PREFIX}{host}-*-*"):
        pid = directory.name[len(f"{SPILL_PREFIX}{host}-"):].split("-")[0]
        if _owner_gone(host, pid):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


_ENCODE_THREADS = 1  # SentencePiece's threads per batch (HF tokenizers' follow RAYON_NUM_THREADS): 1 in a worker


def _in_process(fn, items: list, environment: dict, threads: int):
    global _ENCODE_THREADS
    for item in items:
        _ENCODE_THREADS = threads
        try:
            with mock.patch.dict(os.environ, environment):
                result = fn(item)
        finally:
            _ENCODE_THREADS = 1
        yield result


def worker_layout(num_workers: int, units: int, threaded: bool) -> tuple[int, int]:
    """(processes, threads in each) for work on ``num_workers`` cores over ``units`` units: ``threaded`` work
    (tokenizing) on up to ``THREADED_CORES`` cores is one process, the tokenizer's own threads taking the cores;
    otherwise (and for reading alone) one single-threaded process per core, at most one per unit."""
    if threaded and (num_workers <= THREADED_CORES or units <= 1):
        return 1, num_workers
    return max(1, min(num_workers, units)), 1


def _map(fn, items: list, num_workers: int, desc: str, progress: bool, threaded: bool = False):
    """``fn`` over ``items`` in order on ``num_workers`` cores (``worker_layout``; forked processes), with a
    progress bar on stderr."""
    from tqdm import tqdm

    processes, threads = worker_layout(num_workers, len(items), threaded)
    # Set at each fork too: HF tokenizers then neither warns in a worker forked after its threads ran here, nor
    # turns them off (a worker turns them off itself). The thread count is read once, at the process's first
    # parallel encoding.
    environment = {"TOKENIZERS_PARALLELISM": "true" if threads > 1 else "false"}
    if "RAYON_NUM_THREADS" not in os.environ:
        environment["RAYON_NUM_THREADS"] = str(threads)
    if processes == 1:
        results, pool = _in_process(fn, items, environment, threads), None
    else:
        import multiprocessing

        # Forked before the progress bar starts its monitor thread.
        with mock.patch.dict(os.environ, environment):
            pool = multiprocessing.get_context("fork").Pool(processes, initializer=_worker_start)
        results = pool.imap(fn, items, chunksize=1)
    bar = tqdm(total=len(items), desc=desc, unit="file", file=sys.stderr, disable=not progress, mininterval=1)
    documents = 0
    try:
        try:
            for result in results:
                documents += result.get("documents", 0)
                bar.set_postfix(documents=documents, refresh=False)
                bar.update()
                yield result
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------- writing


def _write_split(spills: list[str], chosen: list, out: Path, chunk_bytes: str) -> None:
    """The chosen documents' tokens, in order, as a litdata dir of ``TokensLoader`` chunks (what litdata's
    ``optimize`` writes with one worker, file for file), written here by litdata's ``BinaryWriter``."""
    import queue

    import numpy as np
    import torch
    from litdata.streaming import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    out.mkdir(parents=True)
    # Each document's tokens are read from its spill (not memory-mapped: mapped pages would count as this process's
    # memory, which would then grow with the subset); the writer holds one chunk (``chunk_bytes``) at a time.
    sources = [open(path, "rb") for path in spills]
    # Rank 0 of one: chunk-0-N.bin and 0.index.json whatever process group this runs in; the writer's one message
    # (the data format it inferred) goes to a queue instead of stdout.
    with mock.patch.dict(os.environ, {"DATA_OPTIMIZER_GLOBAL_RANK": "0", "DATA_OPTIMIZER_NUM_WORKERS": "1",
                                      "DATA_OPTIMIZER_NUM_NODES": "1"}):
        writer = BinaryWriter(str(out), chunk_bytes=chunk_bytes, item_loader=TokensLoader(),
                              msg_queue=queue.SimpleQueue())
        try:
            for i, c in enumerate(chosen):
                tokens = np.frombuffer(os.pread(sources[c.spill].fileno(), 4 * c.n_tokens, 4 * c.offset), np.uint32)
                writer.add_item(i, torch.from_numpy(tokens.astype(np.int32)))
        finally:
            for source in sources:
                source.close()
        writer.done()
    part = out / "0.index.json"
    index = json.loads(part.read_text())
    part.unlink()
    _stamp_index(out, index)


def _stamp_index(out: Path, index: dict) -> None:
    """Writes ``index.json`` stamped with a hash of the chunks where litdata puts the wall-clock time, so that the
    same subset gives the same bytes (the stamp only has to change when the data does)."""
    import hashlib

    digest = hashlib.sha256()
    for chunk in index["chunks"]:
        with (out / chunk["filename"]).open("rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    index["updated_at"] = str(int(digest.hexdigest()[:12], 16))
    (out / "index.json").write_text(json.dumps(index, sort_keys=True))


def domain_dirs(domains) -> dict[str, str]:
    """Each domain's dir name: the name with every character outside [A-Za-z0-9._-] replaced by ``_``."""
    dirs: dict[str, str] = {}
    for name in sorted(domains):
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        if safe.strip(".") == "":
            safe = f"domain_{safe}"
        clash = [other for other, d in dirs.items() if d == safe]
        if clash:
            raise InherituneError(
                f"domains {clash[0]!r} and {name!r} both become the dir name {safe!r}; rename one in the corpus "
                "or drop --split_by_domain"
            )
        dirs[name] = safe
    return dirs


# ---------------------------------------------------------------------------------------------- choosing


def _count(chosen) -> dict:
    per_domain: dict[str, int] = {}
    for c in chosen:
        per_domain[c.domain] = per_domain.get(c.domain, 0) + c.n_tokens
    return {"documents": len(chosen), "tokens": sum(per_domain.values()), "tokens_per_domain": per_domain}


def _choose(candidates: list, budget: int, val_tokens: int, shares: dict[str, float] | None, split_by_domain: bool,
            test_tokens: int = 0):
    """{"train": [...], "val": [...], "test": [...]} or, split by domain, {domain: {"train": ..., "val": ...,
    "test": ...}}: validation documents are chosen first, then test documents among the rest, then training
    documents among what is left, so the three share no document (``test`` is empty without ``test_tokens``).

    Raises ``NotEnoughTokens`` when the candidates (all, or a key-prefix of the corpus) fall short of a budget.
    """
    from litgpt_inheritune.data.subset import group_by_domain, select, select_per_domain

    budgets = None if shares is None else {d: max(1, round(w * budget)) for d, w in shares.items() if w > 0}
    if not split_by_domain:
        val = select(candidates, val_tokens, "the corpus (for --val_tokens)") if val_tokens > 0 else []
        rest = _without(candidates, val)
        test = select(rest, test_tokens, "the corpus (for --test_tokens)") if test_tokens > 0 else []
        rest = _without(rest, test)
        train = select(rest, budget) if budgets is None else select_per_domain(rest, budgets)
        return {"train": train, "val": val, "test": test}
    by_domain = group_by_domain(candidates, budgets)
    result = {}
    for domain, found in by_domain.items():
        val = select(found, val_tokens, f"domain {domain!r} (for --val_tokens)") if val_tokens > 0 else []
        rest = _without(found, val)
        test = select(rest, test_tokens, f"domain {domain!r} (for --test_tokens)") if test_tokens > 0 else []
        train = select(_without(rest, test), budgets[domain], f"domain {domain!r}")
        result[domain] = {"train": train, "val": val, "test": test}
    return result


def _without(candidates: list, taken: list) -> list:
    """``candidates`` less the documents in ``taken``."""
    chosen = {(c.source, c.index) for c in taken}
    return [c for c in candidates if (c.source, c.index) not in chosen]


def _threshold(histograms: dict, needs: list[tuple[str | None, int]], chars_per_token: float, floor: float) -> float:
    """The smallest bucket edge below which the documents should hold every ``(domain or None, tokens)`` need."""
    import numpy as np

    if not histograms:  # nothing readable was counted
        return 1.0
    threshold = floor
    for domain, need in needs:
        if domain is None:
            histogram = sum(histograms.values())
        elif domain in histograms:
            histogram = histograms[domain]
        else:
            return 1.0
        reach = int(np.searchsorted(np.cumsum(histogram), need * chars_per_token))
        if reach >= BUCKETS:
            return 1.0
        threshold = max(threshold, (reach + 1) / BUCKETS)
    return min(1.0, threshold)


# ---------------------------------------------------------------------------------------------- the command


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
    skip_unreadable: bool = False,
    preset: str | None = None,
    split: str | None = None,
    stratify: bool = False,
    split_by_domain: bool = False,
    num_workers: int | None = None,
    progress: bool = True,
    candidate_pass: bool = True,
    test_tokens: int = 0,
) -> dict:
    """The body of the command (``commands``), raising ``InherituneError`` on bad input; returns the summary."""
    import numpy as np

    from litgpt_inheritune.checkpoint import atomic_dir, has_tokenizer
    from litgpt_inheritune.data.dbl import normalize_weights
    from litgpt_inheritune.data.subset import Candidate, NotEnoughTokens, corpus_units, get_preset

    out_dir = Path(out_dir)
    if (tokens is None) == (fraction is None):
        raise InherituneError("give exactly one budget: --tokens N or --fraction F")
    if fraction is not None and not 0 < fraction <= 1:
        raise InherituneError(f"--fraction must be in (0, 1], got {fraction}")
    if tokens is not None and tokens <= 0:
        raise InherituneError(f"--tokens must be positive, got {tokens}")
    if val_tokens < 0:
        raise InherituneError(f"--val_tokens must be >= 0, got {val_tokens}")
    if test_tokens < 0:
        raise InherituneError(f"--test_tokens must be >= 0, got {test_tokens}")
    held_out = val_tokens + test_tokens  # tokens of documents kept out of training
    from litgpt_inheritune.checks import check_out_dir

    check_out_dir(out_dir)  # a file, an unwritable place: before any work
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise InherituneError(f"{str(out_dir)!r} is not empty; choose another --out_dir or pass --overwrite true")
    if not has_tokenizer(tokenizer_dir):
        raise InherituneError(f"no tokenizer in {str(tokenizer_dir)!r}; pass the reference's checkpoint dir")
    layout = get_preset(preset)
    if layout is not None:
        domain_key = domain_key or layout.domain_key
        text_key = text_key if text_key != "text" else layout.text_key
    has_domains = bool(domain_key) or bool(layout and layout.path_domains)
    for flag, on in (("--domain_weights", domain_weights is not None), ("--stratify", stratify),
                     ("--split_by_domain", split_by_domain)):
        if on and not has_domains:
            raise InherituneError(f"{flag} needs --domain_key, the record field that names the domain (or a --preset)")
    if domain_weights is not None:
        domain_weights = normalize_weights(domain_weights)
    if num_workers is None:
        num_workers = default_workers()
    if num_workers < 1:
        raise InherituneError(f"--num_workers must be at least 1, got {num_workers}")
    units = corpus_units(corpus, layout, split)  # fails early on a missing or empty corpus
    from litgpt import Tokenizer

    try:
        tokenizer = Tokenizer(tokenizer_dir)
    except Exception as exc:
        raise InherituneError(f"cannot load the tokenizer in {str(tokenizer_dir)!r}: {exc}") from None
    if tokenizer.eos_id is None:
        raise InherituneError(f"the tokenizer in {str(tokenizer_dir)!r} names no EOS token (it ends every document); "
                              "add eos_token to its tokenizer_config.json")
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    natural = domain_weights is None and (stratify or split_by_domain)  # needs every document's tokens

    t0 = time.perf_counter()
    remove_stale_spill_dirs()
    with tempfile.TemporaryDirectory(prefix=_spill_dir_prefix()) as tmp, _job(
        _Job(units, seed, text_key, domain_key, skip_unreadable, tmp), tokenizer
    ):
        skipped: dict[int, Any] = {}

        def skip(result) -> bool:
            if "skipped" in result:
                skipped[result["unit"]] = result["skipped"]
                return True
            return False

        # Pass 0 (a token budget fixed in advance only): characters of every document by key bucket and domain.
        histograms, first_bucket, corpus_documents, phases = None, {}, None, {}
        if candidate_pass and tokens is not None and not natural:
            histograms, corpus_documents = {}, 0
            for result in _map(_scan_unit, list(range(len(units))), num_workers, "counting", progress):
                if skip(result):
                    continue
                corpus_documents += result["documents"]
                first_bucket[result["unit"]] = result["first"]
                for name, (used, sums) in result["histograms"].items():
                    histograms.setdefault(name, np.zeros(BUCKETS))[used] += sums
            if domain_weights is not None:  # checked now, before any tokenizing
                missing = sorted(d for d, w in domain_weights.items() if w > 0 and d not in histograms)
                if missing:
                    raise InherituneError(f"no documents of domain(s) {missing} in the corpus (it has "
                                          f"{sorted(histograms)[:10]}); check the domain names")
                if split_by_domain:
                    domain_dirs(d for d, w in domain_weights.items() if w > 0)
            if domain_weights is None:
                needs = [(None, held_out + tokens)]
            else:
                budgets = {d: round(w * tokens) for d, w in domain_weights.items() if w > 0}
                needs = ([] if split_by_domain else [(None, held_out)]) + [
                    (d, b + held_out) for d, b in budgets.items()]
            hi = _threshold(histograms, needs, CHARS_PER_TOKEN, 0.0)
            phases["counting"] = time.perf_counter() - t0
        else:
            hi = 1.0

        spills: list[str] = []
        candidates, lo, passes, chosen = [], 0.0, 0, None
        while True:
            passes += 1
            todo = [i for i in range(len(units)) if i not in skipped]
            if histograms is not None and hi < 1.0:  # not the units whose documents all lie above the threshold
                todo = [i for i in todo if first_bucket[i] < hi * BUCKETS]
            counted, layout = 0, worker_layout(num_workers, len(todo), threaded=True)
            for result in _map(_tokenize_unit, [(i, lo, hi) for i in todo], num_workers,
                               f"tokenizing (pass {passes})", progress, threaded=True):
                if skip(result):
                    source = units[result["unit"]].source
                    candidates = [c for c in candidates if c.source != source]
                    continue
                counted += result["documents"]
                if result["spill"] not in spills:
                    spills.append(result["spill"])
                spill = spills.index(result["spill"])
                source = units[result["unit"]].source
                for index, key, n_tokens, offset, domain in result["rows"]:
                    candidates.append(Candidate(key, source, index, n_tokens, domain, spill, offset))
            if hi >= 1.0 and lo == 0.0:
                corpus_documents = counted
            corpus_tokens = sum(c.n_tokens for c in candidates) if hi >= 1.0 else None
            budget = tokens if tokens is not None else max(1, round(fraction * corpus_tokens))
            if corpus_tokens is not None and not split_by_domain and budget + held_out > corpus_tokens:
                raise InherituneError(
                    f"the corpus holds {corpus_tokens:,} tokens, fewer than the budget {budget:,} plus --val_tokens "
                    f"{val_tokens:,}" + (f" and --test_tokens {test_tokens:,}" if test_tokens else "")
                    + "; lower the budget"
                )
            if domain_weights is not None:
                shares = domain_weights
            elif natural:
                totals: dict[str, int] = {}
                for c in candidates:
                    totals[c.domain] = totals.get(c.domain, 0) + c.n_tokens
                shares = {d: n / corpus_tokens for d, n in sorted(totals.items())}
            else:
                shares = None
            try:
                chosen = _choose(candidates, budget, val_tokens, shares, split_by_domain, test_tokens)
                break
            except NotEnoughTokens:
                if hi >= 1.0:
                    raise
            # The key-prefix tokenized so far fell short: raise the threshold with the ratio measured on it.
            seen_tokens = sum(c.n_tokens for c in candidates)
            seen_chars = float(sum(histograms.values())[: round(hi * BUCKETS)].sum())
            ratio = max(CHARS_PER_TOKEN, MARGIN * seen_chars / max(1, seen_tokens))
            lo, hi = hi, max(_threshold(histograms, needs, ratio, hi), min(1.0, 2 * hi))

        phases["tokenizing"] = time.perf_counter() - t0 - sum(phases.values())  # and choosing
        if skipped:
            listed = [skipped[i].short() for i in sorted(skipped)]
            print(f"warning: skipped {len(listed)} unreadable file{'s' if len(listed) > 1 else ''}: "
                  + "; ".join(listed[:10]) + (" ..." if len(listed) > 10 else ""), file=sys.stderr)

        summary = {
            "corpus": str(corpus), "tokenizer_dir": str(tokenizer_dir), "seed": seed, "budget_tokens": budget,
            "corpus_tokens": corpus_tokens, "corpus_documents": corpus_documents,
            "tokenized_documents": len(candidates), "passes": passes,
            "tokenizing": {"processes": layout[0], "threads": layout[1]}, "preset": preset, "text_key": text_key,
            "domain_key": domain_key, "domain_weights": domain_weights,
            "stratify": "weights" if domain_weights is not None else "natural" if natural else None,
            "skipped_files": [skipped[i].short() for i in sorted(skipped)],
        }
        dirs = domain_dirs(chosen) if split_by_domain else {}  # a name collision stops before anything is written
        with atomic_dir(out_dir, overwrite=overwrite) as staging:
            if not split_by_domain:
                train, val, test = chosen["train"], chosen["val"], chosen["test"]
                _write_split(spills, train, staging / "train", chunk_bytes)
                if val:
                    _write_split(spills, val, staging / "val", chunk_bytes)
                if test:
                    _write_split(spills, test, staging / "test", chunk_bytes)
            else:
                summary["domains"] = {}
                train, val, test = [], [], []
                for domain in sorted(chosen):
                    part = chosen[domain]
                    _write_split(spills, part["train"], staging / "train" / dirs[domain], chunk_bytes)
                    if part["val"]:
                        _write_split(spills, part["val"], staging / "val" / dirs[domain], chunk_bytes)
                    if part["test"]:
                        _write_split(spills, part["test"], staging / "test" / dirs[domain], chunk_bytes)
                    summary["domains"][domain] = {
                        "dir": dirs[domain], "train_tokens": _count(part["train"])["tokens"],
                        "val_tokens": _count(part["val"])["tokens"], "train_documents": len(part["train"]),
                        "val_documents": len(part["val"]),
                    }
                    if test_tokens:
                        summary["domains"][domain].update(test_tokens=_count(part["test"])["tokens"],
                                                          test_documents=len(part["test"]))
                    train += part["train"]
                    val += part["val"]
                    test += part["test"]
            summary.update(train=_count(train), val=_count(val))
            if test_tokens:
                summary["test"] = _count(test)
            (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    phases["writing"] = time.perf_counter() - t0 - sum(phases.values())
    summary["phase_seconds"] = {name: round(seconds, 2) for name, seconds in phases.items()}
    return summary

"""Deterministic token-budget subsets of a corpus: the pure parts (reading documents, keying, selecting).

Every document gets a key in [0, 1) from a seeded hash of where it lives (file path relative to the corpus root and
its index in the file), so the key does not depend on reading order, worker count or machine. A subset of budget B
is the documents with the smallest keys whose tokens add up to B (the last one taken whole): a seeded random sample
of whole documents, and the same corpus, seed and budget always give the same documents in the same order.

A corpus is split into *units*, each read on its own (by one worker): a file, or one .arrow file of a dataset saved
with HF ``datasets``' ``save_to_disk``, or a litdata-optimized dir of text records.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from litgpt_inheritune.errors import InherituneError

FORMATS = (".jsonl", ".jsonl.zst", ".parquet", ".txt", ".tar", ".tar.gz", ".tgz", ".tar.xz")
SKIP_HINT = "fix or remove the file, or pass --skip_unreadable true to skip unreadable files"


class UnreadableError(InherituneError):
    """A corpus file that cannot be read (corrupt, truncated, not UTF-8, not JSON)."""

    def __init__(self, path: Path, reason: str, line: int | None = None):
        self.path, self.reason, self.line = str(path), reason, line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"cannot read {where} ({reason}); {SKIP_HINT}")

    def __reduce__(self):  # survives the trip back from a worker process
        return UnreadableError, (self.path, self.reason, self.line)

    def short(self) -> str:
        return f"{self.path}{f':{self.line}' if self.line is not None else ''} ({self.reason})"


class NotEnoughTokens(InherituneError):
    """The documents looked at hold fewer tokens than a budget (all of the corpus, or a key-prefix of it)."""


@dataclass(frozen=True)
class Document:
    source: str  # path relative to the corpus root
    index: int  # position in its file
    text: str
    domain: str


@dataclass(frozen=True)
class Unit:
    """A part of the corpus read as a whole: a file, an .arrow file of a saved HF dataset, or a litdata dir."""

    path: Path
    source: str  # stable name relative to the corpus root; with the index in the unit it fixes a document's key
    kind: str  # jsonl, jsonl.zst, parquet, txt, tar, arrow, litdata
    domain: str | None = None  # the domain its place implies (a preset's layout), used when a record names none


@dataclass(frozen=True)
class Preset:
    """What a known corpus looks like on disk: its fields and which files hold its documents."""

    text_key: str
    domain_key: str | None
    patterns: tuple[str, ...]  # file name globs (fnmatch) of the corpus's document files
    layout: str  # one line for the docs
    path_domains: dict[str, str] = field(default_factory=dict)  # name prefix of top dir or file -> domain


# RedPajama-v1's seven sources, by the name the files and dirs of the release use, as the set names SlimPajama and
# Sheared-LLaMA use (so --domain_weights read the same for every RedPajama layout).
REDPAJAMA_SETS = {
    "arxiv": "RedPajamaArXiv", "book": "RedPajamaBook", "c4": "RedPajamaC4", "cc": "RedPajamaCommonCrawl",
    "common_crawl": "RedPajamaCommonCrawl", "github": "RedPajamaGithub", "stackexchange": "RedPajamaStackExchange",
    "wikipedia": "RedPajamaWikipedia",
}

PRESETS = {
    "redpajama_v1": Preset(
        "text", "meta.redpajama_set_name", ("*.jsonl", "*.jsonl.zst"),
        "the full release as `wget -i urls.txt` lays it out: arxiv/, book/, c4/, common_crawl/<dump>/*.jsonl.zst, "
        "github/, stackexchange/, wikipedia/ of {text, meta} records; the domain is the top dir's set name "
        "(RedPajamaArXiv, ...) unless meta.redpajama_set_name says otherwise",
        REDPAJAMA_SETS,
    ),
    "redpajama_v1_sample": Preset(
        "text", "meta.redpajama_set_name", ("*.jsonl",),
        "togethercomputer/RedPajama-Data-1T-Sample: arxiv_sample.jsonl, book_sample.jsonl, c4_sample.jsonl, "
        "cc_2019-30_sample.jsonl, ..., github_sample.jsonl, stackexchange_sample.jsonl, wikipedia_sample.jsonl of "
        "{text, meta} records; the domain is the file name's set name unless meta.redpajama_set_name gives one",
        REDPAJAMA_SETS,
    ),
    "openwebtext": Preset(
        "text", None, ("*.parquet", "*_data.xz", "*.tar.xz", "*.txt"),
        "HF `openwebtext` saved with save_to_disk (records {text}), or its parquet files, or the original "
        "release unpacked once (tar xf openwebtext.tar.xz: openwebtext/urlsf_subset*_data.xz, each a tar.xz of .txt "
        "documents)",
    ),
    "fineweb_edu": Preset(
        "text", "dump", ("*.parquet",),
        "HuggingFaceFW/fineweb-edu parquet files (data/CC-MAIN-*/train-*.parquet or sample/10BT/*.parquet) with "
        "columns text, id, dump, url, score, ...; the domain is the Common Crawl dump",
    ),
}


def get_preset(name: str | None) -> Preset | None:
    if name is None:
        return None
    if name not in PRESETS:
        raise InherituneError(f"unknown --preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def _kind(name: str, preset: Preset | None) -> str | None:
    if preset is not None and not any(fnmatch.fnmatch(name, p) for p in preset.patterns):
        return None
    if name.endswith("_data.xz") and preset is PRESETS["openwebtext"]:
        return "tar"
    for suffix in FORMATS:
        if name.endswith(suffix):
            return {".tar.gz": "tar", ".tgz": "tar", ".tar.xz": "tar"}.get(suffix, suffix[1:])
    return None


def _path_domain(source: str, preset: Preset | None) -> str | None:
    if preset is None or not preset.path_domains:
        return None
    first = source.split("/")[0]
    for prefix, domain in sorted(preset.path_domains.items(), key=lambda item: -len(item[0])):
        if first == prefix or first.startswith(prefix + "_") or first.startswith(prefix + "-"):
            return domain
    return None


def _hf_units(directory: Path, root: Path, split: str | None) -> list[Unit]:
    """The .arrow files of a dataset written by ``save_to_disk`` (a Dataset, or a DatasetDict's split)."""
    import datasets

    if (directory / "dataset_dict.json").is_file():
        splits = json.loads((directory / "dataset_dict.json").read_text()).get("splits", [])
        name = split or "train"
        if name not in splits:
            raise InherituneError(f"{str(directory)!r} has no split {name!r} (it has {splits}); pass --split NAME")
        directory = directory / name
    try:
        dataset = datasets.load_from_disk(str(directory))  # memory-maps the .arrow files, reads nothing yet
    except Exception as exc:
        raise InherituneError(f"cannot open the saved dataset {str(directory)!r}: {exc}") from None
    top = root.resolve()
    return [Unit(Path(f["filename"]), Path(f["filename"]).resolve().relative_to(top).as_posix(), "arrow")
            for f in dataset.cache_files]


def _is_litdata(directory: Path) -> bool:
    """A litdata-optimized dir: an index.json with chunks and a config (other index.json files are not)."""
    index = directory / "index.json"
    if not index.is_file():
        return False
    try:
        content = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(content, dict) and "chunks" in content and "config" in content


def _walk(directory: Path, root: Path, preset: Preset | None, split: str | None) -> Iterator[Unit]:
    if (directory / "dataset_dict.json").is_file() or (
        (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file()
    ):
        yield from _hf_units(directory, root, split)
        return
    if _is_litdata(directory):
        yield Unit(directory, directory.relative_to(root).as_posix(), "litdata")
        return
    for child in sorted(directory.iterdir()):
        if child.name.startswith("."):  # .cache/ of HF downloads, staging dirs
            continue
        if child.is_dir():
            yield from _walk(child, root, preset, split)
        elif child.is_file() and (kind := _kind(child.name, preset)):
            source = child.relative_to(root).as_posix()
            yield Unit(child, source, kind, _path_domain(source, preset))


def corpus_units(corpus: Path, preset: Preset | None = None, split: str | None = None) -> list[Unit]:
    """The corpus's units in a fixed order; a one-line error when there are none."""
    corpus = Path(corpus)
    if not corpus.exists():
        raise InherituneError(f"corpus {str(corpus)!r} does not exist; give a file or a directory of {FORMATS}")
    if corpus.is_file():
        kind = _kind(corpus.name, None)
        units = [Unit(corpus, corpus.name, kind, _path_domain(corpus.name, preset))] if kind else []
    else:
        units = list(_walk(corpus, corpus, preset, split))
    if not units:
        what = f"files matching {list(preset.patterns)}" if preset else "/".join(FORMATS) + " files"
        raise InherituneError(
            f"corpus {str(corpus)!r} holds no {what}, saved HF dataset or litdata dir; check the path"
        )
    return units


def corpus_files(corpus: Path) -> list[Path]:
    """The paths of the corpus's units (kept for callers of the first version)."""
    return [unit.path for unit in corpus_units(corpus)]


def lookup(record: dict, dotted: str):
    """``record['meta']['redpajama_set_name']`` for ``'meta.redpajama_set_name'``; None when absent.

    A field that holds a JSON object as a string (``meta`` in some RedPajama copies) is looked into as well.
    """
    value = record
    for part in dotted.split("."):
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return None
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _lines(path: Path, stream) -> Iterator[tuple[int, str]]:
    """Numbered, decoded, non-blank lines of a binary stream; a bad byte is an error that names the line."""
    line_number = 0
    for line_number, raw in enumerate(stream, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnreadableError(path, f"not UTF-8: {exc.reason} at byte {exc.start}", line_number) from None
        if line.strip():
            yield line_number, line


def _zstd_chunks(path: Path) -> Iterator[bytes]:
    """The decompressed bytes of a (multi-frame) zstd file; a truncated last frame is an error, not silence."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor().decompressobj()
    pending = False  # input fed to a frame that has not ended yet
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            while chunk:
                try:
                    out = decompressor.decompress(chunk)
                except zstandard.ZstdError as exc:
                    raise UnreadableError(path, f"corrupt zstd data: {exc}") from None
                pending = True
                if out:
                    yield out
                if decompressor.eof:
                    chunk = decompressor.unused_data
                    decompressor, pending = zstandard.ZstdDecompressor().decompressobj(), False
                else:
                    chunk = b""
    if pending:
        raise UnreadableError(path, "truncated zstd stream")


class _ChunkStream(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]):
        self.chunks, self.buffer = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.buffer:
            self.buffer = next(self.chunks, b"")
            if not self.buffer:
                return 0
        n = min(len(b), len(self.buffer))
        b[:n], self.buffer = self.buffer[:n], self.buffer[n:]
        return n


def _json_records(path: Path, stream) -> Iterator[dict]:
    for line_number, line in _lines(path, stream):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UnreadableError(path, f"not JSON: {exc.msg} column {exc.colno}", line_number) from None
        if not isinstance(record, dict):
            raise UnreadableError(path, "a JSON line that is not an object", line_number)
        yield record


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UnreadableError(path, f"not UTF-8: {exc.reason} at byte {exc.start}", line) from None


def _litdata_records(directory: Path) -> Iterator[dict]:
    from litdata import StreamingDataset

    config = json.loads((directory / "index.json").read_text()).get("config", {})
    formats = config.get("data_format", [])
    if config.get("item_loader") == "TokensLoader" or "str" not in formats:
        raise InherituneError(
            f"the litdata dir {str(directory)!r} holds token ids ({config.get('item_loader')}, {formats}), not text, "
            "so it cannot be re-tokenized; give the raw corpus, or train on it directly with --data LitData"
        )
    dataset = StreamingDataset(str(directory))
    for i in range(len(dataset)):
        item = dataset[i]
        yield item if isinstance(item, dict) else {"text": item}


def read_unit(unit: Unit, columns: tuple[str, ...] | None = None) -> Iterator[dict]:
    """The records of one unit, streamed (one line, batch or archive member in memory, a whole .txt file).

    ``columns`` (top-level field names) lets columnar formats read only what is needed.
    """
    path = unit.path
    try:
        if unit.kind == "txt":
            yield {"text": _decode(path, path.read_bytes())}
        elif unit.kind == "jsonl":
            with path.open("rb") as stream:
                yield from _json_records(path, stream)
        elif unit.kind == "jsonl.zst":
            yield from _json_records(path, io.BufferedReader(_ChunkStream(_zstd_chunks(path)), 1 << 20))
        elif unit.kind == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path)
            names = parquet.schema_arrow.names
            wanted = [c for c in columns if c in names] if columns else None
            for batch in parquet.iter_batches(batch_size=1024, columns=wanted):
                yield from batch.to_pylist()
        elif unit.kind == "arrow":
            import pyarrow as pa

            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_stream(source)
                wanted = [c for c in columns if c in reader.schema.names] if columns else None
                for batch in reader:
                    yield from (batch.select(wanted) if wanted else batch).to_pylist()
        elif unit.kind == "tar":
            import tarfile

            with tarfile.open(path, "r|*") as archive:
                for member in archive:
                    if member.isfile() and member.name.endswith(".txt"):
                        yield {"text": _decode(Path(f"{path}/{member.name}"), archive.extractfile(member).read())}
        elif unit.kind == "litdata":
            yield from _litdata_records(path)
        else:
            raise InherituneError(f"cannot read {path}: unknown kind {unit.kind!r}")
    except InherituneError:
        raise
    except UnicodeDecodeError as exc:
        raise UnreadableError(path, f"not UTF-8: {exc.reason}") from None
    except Exception as exc:  # OSError, pyarrow's ArrowInvalid, tarfile.ReadError, lzma.LZMAError, EOFError ...
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        raise UnreadableError(path, reason) from None


def unit_documents(
    unit: Unit, text_key: str = "text", domain_key: str | None = None, default_domain: str = "all"
) -> Iterator[Document]:
    """The documents of one unit; a record without text is an error that names the field to set."""
    columns = tuple(key.split(".")[0] for key in (text_key, domain_key) if key)
    fallback = unit.domain or default_domain
    for index, record in enumerate(read_unit(unit, columns)):
        text = lookup(record, text_key)
        if not isinstance(text, str):
            raise InherituneError(f"{unit.path}: record {index} has no text under {text_key!r}; set --text_key")
        domain = lookup(record, domain_key) if domain_key else None
        yield Document(unit.source, index, text, str(domain) if domain is not None else fallback)


def iter_documents(
    corpus: Path,
    text_key: str = "text",
    domain_key: str | None = None,
    default_domain: str = "all",
    preset: Preset | None = None,
    split: str | None = None,
) -> Iterator[Document]:
    """Streams the corpus's documents, unit after unit; an unreadable file is an error."""
    for unit in corpus_units(corpus, preset, split):
        yield from unit_documents(unit, text_key, domain_key, default_domain)


def document_key(seed: int, source: str, index: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, source, index)."""
    digest = hashlib.blake2b(f"{seed}\0{source}\0{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class Candidate:
    """A tokenized document that can be chosen (slots: about 190 bytes each, the main memory per document)."""

    key: float
    source: str
    index: int
    n_tokens: int
    domain: str
    spill: int = 0  # where its tokens wait: the number of a spill file and the first token's place in it
    offset: int = 0


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
        raise NotEnoughTokens(
            f"{what} holds {total:,} tokens, fewer than the budget of {budget:,}; lower --tokens or --fraction"
        )
    return chosen


def group_by_domain(candidates: Iterable[Candidate], names: Iterable[str]) -> dict[str, list[Candidate]]:
    """The candidates of each named domain (others dropped); an error names the domains without any."""
    by_domain: dict[str, list[Candidate]] = {name: [] for name in names}
    for candidate in candidates:
        if candidate.domain in by_domain:
            by_domain[candidate.domain].append(candidate)
    empty = sorted(name for name, found in by_domain.items() if not found)
    if empty:
        raise NotEnoughTokens(f"no documents of domain(s) {empty} in the corpus; check the domain names")
    return by_domain


def select_per_domain(candidates: Iterable[Candidate], budgets: dict[str, int]) -> list[Candidate]:
    """``select`` within each domain (stratified sampling); the result is in key order across domains."""
    by_domain = group_by_domain(candidates, budgets)
    chosen = [c for name, found in by_domain.items() for c in select(found, budgets[name], f"domain {name!r}")]
    return sorted(chosen, key=lambda c: (c.key, c.source, c.index))

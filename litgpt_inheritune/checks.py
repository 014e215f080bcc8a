"""Checks made before any expensive work, and text data prepared whole or not at all.

Every check raises ``InherituneError`` with one line that says what to do. Nothing here deletes a user's file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune import patches

DISK_MARGIN = 64 * 2**20  # bytes beyond a written child's size that must be free (configs, tokenizer, logs)


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_out_dir(out_dir: Path, reference_dir: Path | None = None, need_bytes: int = 0) -> None:
    """``out_dir`` can be created and written, is not a file, not inside the reference, and its disk has room for
    ``need_bytes`` plus a margin. Writes nothing that stays (a probe directory is made and removed)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InherituneError(f"--out_dir {str(out_dir)!r} is a file, not a directory; choose another --out_dir")
    if reference_dir is not None:
        ref, out = Path(reference_dir).resolve(), out_dir.resolve()
        if out == ref or ref in out.parents:
            raise InherituneError(f"--out_dir {str(out_dir)!r} is inside the reference dir {str(reference_dir)!r}; "
                                  "choose a directory outside it")
    existing = _nearest_existing(out_dir)
    if not existing.is_dir():
        raise InherituneError(f"--out_dir {str(out_dir)!r} cannot be created: {str(existing)!r} is a file")
    try:
        probe = Path(tempfile.mkdtemp(prefix=".inheritune-probe-", dir=existing))
        probe.rmdir()
    except OSError as exc:
        raise InherituneError(f"--out_dir {str(out_dir)!r} cannot be created in {str(existing)!r} "
                              f"({exc.strerror or exc}); choose a writable directory") from None
    if need_bytes:
        free = shutil.disk_usage(existing).free
        if free < need_bytes + DISK_MARGIN:
            raise InherituneError(
                f"--out_dir {str(out_dir)!r} has {free / 2**20:,.0f} MiB free but the child needs "
                f"{(need_bytes + DISK_MARGIN) / 2**20:,.0f} MiB ({need_bytes / 2**20:,.0f} MiB + a margin); free some "
                "space or choose another --out_dir"
            )


def child_bytes(plan) -> int:
    """The size of the child's weights file: the reference's tensors that the child keeps (same dtypes)."""
    from litgpt_inheritune.inherit import child_config

    child = child_config(plan.config, plan.layers)
    import torch
    from litgpt import GPT

    with torch.device("meta"):
        shapes = GPT(child).state_dict()
    itemsize = next(iter(plan.state_dict.values())).element_size()
    return sum(t.numel() for t in shapes.values()) * itemsize


def _complete_litdata_dir(directory: Path) -> bool:
    """A litdata dir whose ``index.json`` lists chunks that are all there."""
    import json

    try:
        index = json.loads((directory / "index.json").read_text())
        chunks = index["chunks"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(chunks) and all((directory / c["filename"]).is_file() for c in chunks)


def check_text_dir(directory: Path, what: str, prepared: Path | None) -> None:
    """A dir of .txt files that exist, are not all empty and decode as UTF-8 (the first bad file is named); skipped
    when its prepared token dir is already complete."""
    directory = Path(directory)
    if prepared is not None and _complete_litdata_dir(prepared):
        return
    if directory.is_file():
        raise InherituneError(f"{what} {str(directory)!r} is a file; give the directory that holds it (and the other "
                              ".txt files)")
    if not directory.is_dir():
        raise InherituneError(f"{what} {str(directory)!r} does not exist; give a directory of .txt files")
    files = sorted(directory.glob("*.txt"))
    if not files:
        raise InherituneError(f"{what} {str(directory)!r} holds no .txt files; give a directory of .txt files")
    if all(f.stat().st_size == 0 for f in files):
        raise InherituneError(f"every .txt file in {what} {str(directory)!r} is empty")
    for path in files:
        try:
            with open(path, encoding="utf-8") as stream:
                while stream.read(1 << 24):
                    pass
        except UnicodeDecodeError as exc:
            raise InherituneError(f"{str(path)!r} is not UTF-8 text (byte {exc.start}); convert it or remove it "
                                  f"from {what}") from None


def check_data(data) -> None:
    """The data module's sources exist and decode, for the modules this package knows (TextFiles, DomainMixture)."""
    from litgpt.data import TextFiles

    from litgpt_inheritune.data.mixture import DomainMixture

    if isinstance(data, DomainMixture):
        data.check(prepared=True)
    if isinstance(data, TextFiles):
        check_text_dir(data.train_data_path, "--data.train_data_path", Path(data.out_path_train))
        if data.val_data_path is not None:
            check_text_dir(data.val_data_path, "--data.val_data_path", Path(data.out_path_val))
        elif len(list(Path(data.train_data_path).glob("*.txt"))) < 2 and not _complete_litdata_dir(Path(data.out_path_val)):
            raise InherituneError("--data.train_data_path needs at least two .txt files when there is no "
                                  "--data.val_data_path (TextFiles splits one off for validation)")


@contextmanager
def private_litdata_cache() -> Iterator[None]:
    """litdata's ``optimize`` stages chunks in one machine-wide folder unless told otherwise: two preparations at
    once (two users, a test and a demo) would empty each other's. This gives it a folder of its own, removed after."""
    from unittest import mock

    folder = Path(tempfile.mkdtemp(prefix="inheritune-litdata-"))
    try:
        with mock.patch.dict(os.environ, {"DATA_OPTIMIZER_CACHE_FOLDER": str(folder / "chunks"),
                                          "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(folder / "data")}):
            yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


CACHE_ENV = "INHERITUNE_CACHE"


def cache_root() -> Path:
    """Where prepared text lives: ``$INHERITUNE_CACHE``, else ``$XDG_CACHE_HOME/litgpt-inheritune`` (``~/.cache``).
    On several nodes, point ``INHERITUNE_CACHE`` at a shared filesystem."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "litgpt-inheritune"


def locate_text_cache(data) -> Path | None:
    """Points a connected ``TextFiles`` module's token dirs (LitGPT puts them inside the user's text folders) at a
    cache dir named by what they are made of: the text files (path, name, size, time), the tokenizer and the
    sequence length. The user's folders are never written to, and any rank computes the same place. Returns it."""
    import hashlib

    from litgpt.data import TextFiles

    if not isinstance(data, TextFiles):
        return None
    h = hashlib.sha256()
    for directory in (data.train_data_path, data.val_data_path):
        if directory is None:
            h.update(b"no val dir")
            continue
        directory = Path(directory).resolve()
        h.update(str(directory).encode())
        for path in sorted(directory.glob("*.txt")):
            stat = path.stat()
            h.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    tokenizer = data.tokenizer
    if tokenizer is not None:
        probe = "Inheritune caches tokens: 12345 café\n\tdef f(x): return x"
        h.update(f"{tokenizer.vocab_size} {tokenizer.bos_id} {tokenizer.eos_id} {tokenizer.encode(probe).tolist()}".encode())
    h.update(f"seq {data.max_seq_length}".encode())
    cache = cache_root() / "text" / h.hexdigest()[:20]
    data.out_path_train, data.out_path_val = cache / "train", cache / "val"
    return cache


@contextmanager
def text_cache_for(out_dir: Path, num_nodes: int) -> Iterator[None]:
    """While open, a run on several nodes without ``$INHERITUNE_CACHE`` prepares its text beside its out_dir
    (``PARENT/.inheritune-cache``), where every node can read it: the nodes share the run directory's filesystem
    anyway (every rank reads the checkpoint it resumes from), not necessarily ``~/.cache``. Set in the environment,
    so the ranks Lightning's launcher starts inherit it."""
    if num_nodes <= 1 or os.environ.get(CACHE_ENV):
        yield
        return
    from unittest import mock

    with mock.patch.dict(os.environ, {CACHE_ENV: str(Path(out_dir).absolute().parent / ".inheritune-cache")}):
        yield


def prepared_text(data) -> list[str] | None:
    """Where rank 0 prepared a ``TextFiles`` module's tokens (absolute paths), for the other ranks."""
    from litgpt.data import TextFiles

    if not isinstance(data, TextFiles):
        return None
    return [str(Path(data.out_path_train).absolute()), str(Path(data.out_path_val).absolute())]


def use_prepared_text(data, paths: list[str] | None, rank: int) -> None:
    """Points this rank's ``TextFiles`` module at rank 0's one preparation, which it must be able to read: no rank
    ever prepares (writes) it again."""
    if paths is None:
        return
    import socket

    for path in paths:
        if not _complete_litdata_dir(Path(path)):
            raise InherituneError(
                f"rank {rank} on {socket.gethostname()} cannot read the text rank 0 prepared in {path!r}; set "
                f"{CACHE_ENV} to a directory that every node shares"
            )
    data.out_path_train, data.out_path_val = Path(paths[0]), Path(paths[1])


def prepare_text_files(data) -> None:
    """Prepares a connected ``TextFiles`` module's token dirs in the cache (``locate_text_cache``) whole or not at
    all: each is built under a temporary name beside its place and renamed when complete, with a private litdata
    staging folder; an incomplete one left by an earlier crash is rebuilt (LitGPT would reuse it as it is). Other
    data modules are left to LitGPT."""
    import copy

    from litgpt.data import TextFiles

    from litgpt_inheritune.checkpoint import remove_stale_staging, staging_path

    if not isinstance(data, TextFiles):
        return
    locate_text_cache(data)
    Path(data.out_path_train).parent.mkdir(parents=True, exist_ok=True)
    targets = {"out_path_train": Path(data.out_path_train), "out_path_val": Path(data.out_path_val)}
    staged = copy.copy(data)
    renames = []
    for attribute, target in targets.items():
        if _complete_litdata_dir(target):
            continue
        remove_stale_staging(target)
        if target.exists():
            print(f"Rebuilding {str(target)!r}: an earlier preparation did not finish")
            aside = staging_path(target, "old")
            os.replace(target, aside)
            shutil.rmtree(aside, ignore_errors=True)
        tmp = staging_path(target)
        setattr(staged, attribute, tmp)
        renames.append((tmp, target))
    if not renames:
        return
    files = len(list(Path(data.train_data_path).glob("*.txt")))
    print(f"Tokenizing the text of {str(data.train_data_path)!r} ({files} .txt files"
          + (f", and {str(data.val_data_path)!r}" if data.val_data_path is not None else "")
          + f") once, into {str(Path(data.out_path_train).parent)!r}")
    try:
        with private_litdata_cache(), patches.forked_text_preparation(), quiet_stdout():
            staged.prepare_data()  # litdata's progress bar (stderr) stays; its chatter on stdout goes
        for tmp, target in renames:
            try:
                os.replace(tmp, target)
            except OSError:  # another preparation of the same dir finished first
                if not _complete_litdata_dir(target):
                    raise
    finally:
        for tmp, _ in renames:
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_data(data) -> None:
    """A connected data module made ready to load: ``TextFiles`` through ``prepare_text_files`` (LitGPT's own
    ``prepare_data`` would only warn, once per split and call, that the text is already prepared), others by their
    own ``prepare_data``."""
    prepare_text_files(data)
    if prepared_text(data) is None:
        data.prepare_data()


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Standard output of this process and of the processes it starts (litdata's forked workers) goes nowhere while
    open; standard error (progress bars, warnings, errors) is untouched."""
    import contextlib
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            try:
                with contextlib.redirect_stdout(devnull):  # sys.stdout may not be fd 1 (an embedding, a capture)
                    yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def quiet_known_warnings() -> None:
    """Silences warnings known to be harmless here: torch's 'pin_memory ... no accelerator' (LitGPT's loaders ask
    for pinned memory on CPU too), printed once per loader and evaluation, and DTensor's note on random init."""
    import warnings

    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator.*")
    # fsdp2 on CPU: the random init of the sharded model (before the child's weights are loaded over it)
    warnings.filterwarnings("ignore", message=".*DTensor random operators may not have complete support on cpu.*")


def cap_workers(data) -> None:
    """A data module's DataLoader workers, at most the cores this process may use (LitGPT's TextFiles asks for 4);
    said only when the user chose the number (not when it is the data module's default)."""
    import dataclasses

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = getattr(data, "num_workers", None)
    if isinstance(workers, int) and workers > cores:
        defaults = {f.name: f.default for f in dataclasses.fields(data)} if dataclasses.is_dataclass(data) else {}
        if workers != defaults.get("num_workers"):
            print(f"--data.num_workers {workers} is more than this machine's {cores} cores; using {cores}")
        data.num_workers = cores

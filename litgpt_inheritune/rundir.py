"""Run directories under one process or several: which process decides, which writes, which waits.

Every training command (``inheritune``, ``inheritune_grow``, ``inheritune_arms``, ``inheritune_prune``) may run as
several processes: Lightning's subprocess launcher (``--devices N``) starts rank 0 alone and re-executes the whole
command line for ranks 1..N-1 when LitGPT calls ``fabric.launch()``; ``torchrun`` and SLURM's ``srun`` start every
rank at once. The rules, the same for every command:

- Only global rank 0 decides what a run directory holds (fresh, resumed or overwritten), deletes, builds and
  writes files. ``rank_zero_value`` runs such a step on rank 0 and hands its JSON result to the other ranks, which
  wait for it (``INHERITUNE_RANK_TIMEOUT`` seconds, default 7200) instead of looking at the directory themselves:
  a re-executed or late rank joins the run rank 0 started and never refuses it as "interrupted".
- The ranks of one launch share a launch id (``launch_id``), so a rank never takes a record of an earlier launch.
- ``decide`` holds what refuse / ``--resume`` / ``--overwrite`` mean, for every command.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from litgpt_inheritune.errors import InherituneError

LAUNCH_ENV = "INHERITUNE_LAUNCH_ID"  # set by rank 0; Lightning's launcher copies it to the ranks it starts
TIMEOUT_ENV = "INHERITUNE_RANK_TIMEOUT"
RECORDS = ".inheritune-ranks"  # rank 0's decisions and results, one JSON file per step, inside the run dir
_POLL_S = 0.2

Resume = bool | Literal["auto"] | Path


def global_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank as the launcher set it, before or after ``fabric.launch()``.

    ``RANK`` (torchrun, and Lightning once launched), else ``LOCAL_RANK`` with ``NODE_RANK`` / ``GROUP_RANK`` and
    ``LOCAL_WORLD_SIZE`` (Lightning's subprocess launcher; it sets ``LOCAL_RANK`` before ``SLURM_PROCID``, which
    SLURM sets even when it does not manage the processes), else ``SLURM_PROCID`` (srun), else
    ``JSM_NAMESPACE_RANK`` (LSF), else 0: a process nobody launched is rank 0.
    """
    env = os.environ if environ is None else environ
    if env.get("RANK") is not None:
        return int(env["RANK"])
    if env.get("LOCAL_RANK") is not None:
        local = int(env["LOCAL_RANK"])
        node = int(env.get("NODE_RANK") or env.get("GROUP_RANK") or 0)
        per_node = int(env.get("LOCAL_WORLD_SIZE") or 0)
        if node == 0:
            return local
        return node * per_node + local if per_node else node + local  # node > 0: never rank 0
    for key in ("SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if env.get(key) is not None:
            return int(env[key])
    return 0


def is_rank_zero(environ: Mapping[str, str] | None = None) -> bool:
    return global_rank(environ) == 0


def _started_together(env: Mapping[str, str]) -> bool:
    """Every rank was started by an outside launcher at the same time (torchrun, srun), not by rank 0."""
    if env.get("TORCHELASTIC_RUN_ID") is not None:
        return True
    return env.get("LOCAL_RANK") is None and env.get("SLURM_PROCID") is not None and int(env.get("SLURM_NTASKS", "1")) > 1


_launch: str | None = None


def launch_id(environ: dict[str, str] | None = None) -> str:
    """An id that every rank of this launch computes alike and no other launch has.

    torchrun: its run id, master address/port and restart count (with the default run id ``none``, the agent's pid,
    every worker's parent on a node); srun: the job and step id; Lightning's subprocess launcher: a fresh id that
    rank 0 puts in ``INHERITUNE_LAUNCH_ID``, which the launcher copies to the ranks it starts. Another launcher can
    set ``INHERITUNE_LAUNCH_ID`` on every rank itself.
    """
    global _launch
    env = os.environ if environ is None else environ
    if environ is None and _launch is not None:
        return _launch
    if env.get("TORCHELASTIC_RUN_ID") is not None:
        run = env["TORCHELASTIC_RUN_ID"]
        if run in ("", "none"):
            run = f"agent{os.getppid()}@{socket.gethostname()}"
        value = (f"torchrun-{run}-{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}"
                 f"-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}")
    elif _started_together(env):
        value = f"slurm-{env.get('SLURM_JOB_ID')}.{env.get('SLURM_STEP_ID', '0')}"
    elif env.get("RANK") is not None or env.get("LOCAL_RANK") is not None:
        value = env.get(LAUNCH_ENV) or ""
        if not value:
            if not is_rank_zero(env):
                raise InherituneError(
                    f"this process is rank {global_rank(env)} but its launcher is not Lightning's, torchrun or srun; "
                    f"set {LAUNCH_ENV} to one value shared by every rank of the launch"
                )
            value = uuid.uuid4().hex
    else:  # rank 0 before Lightning's launcher starts the others
        value = uuid.uuid4().hex
    env[LAUNCH_ENV] = value  # type: ignore[index]
    if environ is None:
        _launch = value
    return value


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, "7200"))
    except ValueError:
        raise InherituneError(f"{TIMEOUT_ENV} must be a number of seconds, got {os.environ[TIMEOUT_ENV]!r}") from None


def _write_record(path: Path, record: dict) -> None:
    from litgpt_inheritune.checkpoint import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet (a record is renamed into place whole)
        return None


def rank_zero_value(directory: Path, key: str, compute: Callable[[], Any], what: str | None = None) -> Any:
    """Global rank 0 runs ``compute`` (the only place files are decided, deleted or written) and records its
    JSON-able result in ``directory``; every other rank waits for that record of this launch and returns it.

    An ``InherituneError`` on rank 0 reaches the others as the same one-line error (where they are waiting).
    """
    directory = Path(directory)
    path = directory / RECORDS / f"{key}.json"
    launch = launch_id()
    if is_rank_zero():
        try:
            value = compute()
        except InherituneError as exc:
            if _started_together(os.environ):  # the other ranks are already waiting: tell them
                try:
                    _write_record(path, {"launch": launch, "error": str(exc)})
                except OSError:
                    pass
            raise
        _write_record(Path(directory) / RECORDS / f"{key}.json", {"launch": launch, "value": value})
        return value
    return wait_for_rank_zero(path, launch, what or key)


def wait_for_rank_zero(path: Path, launch: str, what: str) -> Any:
    timeout = _timeout()
    parent = os.getppid()
    deadline = time.monotonic() + timeout
    while True:
        record = _read_record(path)
        if record is not None and record.get("launch") == launch:
            if "error" in record:
                raise InherituneError(f"rank 0 stopped: {record['error']}")
            return record["value"]
        if os.getppid() != parent:  # Lightning's launcher: rank 0 is our parent, and it is gone
            raise InherituneError(f"rank 0 exited before it finished {what}; see its output")
        if time.monotonic() > deadline:
            raise InherituneError(
                f"rank {global_rank()} waited {timeout:.0f} s for rank 0 to finish {what} ({str(path)!r}); see rank 0's "
                f"output, or set {TIMEOUT_ENV} to wait longer"
            )
        time.sleep(_POLL_S)


def decide(
    out_dir: Path,
    started: bool,
    finished: bool,
    resume: Resume,
    overwrite: bool,
    what: str = "run",
) -> Literal["fresh", "resume", "overwrite"]:
    """What to do with ``out_dir``; the same rules for every command. Reads nothing but the flags; deletes nothing.

    - a file at ``out_dir`` is never replaced, with or without ``--overwrite``;
    - ``--resume`` and ``--overwrite`` together are refused;
    - ``--resume true`` (or a checkpoint path) needs a started run; ``--resume auto`` continues one if there is one;
    - a started or finished run is otherwise refused, naming both ways on;
    - ``--overwrite true`` starts again ("overwrite": rank 0 deletes the old run first).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InherituneError(f"--out_dir {str(out_dir)!r} is a file, not a directory; choose another --out_dir")
    if overwrite and resume not in (False, "auto"):
        raise InherituneError("--resume and --overwrite contradict each other; give one of them")
    if resume is True and not started:
        raise InherituneError(f"--resume true but {str(out_dir)!r} holds no {what} to resume; drop --resume")
    if overwrite:
        return "overwrite" if out_dir.exists() else "fresh"
    if isinstance(resume, Path) or (resume and started):
        return "resume"
    if started or finished:
        state = "a finished" if finished else "an interrupted"
        raise InherituneError(
            f"{str(out_dir)!r} holds {state} {what}; pass --resume true to continue it, --overwrite true to start "
            "again, or choose another --out_dir"
        )
    return "fresh"


def remove_run(out_dir: Path) -> None:
    """Deletes a run directory (rank 0, after ``decide`` said "overwrite"): renamed aside first, so an interruption
    never leaves half of it under its own name."""
    import shutil

    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    from litgpt_inheritune.checkpoint import remove_stale_staging, staging_path

    remove_stale_staging(out_dir)
    aside = staging_path(out_dir, "old")
    os.replace(out_dir, aside)
    shutil.rmtree(aside, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Writes ``text`` through a temporary name in the same directory (global rank 0 only; a no-op elsewhere)."""
    if not is_rank_zero():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def other_rank_skips(command: str) -> bool:
    """For the one-process commands (inheritune_init, _width, _analyze, _data): under a launcher, ranks other than
    0 do nothing (rank 0 alone writes ``out_dir``) instead of building the same files at once."""
    if is_rank_zero():
        return False
    print(f"rank {global_rank()}: `litgpt {command}` runs in one process; global rank 0 writes its output")
    return True

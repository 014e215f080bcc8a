"""Run directories under one process or several: launch first, then agree through the process group.

Every training command (``inheritune``, ``inheritune_grow``, ``inheritune_arms``, ``inheritune_prune``) does what
LitGPT's own ``pretrain.setup`` does: build a Fabric, ``fabric.launch()``, then work. Launching first gives each
process its true global rank from Lightning's cluster environments (its own launcher, torchrun, SLURM, LSF, MPI) and
a process group to agree through. The rules, the same for every command:

- ``launch`` checks the launcher's world against ``--devices x --num_nodes`` (one line before any work), builds the
  Fabric and launches it. The process group's timeout is ``INHERITUNE_RANK_TIMEOUT`` seconds (default 7200): the
  longest rank 0 may prepare (tokenize text, build the child) while the others wait.
- Only global rank 0 decides what a run directory holds (fresh, resumed or overwritten), deletes, builds and writes
  files: ``agree`` runs such a step on rank 0 and broadcasts its result (or its one-line error) to every rank.
- One writer per run directory: rank 0 holds a ``Claim`` on it while the run lives (a kernel lock, released when
  the process ends, even by ``kill -9``); a second run into a live directory stops in one line naming the first.
- A rank whose peers are gone (killed, or stopped by an error) ends in one line (``peers``), not a traceback.
- ``decide`` holds what refuse / ``--resume`` / ``--overwrite`` mean, for every command.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

from litgpt_inheritune.errors import InherituneError

TIMEOUT_ENV = "INHERITUNE_RANK_TIMEOUT"
DEFAULT_TIMEOUT_S = 7200.0

Resume = bool | Literal["auto"] | Path


def timeout_s() -> float:
    """The process group's timeout: how long any rank waits in a collective (rank 0's preparation included)."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise InherituneError(f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise InherituneError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {value!r}")
    return seconds


def global_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank: the process group's once one exists; before that (the one-process commands,
    which never launch) what the launcher's environment says: ``RANK`` (torchrun), ``LOCAL_RANK`` with ``NODE_RANK``
    and ``LOCAL_WORLD_SIZE`` (Lightning's launcher), ``SLURM_PROCID`` (srun), ``JSM_NAMESPACE_RANK`` (LSF), else 0."""
    if environ is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
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


def launcher_world() -> tuple[str, int] | None:
    """(launcher, world size) when an outside launcher started this process, found the way Fabric finds its cluster
    environment (torchrun first, then SLURM, LSF, MPI); None for a plain process or Lightning's own launcher."""
    from lightning.fabric.plugins.environments import (LSFEnvironment, MPIEnvironment, SLURMEnvironment,
                                                       TorchElasticEnvironment)

    for name, environment in (("torchrun", TorchElasticEnvironment), ("SLURM", SLURMEnvironment),
                              ("LSF", LSFEnvironment), ("MPI", MPIEnvironment)):
        try:
            detected = environment.detect()
        except Exception:  # an environment that cannot even look (e.g. MPI without mpi4py) is not this one
            continue
        if detected:
            try:
                return name, int(environment().world_size())
            except Exception as exc:  # e.g. SLURM's --ntasks without --ntasks-per-node
                raise InherituneError(f"{name}: {' '.join(str(exc).split())}") from None
    return None


def requested_devices(devices: int | str) -> int:
    from litgpt.utils import parse_devices

    try:
        return parse_devices(devices)
    except Exception as exc:  # LitGPT's parser rejects e.g. a device list string
        raise InherituneError(f"--devices {devices!r}: {exc}") from None


def check_world(devices: int | str, num_nodes: int) -> int:
    """The world this command asks for (``--devices x --num_nodes``), checked against the processes an outside
    launcher started; a mismatch is one line before any work. Returns the devices per node."""
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise InherituneError(f"--num_nodes must be a positive number, got {num_nodes!r}")
    per_node = requested_devices(devices)
    found = launcher_world()
    if found is not None and found[1] != per_node * num_nodes:
        launcher, world = found
        hint = (f"--devices {world // num_nodes} --num_nodes {num_nodes}" if world % num_nodes == 0
                else f"--devices and --num_nodes whose product is {world}")
        raise InherituneError(
            f"{launcher} started {world} processes but --devices {devices} x --num_nodes {num_nodes} asks for "
            f"{per_node * num_nodes}; pass {hint}, or start {per_node * num_nodes} "
            f"process{'es' if per_node * num_nodes > 1 else ''}"
        )
    return per_node


def launch(devices: int | str, num_nodes: int, strategy: str, precision: str | None, loggers: list | None = None):
    """Checks the world, builds the Fabric as LitGPT's ``pretrain.setup`` does (strategy from ``--strategy``,
    precision, loggers) and launches it. Under Lightning's own launcher, rank 0 starts ranks 1..N here (they run
    the command line again, up to this point). Returns the launched Fabric."""
    import lightning as L
    import torch

    from litgpt_inheritune import strategy as strategies

    per_node = check_world(devices, num_nodes)
    resolved = strategies.resolve(strategy, per_node, num_nodes)
    fabric = L.Fabric(devices=per_node, num_nodes=num_nodes, precision=precision, loggers=loggers,
                      strategy=strategies.fabric_strategy(resolved, timeout_s(), per_node * num_nodes))
    if torch.cuda.is_available() and per_node > 1:
        from litgpt.utils import check_nvlink_connectivity

        check_nvlink_connectivity(fabric)
    try:
        fabric.launch()
    except ValueError as exc:  # Lightning's own check of a cluster environment against the flags
        raise InherituneError(" ".join(str(exc).split())) from None
    except Exception as exc:  # the rendezvous: not every process joined in time
        if not peer_failure(exc) and "DistStoreError" not in type(exc).__name__:
            raise
        raise InherituneError(
            f"not every process joined within {timeout_s():.0f} s ({' '.join(str(exc).split())[:200]}); start the same "
            f"command on every node with the same MASTER_ADDR and MASTER_PORT, or set {TIMEOUT_ENV} to wait longer"
        ) from None
    return fabric


def peer_failure(exc: BaseException) -> bool:
    """The error of a collective whose peers are gone (killed, or ended by an error) or never answered."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)  # gloo's words for a peer that is gone or silent (not any error that names gloo: a bug stays one)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out", "timed out",
        "Socket Timeout", "Connection refused"))


def _timed_out(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def peers_lost(fabric, exc: BaseException, waiting_for: str | None = None) -> InherituneError:
    """The one line a rank ends with when a collective failed: a timeout while rank 0 prepares names the knob."""
    rank = fabric.global_rank
    if waiting_for is not None and _timed_out(exc):
        return InherituneError(
            f"rank {rank} waited {timeout_s():.0f} s for rank 0 to finish {waiting_for}; see rank 0's output, or set "
            f"{TIMEOUT_ENV} to a longer time in seconds"
        )
    return InherituneError(f"rank {rank} lost its peers (another rank ended or was killed; see its output)")


@contextmanager
def one_line_peer_errors(fabric) -> Iterator[None]:
    """While open, a failed collective on a multi-process run ends this rank with one line instead of a traceback."""
    try:
        yield
    except InherituneError:
        raise
    except Exception as exc:
        if fabric.world_size > 1 and peer_failure(exc):
            raise peers_lost(fabric, exc) from None
        raise


def agree(fabric, compute: Callable[[], Any], what: str) -> Any:
    """Global rank 0 runs ``compute`` (the only place files are decided, deleted or written); every rank returns its
    result, broadcast through the process group. An ``InherituneError`` on rank 0 ends every rank with its line
    (``rank 0 stopped: ...`` on the others); any other error on rank 0 is raised there after telling the others."""
    if fabric.world_size == 1:
        return compute()
    message = None
    if fabric.global_rank == 0:
        try:
            message = {"value": compute()}
        except InherituneError as exc:
            message = {"error": str(exc)}
        except BaseException as exc:
            _broadcast(fabric, {"error": f"rank 0 failed while {what} ({type(exc).__name__}: {exc}); see its output"},
                       what)
            raise
    message = _broadcast(fabric, message, what)
    if "error" in message:
        raise InherituneError(message["error"] if fabric.global_rank == 0 else f"rank 0 stopped: {message['error']}")
    return message["value"]


def _broadcast(fabric, message: Any, what: str) -> Any:
    try:
        return fabric.broadcast(message, src=0)
    except Exception as exc:
        if peer_failure(exc):
            raise peers_lost(fabric, exc, waiting_for=what if fabric.global_rank else None) from None
        raise


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
    """Writes ``text`` through a temporary name in the same directory (by global rank 0, the one writer)."""
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


CLAIM_SUFFIX = "inheritune-claim"


def claim_path(out_dir: Path) -> Path:
    """The claim of ``out_dir``: a hidden sibling (``.NAME.inheritune-claim``), so that removing or replacing the
    run directory (``--overwrite``) never drops the claim of the run that does it."""
    out_dir = Path(out_dir).absolute()
    return out_dir.with_name(f".{out_dir.name}.{CLAIM_SUFFIX}")


class Claim:
    """Exclusive use of a run directory by one live run: an advisory kernel lock (``flock``) on ``claim_path``,
    held by global rank 0 from before its decision about the directory until the command ends. The kernel releases
    it when the process ends in any way (``kill -9`` too), so a killed run's claim is simply taken over; the file
    names its holder (host, pid, start, command) for the message a second run gets. On a shared filesystem the lock
    is the filesystem's (NFS maps it to its lock manager); where locks are not supported one writer is not enforced,
    with a warning. Released (and its file removed) by ``release`` or the end of a ``with`` block."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = claim_path(self.out_dir)
        self._fd: int | None = None
        self._made: list[Path] = []

    def take(self) -> "Claim":
        import fcntl
        import sys

        from litgpt_inheritune.errors import disk_error

        from litgpt_inheritune.checks import check_out_dir

        if self._fd is not None:
            return self
        check_out_dir(self.out_dir)  # a file in the way, or no permission: its one line, before anything is made
        missing = [p for p in [self.path.parent, *self.path.parent.parents] if not p.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, self.out_dir, "creating") from None
        self._made = missing  # removed again by release when the run left them empty
        for _ in range(10):  # the holder may remove the file between our open and our lock: take the new one
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise disk_error(exc, self.path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise InherituneError(
                        f"{str(self.out_dir)!r} is in use by a live run ({holder}); two runs cannot write one "
                        "out_dir: wait for it to end or stop it, or choose another --out_dir"
                    ) from None
                print(f"warning: cannot lock {str(self.path)!r} ({exc.strerror}); nothing stops a second run from "
                      "writing this out_dir at the same time", file=sys.stderr)
                return self
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise InherituneError(f"could not claim {str(self.out_dir)!r}: its claim file keeps changing; retry")
        earlier = _read_holder(fd, default="")
        if earlier:  # a file left by a run that ended without releasing it (kill -9): its lock is gone
            print(f"Taking over {str(self.out_dir)!r} from a run that ended without releasing it ({earlier})")
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                  "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:3])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a waiting run then locks a new file
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
        for directory in self._made:  # deepest first; a run that wrote anything leaves them
            try:
                directory.rmdir()
            except OSError:
                break

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _read_holder(fd: int, default: str = "another process") -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        return default
    if not isinstance(record, dict):
        return default
    return (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}: "
            f"{record.get('command', '?')}")


def world_of_checkpoint(checkpoint_dir: Path) -> int | None:
    """How many processes trained a step checkpoint of ``litgpt inheritune`` (its hyperparameters.yaml records the
    devices per node and the nodes); None when it does not say."""
    import yaml

    try:
        hp = yaml.safe_load((Path(checkpoint_dir) / "hyperparameters.yaml").read_text())
        devices, nodes = hp.get("devices"), hp.get("num_nodes", 1)
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    if isinstance(devices, int) and isinstance(nodes, int) and devices > 0 and nodes > 0:
        return devices * nodes
    return None


def check_same_world(checkpoint_dir: Path, world_size: int) -> None:
    """A run is resumed by as many processes as trained it: LitGPT's loop counts its token budget, its learning-rate
    schedule and each process's place in the data per process, so another world size would train another amount
    (a 2-process run resumed by 1 process trained 25% more tokens than asked) on another schedule."""
    before = world_of_checkpoint(checkpoint_dir)
    if before is not None and before != world_size:
        raise InherituneError(
            f"{str(checkpoint_dir)!r} was trained by {before} processes and this launch has {world_size}; resume with "
            f"--devices x --num_nodes = {before} (the token budget, learning-rate schedule and data order are per "
            "process), or pass --overwrite true to start again"
        )

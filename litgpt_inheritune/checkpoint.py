"""Reading a reference checkpoint lazily, checking it, and writing a child checkpoint atomically."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator, Mapping

from litgpt_inheritune.errors import InherituneError, disk_error

# Files of a LitGPT checkpoint dir that travel with the weights (LitGPT's own list, plus HF's tokenizer extras).
CONFIG_FILES = ("generation_config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
# HF config keys that hold the number of blocks, by model family.
_DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# HF config keys that hold one entry per block.
_PER_LAYER_KEYS = ("layer_types", "sliding_window_pattern_list", "no_rope_layers")


def load_reference_config(reference_dir: Path):
    """The reference's LitGPT ``Config``, after checking the directory holds a LitGPT checkpoint."""
    from litgpt import Config

    reference_dir = Path(reference_dir)
    if not reference_dir.is_dir():
        raise InherituneError(f"reference dir {str(reference_dir)!r} does not exist; {download_hint(reference_dir)}")
    for name in ("lit_model.pth", "model_config.yaml"):
        if not (reference_dir / name).is_file():
            raise InherituneError(
                f"reference dir {str(reference_dir)!r} has no {name}; point it at a LitGPT checkpoint dir "
                "(convert HF weights with litgpt convert_to_litgpt)"
            )
    try:
        return Config.from_file(reference_dir / "model_config.yaml")
    except Exception as exc:  # a broken YAML or an unknown key
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        cause = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise InherituneError(f"cannot read {str(reference_dir / 'model_config.yaml')!r}{where}: {cause}; fix the file "
                              "or convert the checkpoint again") from None


GATED = ("meta-llama", "google", "mistralai")  # hub organisations whose models need an accepted licence and a token


def download_hint(reference_dir: Path) -> str:
    """The command that fetches a reference: ``litgpt download ORG/NAME`` for LitGPT's ``checkpoints/ORG/NAME``
    layout (with the access token gated models need), else how to convert one."""
    parts = Path(reference_dir).parts
    if len(parts) >= 3 and parts[-3] == "checkpoints":
        repo = f"{parts[-2]}/{parts[-1]}"
        root = Path(*parts[:-3]) if len(parts) > 3 else None
        command = f"litgpt download {repo}" + ("" if root is None else f" --checkpoint_dir {root / 'checkpoints'}")
        if parts[-2] in GATED:
            command += " --access_token $HF_TOKEN (a gated model: accept its licence on the hub first)"
        return f"fetch it with: {command}"
    return "download a model (litgpt download ORG/NAME) or convert one (litgpt convert_to_litgpt DIR) there"


def load_state_dict_lazily(path: Path) -> Mapping:
    """The reference's weights, memory-mapped: tensors are read from disk only when used."""
    import torch

    try:
        state_dict = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise InherituneError(f"cannot read weights from {str(path)!r}: {exc}") from None
    if isinstance(state_dict.get("model"), dict):  # a `litgpt pretrain` checkpoint holds the model under "model"
        state_dict = state_dict["model"]
    return state_dict


def check_weights_match_config(config, state_dict: Mapping, where: Path) -> None:
    """Raises when the weights' names or shapes differ from what ``config`` builds (checked on the meta device)."""
    import torch
    from litgpt import GPT

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or extra or wrong:
        detail = (
            f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else
            f"{wrong[0]} has shape {found[wrong[0]]} but the config needs {expected[wrong[0]]}"
        )
        raise InherituneError(
            f"the weights in {str(where)!r} do not match its model_config.yaml ({detail}); "
            "reconvert the checkpoint or fix the config"
        )


def check_tokenizer(tokenizer_dir: Path, reference_dir: Path, config) -> None:
    """Raises when ``tokenizer_dir`` cannot be the reference's tokenizer."""
    from litgpt import Tokenizer

    tokenizer_dir = Path(tokenizer_dir)
    try:
        tokenizer = Tokenizer(tokenizer_dir)
    except Exception as exc:
        raise InherituneError(f"cannot load a tokenizer from {str(tokenizer_dir)!r}: {exc}") from None
    if tokenizer.vocab_size > config.padded_vocab_size:
        raise InherituneError(
            f"the tokenizer in {str(tokenizer_dir)!r} has {tokenizer.vocab_size} tokens but the reference embeds "
            f"only {config.padded_vocab_size}; use the reference's own tokenizer (drop --tokenizer_dir)"
        )
    if Path(reference_dir).resolve() == tokenizer_dir.resolve() or not has_tokenizer(reference_dir):
        return
    own = Tokenizer(reference_dir)
    probe = "Inheritune checks tokenizers: 12345 café\n\tdef f(x): return x"
    if own.vocab_size != tokenizer.vocab_size or own.encode(probe).tolist() != tokenizer.encode(probe).tolist():
        raise InherituneError(
            f"the tokenizer in {str(tokenizer_dir)!r} does not match the reference's vocabulary "
            f"({tokenizer.vocab_size} vs {own.vocab_size} tokens, or different ids); drop --tokenizer_dir"
        )


def has_tokenizer(directory: Path) -> bool:
    return any((Path(directory) / name).is_file() for name in ("tokenizer.json", "tokenizer.model"))


def child_hf_config(reference_dir: Path, layers: list[int]) -> dict | None:
    """The reference's HF ``config.json`` rewritten for the child's depth (None if the reference has none)."""
    path = Path(reference_dir) / "config.json"
    if not path.is_file():
        return None
    hf = json.loads(path.read_text())
    depth = None
    for key in _DEPTH_KEYS:
        if isinstance(hf.get(key), int):
            depth = hf[key]
            hf[key] = len(layers)
    for key in _PER_LAYER_KEYS:
        value = hf.get(key)
        if isinstance(value, list) and depth is not None and len(value) == depth:
            hf[key] = [value[i] for i in layers]
    return hf


def staging_path(target: Path, kind: str = "tmp") -> Path:
    """A hidden sibling of ``target`` that names its owner: ``.NAME.KIND-HOST-PID-RANDOM``."""
    target = Path(target)
    return target.with_name(f".{target.name}.{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


def _owner_gone(host: str, pid: str) -> bool:
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's: it may still be at work
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_staging(target: Path) -> list[Path]:
    """Removes the staging siblings of ``target`` (``staging_path``) whose owning process on this host is gone,
    e.g. after a kill -9. Returns what was removed."""
    import glob as globbing

    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    prefix = f".{target.name}."
    for sibling in target.parent.glob(globbing.escape(prefix) + "*-*-*"):
        kind_host, _, rest = sibling.name[len(prefix):].partition("-")
        host_pid, _, _random = rest.rpartition("-")
        host, _, pid = host_pid.rpartition("-")
        if kind_host not in ("tmp", "old") or not _owner_gone(host, pid):
            continue
        shutil.rmtree(sibling, ignore_errors=True) if sibling.is_dir() else sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


@contextmanager
def atomic_dir(out_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary sibling of ``out_dir`` to write into; renames it to ``out_dir`` only on success.

    An existing ``out_dir`` is replaced only with ``overwrite`` and only after the new one is complete; a file at
    ``out_dir`` is never replaced. Staging left by killed runs of this host is removed first; a full disk or a
    permission error becomes one line naming the path.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InherituneError(f"--out_dir {str(out_dir)!r} is a file, not a directory; choose another --out_dir")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out_dir)
        tmp = staging_path(out_dir)
        tmp.mkdir()
    except OSError as exc:
        raise disk_error(exc, out_dir, "creating") from None
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(exc, out_dir) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InherituneError(f"{str(out_dir)!r} appeared while writing it: another run is writing there; let it "
                                  "finish, or choose another --out_dir")
    replace_dir(tmp, out_dir)


def replace_dir(staging: Path, target: Path) -> None:
    """Puts a complete ``staging`` dir at ``target``: an existing one is renamed aside first and deleted after, so a
    kill leaves either the old or the new dir whole (and the old one aside at worst, named by ``staging_path``)."""
    if target.exists():
        old = staging_path(target, "old")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def write_checkpoint(
    directory: Path, config, state_dict: Mapping, reference_dir: Path, layers: list[int], widths: bool = False
) -> None:
    """Writes lit_model.pth, model_config.yaml, the child's config.json and the tokenizer files into ``directory``.

    ``widths``: the child's widths differ from the reference's too, so config.json gets its sizes as well.
    """
    import torch
    from litgpt.utils import save_config

    directory = Path(directory)
    save_weights(dict(state_dict), directory / "lit_model.pth")
    save_config(config, directory)
    save_base_prompt_style(directory)
    hf = child_hf_config(reference_dir, layers)
    if widths:
        from litgpt_inheritune.pruning.shapes import shaped_hf_config

        hf = shaped_hf_config(hf, config)
    if hf is not None:
        (directory / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    for name in CONFIG_FILES + TOKENIZER_FILES:
        src = Path(reference_dir) / name
        if src.is_file():
            shutil.copy(src, directory / name)


def write_json(path: Path, value) -> None:
    """Writes ``value`` as JSON to ``path`` through a temporary file, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def step_of(path: Path) -> int:
    """The step of a ``step-NNNNNNNN/lit_model.pth`` checkpoint."""
    return int(Path(path).parent.name.split("-")[1])


def is_complete_checkpoint(path: Path) -> bool:
    """A torch checkpoint file that opens whole: its zip directory, written last, is there (a file cut short by a
    full disk or a kill is not)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def newest_complete_checkpoint(out_dir: Path) -> tuple[Path | None, list[Path]]:
    """The newest ``step-*/lit_model.pth`` in ``out_dir`` that is complete, and the newer ones skipped."""
    steps = sorted(Path(out_dir).glob("step-*/lit_model.pth"), key=step_of, reverse=True)
    skipped = []
    for path in steps:
        if is_complete_checkpoint(path):
            return path, skipped
        skipped.append(path)
    return None, skipped


@contextmanager
def staged_in(directory: Path) -> Iterator[None]:
    """While open, temporary files (Lightning's ``fabric.save`` stages through fsspec in the temporary directory,
    then moves) are made in ``directory``: the move is a rename on one filesystem, never a copy cut short."""
    import tempfile

    staging, tempfile.tempdir = tempfile.tempdir, str(directory)
    try:
        yield
    finally:
        tempfile.tempdir = staging


class _SaveTo:
    """A Fabric whose ``save`` writes to ``path`` whatever path it is given (everything else is the Fabric's)."""

    def __init__(self, fabric, path: Path) -> None:
        self._fabric, self._path = fabric, path

    def save(self, _path, state, *args, **kwargs):
        return self._fabric.save(self._path, state, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._fabric, name)


@contextmanager
def safe_saves(pretrain_module) -> Iterator[None]:
    """While open, `litgpt pretrain`'s ``save_checkpoint`` writes each checkpoint under a temporary name in its own
    directory and renames it into place when complete. Lightning stages the file in the temporary directory and
    moves it, a copy when that is another filesystem (a full disk then leaves half a checkpoint under the real
    name); here it stages beside the checkpoint. On an error the partial file, the staging file and a step dir made
    for it are removed, and the error becomes one line."""
    plain = pretrain_module.save_checkpoint

    def save_checkpoint(fabric, state, tokenizer_dir, checkpoint_file):
        checkpoint_file = Path(checkpoint_file)
        directory = checkpoint_file.parent
        new_dir = not directory.exists()
        if fabric.world_size > 1:  # rank 0's view, taken before any rank makes the dir (LitGPT's save makes it on all)
            new_dir = fabric.broadcast(new_dir, src=0)
        directory.mkdir(parents=True, exist_ok=True)
        before = set(os.listdir(directory))
        partial = directory / f".{checkpoint_file.name}.partial"
        try:
            with staged_in(directory):
                plain(_SaveTo(fabric, partial), state, tokenizer_dir, checkpoint_file)
            if fabric.global_rank == 0:
                if tokenizer_dir is not None and (Path(tokenizer_dir) / PROMPT_STYLE).is_file():
                    shutil.copy(Path(tokenizer_dir) / PROMPT_STYLE, directory / PROMPT_STYLE)
                if directory.name == FINAL:  # what users take on: the weights alone (runs resume from step-*)
                    keep_weights_only(partial)
                with open(partial, "rb") as stream:
                    os.fsync(stream.fileno())
                os.replace(partial, checkpoint_file)
                if directory.name == FINAL:
                    write_json(directory / FINAL_RECORD, {"step": int(state["step_count"]), "iter": int(state["iter_num"])})
        except OSError as exc:
            for name in set(os.listdir(directory)) - before:
                leftover = directory / name
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            if new_dir and not any(directory.iterdir()):
                directory.rmdir()
            raise disk_error(exc, checkpoint_file) from None
        fabric.barrier()

    from litgpt_inheritune import patches

    with patches.patched("pretrain.save_checkpoint", save_checkpoint):
        yield


LIGHTNING_STAGING = re.compile(r"tmp[a-z0-9_]{8}")  # fsspec's mkstemp name for a file Lightning is saving


def remove_save_debris(out_dir: Path) -> list[Path]:
    """Removes what a killed or failed save left in ``out_dir``'s checkpoint dirs (``step-*/``, ``final/``): Lightning's
    staging files (``tmpXXXXXXXX``, made in the checkpoint's dir while it is written), ``safe_saves``' ``.partial``
    files and checkpoint dirs left empty. Only for the holder of the run's claim (no live writer). Returns what it
    removed."""
    removed = []
    for directory in sorted([*Path(out_dir).glob("step-*"), Path(out_dir) / "final"]):
        if not directory.is_dir() or directory.is_symlink():
            continue
        for path in directory.iterdir():
            if path.is_file() and (LIGHTNING_STAGING.fullmatch(path.name) or path.name.endswith(".partial")):
                path.unlink()
                removed.append(path)
        if not any(directory.iterdir()):
            directory.rmdir()
            removed.append(directory)
    return removed


FINAL = "final"  # out_dir/final: the trained child, as bare weights like every LitGPT checkpoint users are given
FINAL_RECORD = "final.json"  # {"step", "iter"} inside it: how far the run had trained (its training state is not kept)


def keep_weights_only(path: Path) -> None:
    """Rewrites a checkpoint of LitGPT's training state (``{"model": ..., "optimizer": ..., "iter_num": ...}``) in
    place as the model's weights alone: the format of the checkpoints `litgpt download`, `convert_to_litgpt` and
    `convert_pretrained_checkpoint` write, which every LitGPT command reads (`merge_lora` reads nothing else). Staged
    beside ``path`` under a ``.partial`` name and renamed over it."""
    import torch

    path = Path(path)
    state = torch.load(path, mmap=True, weights_only=False, map_location="cpu")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        return
    weights = path.with_name(f".{path.name}.weights-{os.getpid()}.partial")
    try:
        save_weights(state["model"], weights)
        os.replace(weights, path)
    finally:
        weights.unlink(missing_ok=True)


def save_weights(state_dict: dict, path: Path) -> None:
    """``torch.save``, whose failure on a full disk ("unexpected pos ...") becomes an ``OSError`` with ENOSPC."""
    import errno

    import torch

    try:
        torch.save(state_dict, path)
    except RuntimeError as exc:
        if "unexpected pos" not in str(exc) and "PytorchStreamWriter" not in str(exc):
            raise
        free = shutil.disk_usage(Path(path).parent).free
        code = errno.ENOSPC if free < 2**20 else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None


PROMPT_STYLE = "prompt_style.yaml"


def save_base_prompt_style(directory: Path) -> None:
    """Children are base models: LitGPT's plain prompt style, not the chat template LitGPT would pick from the
    reference's name (``litgpt generate`` on a child of an instruct model would otherwise wrap every prompt in it).
    Edit ``prompt_style.yaml`` to choose another."""
    from litgpt.prompts import Default, save_prompt_style

    save_prompt_style(Default(), Path(directory))


# ---------------------------------------------------------------------------------------------- out_dir/best

BEST = "best"  # out_dir/best: the lowest-validation step of a `litgpt inheritune` run
BEST_RECORD = "best.json"  # {"step", "iter", "tokens", "val_loss"} inside it


def recover_best(out_dir: Path) -> Path | None:
    """Global rank 0, before anything removes staging: puts back a whole ``best/`` that a kill left renamed aside
    (``save_best`` renames the old one aside, then the new one in). Returns it, or None."""
    best = Path(out_dir) / BEST
    if best.exists():
        return None
    for aside in sorted(best.parent.glob(f".{BEST}.old-*")):
        if (aside / BEST_RECORD).is_file() and is_complete_checkpoint(aside / "lit_model.pth"):
            os.replace(aside, best)
            return best
    return None


def read_best(out_dir: Path) -> dict | None:
    """The record of ``out_dir/best`` when it holds a complete checkpoint, else None."""
    best = Path(out_dir) / BEST
    if not (best / BEST_RECORD).is_file() or not is_complete_checkpoint(best / "lit_model.pth"):
        return None
    return json.loads((best / BEST_RECORD).read_text())


def save_best(fabric, model, best_dir: Path, record: dict, tokenizer_dir: Path, write_hyperparameters) -> None:
    """Writes the model as a complete LitGPT checkpoint into ``best_dir`` (lit_model.pth with its weights alone,
    model_config.yaml, the tokenizer and config files, hyperparameters.yaml via ``write_hyperparameters(dir)``, and
    ``record`` as best.json), staged beside it and renamed whole over the old one. Every process calls it (a
    sharded model is gathered); only global rank 0 writes."""
    from litgpt.utils import copy_config_files, save_config

    best_dir = Path(best_dir)
    rank_zero = fabric.global_rank == 0
    staging = staging_path(best_dir)
    try:
        if rank_zero:
            remove_stale_staging(best_dir)
            staging.mkdir(parents=True)
        with staged_in(staging) if rank_zero else nullcontext():
            fabric.save(staging / "lit_model.pth", {"model": model})
        if rank_zero:
            keep_weights_only(staging / "lit_model.pth")
            copy_config_files(tokenizer_dir, staging)
            if (Path(tokenizer_dir) / PROMPT_STYLE).is_file():
                shutil.copy(Path(tokenizer_dir) / PROMPT_STYLE, staging / PROMPT_STYLE)
            save_config(model.config, staging)
            write_hyperparameters(staging)
            write_json(staging / BEST_RECORD, record)
            with open(staging / "lit_model.pth", "rb") as stream:
                os.fsync(stream.fileno())
            replace_dir(staging, best_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise disk_error(exc, best_dir) from None
    fabric.barrier()

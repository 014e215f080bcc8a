"""Every place this package changes another project's code, in one list: the upgrade checklist.

Each patch names what it replaces (module and attribute), the upstream versions it was written against (the pins in
pyproject.toml), the parameters it relies on, and why it exists. ``patched(name, new)`` checks the target before
replacing it for the duration of a ``with`` block (``unittest.mock.patch``, so it is always undone), and a target
that moved or changed its signature stops the command with one line naming the patch. ``check_all()`` checks every
patch at once (tests/test_patches.py runs it, so an upgrade of LitGPT fails there loudly, patch by patch).

Nothing else in the package assigns to an attribute of litgpt, litdata, lm_eval or torch (a test greps for it).
This module imports nothing heavy at import time: the start-up hook (``_hook``) uses it too.
"""

from __future__ import annotations

import importlib
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from litgpt_inheritune.errors import InherituneError


@dataclass(frozen=True)
class Patch:
    module: str
    attribute: str  # "name" or "Class.method"
    versions: str  # the upstream package and versions it was written against
    parameters: tuple[str, ...] | None  # leading parameter names the replacement relies on; None: not a function
    why: str


LITGPT, LITDATA, LM_EVAL, TORCH = "litgpt 0.5.13", "litdata 0.2.59", "lm-eval 0.4.9", "torch 2.7-2.13"

PATCHES: dict[str, Patch] = {
    "pretrain.save_hyperparameters": Patch(
        "litgpt.pretrain", "save_hyperparameters", LITGPT, ("function", "checkpoint_dir"),
        "LitGPT writes the CLI arguments of `litgpt pretrain`; checkpoints of `litgpt inheritune` get its own, so "
        "their hyperparameters.yaml is a valid --config for `litgpt inheritune`"),
    "pretrain.save_checkpoint": Patch(
        "litgpt.pretrain", "save_checkpoint", LITGPT, ("fabric", "state", "tokenizer_dir", "checkpoint_file"),
        "checkpoints staged beside their file and renamed whole; a full disk is one line, never half a checkpoint"),
    "pretrain.fit": Patch(
        "litgpt.pretrain", "fit", LITGPT, ("fabric", "devices", "state"),
        "sees the training state (step of a per-domain validation); runs the fused LM head + loss (--speed)"),
    "pretrain.validate": Patch(
        "litgpt.pretrain", "validate", LITGPT, ("fabric", "model", "val_dataloader", "max_iters", "verbose"),
        "per-domain validation of a DomainMixture and its dynamic batch loading"),
    "pretrain.GPT": Patch(
        "litgpt.pretrain", "GPT", LITGPT, None,
        "knowledge distillation: the student returns its logits to the distillation loss"),
    "pretrain.chunked_cross_entropy": Patch(
        "litgpt.pretrain", "chunked_cross_entropy", LITGPT, ("logits", "targets", "chunk_size"),
        "knowledge distillation and the fused loss replace the training loss (validation keeps LitGPT's)"),
    "model.Block.forward": Patch(
        "litgpt.model", "Block.forward", LITGPT, ("self", "x", "cos", "sin", "mask", "input_pos"),
        "--speed checkpoint: activation checkpointing per block"),
    "torch.compile": Patch(
        "torch", "compile", TORCH, ("model",),
        "--compile false: LitGPT's pretrain always compiles"),
    "lm_eval.simple_evaluate": Patch(
        "lm_eval.evaluator", "simple_evaluate", LM_EVAL, ("model", "model_args", "tasks"),
        "`litgpt evaluate` builds no TaskManager: offline task YAMLs (--include_path) need one"),
    "lm_eval.get_git_commit_hash": Patch(
        "lm_eval.evaluator", "get_git_commit_hash", LM_EVAL, (),
        "the same record without git's 'fatal: not a git repository' outside a repository"),
    "litgpt.parser_commands": Patch(
        "litgpt.parser_config", "parser_commands", LITGPT, (),
        "LitGPT's fixed command table: the start-up hook adds the litgpt.commands entry points (with PARSER_DATA "
        "of litgpt.__main__)"),
    "litdata.CombinedDatasetIterator._weights": Patch(
        "litdata.streaming.combined", "_CombinedDatasetIterator._weights", LITDATA, None,
        "dynamic batch loading: the iterator draws with weights that change while it runs (a private attribute)"),
    "litdata.StreamingDataLoader._num_samples_yielded_wrapper": Patch(
        "litdata.streaming.dataloader", "StreamingDataLoader._num_samples_yielded_wrapper", LITDATA, None,
        "resuming a weighted combined dataset where it stopped (litdata restarts its epoch; a private attribute)"),
    "litdata.StreamingDataLoader.restore": Patch(
        "litdata.streaming.dataloader", "StreamingDataLoader.restore", LITDATA, None,
        "the flag that makes litdata's loader continue from its loaded state instead of restarting the epoch"),
    "litdata.StreamingDataset.seed": Patch(
        "litdata.streaming.dataset", "StreamingDataset.seed", LITDATA, None,
        "the run's --seed orders the training data: LitGPT's TextFiles leaves litdata's fixed shuffle seed (42), so "
        "runs of an inherited child with other seeds would be the same run"),
    "litdata.optimize": Patch(
        "litdata", "optimize", LITDATA, ("fn", "inputs", "output_dir"),
        "LitGPT's TextFiles prepares text through litdata's optimize, whose workers start by spawn: each re-imports "
        "torch and LitGPT (about 10 s a preparation) and spawn stays the process's start method afterwards. On Linux "
        "they start by fork (its start_method parameter), and the start method is put back"),
    "litgpt.copy_config_files": Patch(
        "litgpt.utils", "copy_config_files", LITGPT, ("source_dir", "out_dir"),
        "a checkpoint's prompt_style.yaml travels with its config and tokenizer files (convert_pretrained_checkpoint, "
        "pretrain, evaluate, finetune's copies): a child of an instruct reference keeps its plain prompt style instead of "
        "the chat template LitGPT picks by name. Set by the start-up hook when litgpt.utils loads; upstream patch text "
        "in CONTRIBUTING.md"),
    "litgpt.convert_pretrained_checkpoint": Patch(
        "litgpt.scripts.convert_pretrained_checkpoint", "convert_pretrained_checkpoint", LITGPT,
        ("checkpoint_dir", "output_dir"),
        "it reads lit_model.pth[\"model\"] only; the checkpoints users are given (final/, best/) hold the weights alone, "
        "LitGPT's own format, which merge_lora needs: those are copied as they are. Set by the start-up hook; upstream "
        "patch text in CONTRIBUTING.md"),
    "torch.stack.empty_message": Patch(
        "torch", "stack", TORCH, None,
        "LitGPT's validate stacks an empty list when a domain has no batch here: recognised by torch's message "
        "'expects a non-empty TensorList'"),
}

_checked: set[str] = set()


def _resolve(patch: Patch) -> tuple[Any, str, Any]:
    """(owner object, attribute name, current value) of a patch's target."""
    module = importlib.import_module(patch.module)
    owner, *path = [module] + patch.attribute.split(".")
    *parents, name = path
    for part in parents:
        owner = getattr(owner, part)
    return owner, name, getattr(owner, name)


def _source_mentions(owner: Any, name: str) -> bool:
    try:
        return name in inspect.getsource(owner)
    except (OSError, TypeError):
        return False


def _pass_through(signature: inspect.Signature) -> bool:
    """A wrapper of only ``*args, **kwargs`` (another patch, a test's or a benchmark's spy) says nothing about the
    target beneath it."""
    return all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values())


def check(name: str) -> None:
    """Raises ``InherituneError`` in one line when the target of patch ``name`` moved or changed its signature."""
    if name in _checked:
        return
    patch = PATCHES[name]
    problem = None
    try:
        if name == "torch.stack.empty_message":
            import torch

            try:
                torch.stack([])
                problem = "torch.stack([]) no longer raises"
            except RuntimeError as exc:
                if EMPTY_STACK not in str(exc):
                    problem = f"its message is now {str(exc)!r}"
        elif name == "litdata.optimize":
            _, _, target = _resolve(patch)
            signature = inspect.signature(inspect.unwrap(target))
            found = list(signature.parameters)
            if not _pass_through(signature) and (found[:3] != list(patch.parameters) or "start_method" not in found):
                problem = f"its parameters are now {found}, the patch expects {list(patch.parameters)} first and start_method"
        elif name.startswith("litdata."):  # private attributes, set in __init__ / methods: look in the source
            class_name, attribute = patch.attribute.split(".")
            owner = getattr(importlib.import_module(patch.module), class_name)
            if not _source_mentions(owner, f"self.{attribute}"):
                problem = f"{class_name} no longer sets self.{attribute}"
        else:
            _, _, target = _resolve(patch)
            if patch.parameters is not None:
                signature = inspect.signature(inspect.unwrap(target))
                found = list(signature.parameters)
                if not _pass_through(signature) and found[:len(patch.parameters)] != list(patch.parameters):
                    problem = f"its parameters are now {found}, the patch expects {list(patch.parameters)} first"
    except (ImportError, AttributeError) as exc:
        problem = f"it is gone ({exc})"
    if problem:
        raise InherituneError(
            f"patch {name!r} ({patch.module}.{patch.attribute}, written for {patch.versions}) no longer fits: "
            f"{problem}; install the pinned version or update litgpt_inheritune/patches.py"
        )
    _checked.add(name)


def check_all() -> list[str]:
    for name in PATCHES:
        check(name)
    return list(PATCHES)


EMPTY_STACK = "expects a non-empty"  # torch's message for torch.stack([])


def patched(name: str, new: Any):
    """A context manager that replaces patch ``name``'s target with ``new`` while it is open (after checking it)."""
    from unittest import mock

    check(name)
    owner, attribute, _ = _resolve(PATCHES[name])
    return mock.patch.object(owner, attribute, new)


def original(name: str) -> Callable:
    """The current (unpatched, or outer-patched) value of patch ``name``'s target."""
    check(name)
    return _resolve(PATCHES[name])[2]


def set_live_weights(iterator, weights) -> None:
    """Patch "litdata.CombinedDatasetIterator._weights": the iterator of litdata's weighted combined dataset draws
    each sample's dataset with ``weights`` (indexable), read at every draw."""
    check("litdata.CombinedDatasetIterator._weights")
    iterator._weights = weights


def continue_from_state(loader) -> None:
    """Patches "litdata.StreamingDataLoader._num_samples_yielded_wrapper" and ".restore": a loader whose loaded
    state has samples already yielded continues from there (litdata does so only for unweighted mixtures)."""
    check("litdata.StreamingDataLoader._num_samples_yielded_wrapper")
    check("litdata.StreamingDataLoader.restore")
    if any(sum(counts) for counts in loader._num_samples_yielded_wrapper.values()):
        loader.restore = True


def set_shuffle_seed(dataset, seed: int) -> None:
    """Patch "litdata.StreamingDataset.seed": a streaming dataset not yet iterated shuffles with ``seed`` (read
    when its shuffler is built, at the first iteration; a resumed loader's state carries the same seed)."""
    check("litdata.StreamingDataset.seed")
    dataset.seed = seed


def is_empty_stack(exc: BaseException) -> bool:
    """Patch "torch.stack.empty_message": LitGPT's validate failed because it had no batch to stack."""
    return isinstance(exc, RuntimeError) and EMPTY_STACK in str(exc)


@contextmanager
def forked_text_preparation() -> Iterator[None]:
    """Patch "litdata.optimize": while open, litdata's ``optimize`` (called by LitGPT's ``TextFiles.prepare_data``)
    starts its workers by fork on Linux, unless the caller chose a start method; the process's start method is
    restored afterwards. Elsewhere (macOS, Windows: fork is unsafe or absent) nothing changes."""
    import multiprocessing
    import sys

    if not sys.platform.startswith("linux"):
        yield
        return
    optimize = original("litdata.optimize")

    def forked(*args, **kwargs):
        kwargs.setdefault("start_method", "fork")
        return optimize(*args, **kwargs)

    before = multiprocessing.get_start_method(allow_none=True)
    try:
        with patched("litdata.optimize", forked):
            yield
    finally:
        multiprocessing.set_start_method(before, force=True)


PROMPT_STYLE_FILE = "prompt_style.yaml"  # litgpt.prompts' file name


def copying_prompt_style(copy_config_files: Callable) -> Callable:
    """Patch "litgpt.copy_config_files": LitGPT's ``copy_config_files(source_dir, out_dir)``, then the source's
    ``prompt_style.yaml`` too when it has one (LitGPT's finetune scripts write the data's prompt style after the copy,
    so theirs still wins). Wrapping the wrapper again returns it unchanged."""
    import functools

    if getattr(copy_config_files, "copies_prompt_style", False):
        return copy_config_files

    @functools.wraps(copy_config_files)
    def copy(source_dir, out_dir) -> None:
        import shutil
        from pathlib import Path

        copy_config_files(source_dir, out_dir)
        if (Path(source_dir) / PROMPT_STYLE_FILE).is_file():
            shutil.copy(Path(source_dir) / PROMPT_STYLE_FILE, Path(out_dir) / PROMPT_STYLE_FILE)

    copy.copies_prompt_style = True
    return copy


def accepting_weights(convert_pretrained_checkpoint: Callable, copy_config_files: Callable) -> Callable:
    """Patch "litgpt.convert_pretrained_checkpoint": LitGPT's converter of a training checkpoint
    (``{"model": ..., "optimizer": ...}``), which also takes a checkpoint of the weights alone: its lit_model.pth is
    copied as it is, with the config files (``copy_config_files``), to the same ``output_dir`` rules as LitGPT's."""
    import functools

    if getattr(convert_pretrained_checkpoint, "accepts_weights", False):
        return convert_pretrained_checkpoint

    @functools.wraps(convert_pretrained_checkpoint)
    def convert(checkpoint_dir, output_dir) -> None:
        import shutil
        from pathlib import Path

        import torch
        from litgpt.utils import extend_checkpoint_dir

        source = extend_checkpoint_dir(Path(checkpoint_dir)) / "lit_model.pth"
        state = torch.load(source, mmap=True, weights_only=False, map_location="cpu") if source.is_file() else None
        if not isinstance(state, dict) or isinstance(state.get("model"), dict):
            return convert_pretrained_checkpoint(checkpoint_dir, output_dir)
        output_dir = Path(output_dir)
        if output_dir.is_dir():  # LitGPT's rule (its emptiness test is always true)
            raise FileExistsError(f"The output folder exists and is not empty: {str(output_dir)}. Please delete it "
                                  "first or choose a different name.")
        output_dir.mkdir(parents=True)
        shutil.copy(source, output_dir / "lit_model.pth")
        copy_config_files(source.parent, output_dir)

    convert.accepts_weights = True
    return convert


def set_parser_commands(parser_config, parser_commands: Callable) -> None:
    """Patch "litgpt.parser_commands", for the start-up hook (which may not import torch, so it is not checked
    here: tests/test_patches.py checks it)."""
    parser_config.parser_commands = parser_commands

"""`litgpt inheritune_init`: write the inherited child as a LitGPT checkpoint, without training it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

from litgpt_inheritune.checkpoint import (
    atomic_dir,
    check_tokenizer,
    check_weights_match_config,
    has_tokenizer,
    load_reference_config,
    load_state_dict_lazily,
    write_checkpoint,
)
from litgpt_inheritune.checks import check_out_dir, child_bytes
from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.rundir import other_rank_skips
from litgpt_inheritune.inherit import PARTS, inherit, resolve_layers, resolve_parts

INHERITANCE_FILE = "inheritune.json"  # what the child was made of: reference, blocks, parts, how they were chosen


def pretrain_init_state_dict(config, seed: int) -> dict:
    """A freshly initialised model of ``config``, exactly as ``litgpt pretrain`` initialises one."""
    import torch
    from litgpt import GPT
    from litgpt.pretrain import initialize_weights

    torch.manual_seed(seed)
    model = GPT(config)
    initialize_weights(SimpleNamespace(strategy=None), model, n_layer=config.n_layer, n_embd=config.n_embd)
    return model.state_dict()


class Plan(SimpleNamespace):
    """What was checked before any heavy work: the reference, the child's layers and parts."""


def plan_child(
    reference_dir: Path,
    n_layers: int | None,
    layers: list[int] | None,
    parts: list[str] | None,
    tokenizer_dir: Path | None,
    select: str = "first",
    analysis: Path | None = None,
) -> Plan:
    """Checks every input cheaply (weights memory-mapped, nothing copied) and returns what to build."""
    from litgpt_inheritune.analysis import load_analysis, select_layers

    reference_dir = Path(reference_dir)
    config = load_reference_config(reference_dir)
    if select != "first":
        if layers is not None or n_layers is None:
            raise InherituneError(f"--select {select} picks --n_layers blocks; give --n_layers N and no --layers")
        layers, n_layers = select_layers(select, n_layers, config.n_layer, load_analysis(analysis)), None
    layers = resolve_layers(config.n_layer, n_layers, layers)
    parts = resolve_parts(parts)
    state_dict = load_state_dict_lazily(reference_dir / "lit_model.pth")
    check_weights_match_config(config, state_dict, reference_dir / "lit_model.pth")
    if tokenizer_dir is not None:
        check_tokenizer(tokenizer_dir, reference_dir, config)
    elif has_tokenizer(reference_dir):  # it travels into the child: it must load (an empty tokenizer.json does not)
        check_tokenizer(reference_dir, reference_dir, config)
    return Plan(reference_dir=reference_dir, config=config, state_dict=state_dict, layers=layers, parts=parts,
                select=select, analysis=None if analysis is None else str(analysis))


def build_child(plan: Plan, out_dir: Path, seed: int = 42, overwrite: bool = False):
    """Inherits per ``plan`` and writes the child checkpoint atomically into ``out_dir``. Returns its config."""
    from litgpt_inheritune.inherit import child_config

    init = None
    if set(plan.parts) != set(PARTS):
        init = pretrain_init_state_dict(child_config(plan.config, plan.layers), seed)
    # No copies: the inherited tensors go from the memory-mapped reference straight into the child's file.
    child, state_dict = inherit(plan.config, plan.state_dict, plan.layers, plan.parts, init, copy=False)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_checkpoint(tmp, child, state_dict, plan.reference_dir, plan.layers)
        record = {"reference": str(plan.reference_dir), "reference_name": plan.config.name,
                  "reference_blocks": plan.config.n_layer, "layers": plan.layers, "parts": list(plan.parts),
                  "select": getattr(plan, "select", "first"), "analysis": getattr(plan, "analysis", None)}
        (tmp / INHERITANCE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return child


def setup(
    reference_dir: Path,
    n_layers: int | None = None,
    layers: list[int] | None = None,
    parts: list[str] | None = None,
    out_dir: Path = Path("out/inheritune_init"),
    tokenizer_dir: Path | None = None,
    seed: int = 42,
    overwrite: bool = False,
    select: Literal["first", "even", "block_influence", "angular_distance"] = "first",
    analysis: Path | None = None,
) -> None:
    """Write a child model that inherits the first blocks of a reference model, as a LitGPT checkpoint.

    The child gets the reference's token embedding, the chosen blocks, the final norm and the LM head.
    The output dir holds lit_model.pth, model_config.yaml, a HF config.json describing the child and the
    tokenizer files, so `litgpt generate`, `litgpt evaluate` and `litgpt convert_from_litgpt` accept it.

    Arguments:
        reference_dir: LitGPT checkpoint dir of the reference model (lit_model.pth, model_config.yaml, tokenizer).
        n_layers: Inherit the first ``n_layers`` blocks. Give this or ``layers``.
        layers: Explicit reference block indices to inherit, in the child's order, e.g. ``[0, 1, 2, 29]``.
        parts: What to inherit; default all of embedding, attention, mlp, norms, final_norm, head.
            Parts left out get LitGPT's pretraining init (the paper's ablations; ``[]`` is a random-init child).
        out_dir: Where to write the child checkpoint. Written to a temporary dir first, then renamed.
        tokenizer_dir: Check that this tokenizer matches the reference's vocabulary (default: the reference's).
        seed: Random seed for the parts that are not inherited.
        overwrite: Replace an existing checkpoint in ``out_dir``.
        select: How ``n_layers`` blocks are chosen: ``first`` (Inheritune), ``even`` (spread over the depth),
            ``block_influence`` (the most influential) or ``angular_distance`` (drop the most redundant run);
            the last two read ``analysis``. The choice is recorded in ``out_dir/inheritune.json``.
        analysis: ``analysis.json`` (or its dir) written by `litgpt inheritune_analyze` for this reference.
    """
    if other_rank_skips("inheritune_init"):
        return
    try:
        out_dir = Path(out_dir)
        if (out_dir / "lit_model.pth").exists() and not overwrite:
            raise InherituneError(
                f"{str(out_dir)!r} already holds a checkpoint; choose another --out_dir or pass --overwrite true"
            )
        check_out_dir(out_dir, reference_dir)  # a file, an unwritable place, inside the reference: before any work
        t0 = time.perf_counter()
        plan = plan_child(reference_dir, n_layers, layers, parts, tokenizer_dir, select, analysis)
        check_out_dir(out_dir, reference_dir, child_bytes(plan))
        child = build_child(plan, out_dir, seed=seed, overwrite=overwrite)
    except InherituneError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"Wrote a {child.n_layer}-block child of {plan.config.name} ({plan.config.n_layer} blocks; inherited blocks "
        f"{plan.layers}, parts {list(plan.parts)}) to {str(out_dir)!r} in {time.perf_counter() - t0:.1f} s"
    )

"""Planning and writing an inherited child as a LitGPT checkpoint: the reference read lazily, its blocks chosen
(``analysis.selection``), the state dict built (``inherit``) and written atomically (``checkpoint``)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from litgpt_inheritune.checkpoint import (
    atomic_dir,
    check_tokenizer,
    check_weights_match_config,
    has_tokenizer,
    load_reference_config,
    load_state_dict_lazily,
    write_checkpoint,
)
from litgpt_inheritune.errors import InherituneError
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
    from litgpt_inheritune.analysis.selection import load_analysis, select_layers

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

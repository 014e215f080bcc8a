"""Inheritance as pure functions on a LitGPT ``Config`` and a state dict.

``inherit(config, state_dict, layers)`` returns the child's config and state dict: the child gets the reference's
token embedding, the blocks listed in ``layers`` (renumbered 0..n-1 in that order), the final norm and the LM head.
Which of those parts are copied is a choice (``parts``); what is not copied is taken from ``init_state_dict``,
normally a model freshly initialised the way ``litgpt pretrain`` does it.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Iterable, Mapping, Sequence

from litgpt_inheritune.errors import InherituneError

# The parts of a model a child can inherit. Block-level parts apply to every inherited block.
PARTS = ("embedding", "attention", "mlp", "norms", "final_norm", "head")

_BLOCK_KEY = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")
_CHILD_SUFFIX = re.compile(r"-inheritune-\d+L$")


def child_name(reference_name: str, n_layers: int) -> str:
    """The child's ``Config.name``: the reference's, then ``-inheritune-{n}L`` (a child of a child: the suffix
    replaced). LitGPT looks architectures up by the name's start or by substrings (``"Gemma" in name`` gives the
    unit-offset RMSNorm, ``convert_lit_checkpoint`` picks its weight mapping by prefix), so the reference's name stays
    its prefix; the chat template LitGPT would also pick by name is overridden by the child's prompt_style.yaml."""
    return f"{_CHILD_SUFFIX.sub('', reference_name)}-inheritune-{n_layers}L"


def resolve_layers(reference_depth: int, n_layers: int | None = None, layers: Sequence[int] | None = None) -> list[int]:
    """The reference block indices the child inherits, in the child's order.

    Exactly one of ``n_layers`` (the first n blocks) and ``layers`` (an explicit list) must be given.
    """
    if (n_layers is None) == (layers is None):
        raise InherituneError("give exactly one of --n_layers N (the first N blocks) or --layers [i, j, ...]")
    if n_layers is not None:
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= reference_depth:
            raise InherituneError(
                f"--n_layers must be between 1 and the reference depth {reference_depth}, got {n_layers}"
            )
        return list(range(n_layers))
    layers = list(layers)
    if not layers:
        raise InherituneError("--layers is empty: list at least one block index, e.g. --layers '[0, 1, 2]'")
    bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < reference_depth]
    if bad:
        raise InherituneError(
            f"--layers has indices outside 0..{reference_depth - 1} (the reference has {reference_depth} blocks): {bad}"
        )
    dupes = sorted({i for i in layers if layers.count(i) > 1})
    if dupes:
        raise InherituneError(f"--layers lists these block indices more than once: {dupes}; give each block once")
    return layers


def resolve_parts(parts: Iterable[str] | None) -> tuple[str, ...]:
    """Validates a list of part names; ``None`` means every part (the method itself)."""
    if parts is None:
        return PARTS
    parts = tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise InherituneError(f"unknown parts to inherit {unknown}; choose from {list(PARTS)}")
    return parts


def child_config(config, layers: Sequence[int]):
    """The child's ``Config``: the reference's with ``n_layer = len(layers)`` and per-layer settings sliced."""
    from litgpt import Config

    values = asdict(config)
    values["n_layer"] = len(layers)
    values["name"] = child_name(config.name, len(layers))
    for key in ("sliding_window_indices", "rope_indices"):
        per_layer = values.get(key)
        if per_layer is not None:
            values[key] = [per_layer[i] for i in layers]
    k = values.get("first_k_dense_replace")
    if k is not None:
        dense = [i < k for i in layers]
        n_dense = sum(dense)
        if dense != [True] * n_dense + [False] * (len(layers) - n_dense):
            raise InherituneError(
                f"this MoE reference has dense blocks 0..{k - 1} before its expert blocks; "
                "list the dense blocks you keep before the expert blocks in --layers"
            )
        values["first_k_dense_replace"] = n_dense
    return Config(**values)


def part_of(key: str) -> tuple[str, int | None]:
    """Which part a LitGPT parameter name belongs to, and its block index (None outside blocks)."""
    if key.startswith("transformer.wte."):
        return "embedding", None
    if key.startswith("transformer.ln_f."):
        return "final_norm", None
    if key.startswith("lm_head."):
        return "head", None
    match = _BLOCK_KEY.match(key)
    if match is None:
        raise InherituneError(f"do not know which part of the model the parameter {key!r} belongs to")
    block, rest = int(match.group(1)), match.group(2)
    if rest.startswith("attn."):
        return "attention", block
    if rest.startswith("mlp."):
        return "mlp", block
    if rest.split(".")[0] in ("norm_1", "norm_2", "post_attention_norm", "post_mlp_norm"):
        return "norms", block
    raise InherituneError(f"do not know which part of block {block} the parameter {key!r} belongs to")


def child_key_sources(reference_keys: Iterable[str], layers: Sequence[int]) -> dict[str, str]:
    """Maps each child parameter name to the reference parameter it comes from."""
    position = {ref: child for child, ref in enumerate(layers)}
    sources = {}
    for key in reference_keys:
        _, block = part_of(key)
        if block is None:
            sources[key] = key
        elif block in position:
            sources[f"transformer.h.{position[block]}.{key.split('.', 3)[3]}"] = key
    return sources


def inherit(
    config,
    state_dict: Mapping,
    layers: Sequence[int],
    parts: Iterable[str] | None = None,
    init_state_dict: Mapping | None = None,
    copy: bool = True,
):
    """Builds the child: returns ``(child_config, child_state_dict)``.

    ``state_dict`` may be memory-mapped (``torch.load(..., mmap=True)``): only the inherited tensors are read.
    With ``copy`` each is copied, so that the child does not keep the reference file open; without it the child
    holds the reference's own tensors (for writing the child straight to disk: memory stays at the child's size).
    ``init_state_dict`` supplies every tensor whose part is not inherited and is required unless all parts are.
    """
    parts = resolve_parts(parts)
    layers = resolve_layers(config.n_layer, layers=layers)
    child = child_config(config, layers)
    sources = child_key_sources(state_dict.keys(), layers)
    if init_state_dict is None and set(parts) != set(PARTS):
        raise InherituneError("init_state_dict is required when only some parts are inherited")
    out = {}
    for key, source in sources.items():
        if part_of(key)[0] in parts:
            tensor = state_dict[source]
            # A view into a larger storage is copied anyway: saving it would write the whole storage.
            whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
            out[key] = tensor.clone() if copy or not whole else tensor
        else:
            init = init_state_dict[key]
            out[key] = init.to(dtype=state_dict[source].dtype)
    if {"embedding", "head"} <= set(parts) and reference_ties_embeddings(state_dict):
        out["lm_head.weight"] = out["transformer.wte.weight"]  # stays tied, and is stored once
    return child, out


def reference_ties_embeddings(state_dict: Mapping) -> bool:
    """True when the reference's LM head is its token embedding (same values)."""
    import torch

    head, wte = state_dict.get("lm_head.weight"), state_dict.get("transformer.wte.weight")
    return head is not None and wte is not None and head.shape == wte.shape and bool(torch.equal(head, wte))

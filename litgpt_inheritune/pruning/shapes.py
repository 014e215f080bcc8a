"""Target shapes: which blocks, query groups, heads, MLP channels and embedding channels a child keeps, and the
state-dict transform that keeps them (shared by one-shot width inheritance and learned pruning).

Pure functions on a LitGPT ``Config`` and a state dict; no model is built here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from litgpt_inheritune.errors import InherituneError

SIZE_KEYS = ("n_layer", "n_embd", "n_head", "n_query_groups", "intermediate_size")
STANDARD_MLPS = ("LLaMAMLP", "GemmaMLP", "GptNeoxMLP")
# HF config.json keys holding each size, by family (only keys present in the reference's file are rewritten).
_HF_KEYS = {
    "n_embd": ("hidden_size", "n_embd", "d_model"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim"),
    "n_head": ("num_attention_heads", "n_head"),
    "n_query_groups": ("num_key_value_heads", "multi_query_group_num"),
}


@dataclass
class Keep:
    """What the child keeps, as reference indices (sorted within a layer, so the reference's order is kept).

    ``heads`` lists query heads of the kept ``groups`` only: the same number in every kept group, so LitGPT's
    grouped-query layout (query head h reads key/value group h // heads-per-group) stays consistent.
    """

    layers: list[int]
    hidden: list[int]
    groups: list[list[int]]  # per child layer
    heads: list[list[int]]  # per child layer
    intermediate: list[list[int]]  # per child layer


def check_standard(config, what: str = "change the width of") -> None:
    """Raises unless ``config`` has standard blocks: causal self-attention and a dense MLP of a known kind."""
    problem = None
    if config.mlp_class_name not in STANDARD_MLPS:
        problem = f"its MLP is {config.mlp_class_name}, not one of {list(STANDARD_MLPS)}"
    elif config.latent_attention:
        problem = "it uses multi-head latent attention"
    elif config.n_expert or config.first_k_dense_replace is not None:
        problem = "it has expert blocks"
    if problem:
        raise InherituneError(f"cannot {what} {config.name}: {problem}; use a zoo model with standard blocks")


def target_sizes(config, target: str | Mapping) -> dict:
    """The child's sizes from a zoo model name (its sizes only) or a dict of some of ``SIZE_KEYS``; checked."""
    from litgpt import Config

    if isinstance(target, str):
        try:
            zoo = Config.from_name(target)
        except ValueError:
            raise InherituneError(
                f"unknown --target {target!r}; give a LitGPT model name (see `litgpt download list`) or sizes such "
                "as '{n_layer: 24, n_embd: 448, n_head: 6, n_query_groups: 2, intermediate_size: 1024}'"
            ) from None
        given = {k: getattr(zoo, k) for k in SIZE_KEYS}
        given["head_size"] = zoo.head_size
    else:
        given = dict(target)
        unknown = sorted(set(given) - set(SIZE_KEYS) - {"head_size"})
        if unknown:
            raise InherituneError(f"--target has unknown sizes {unknown}; use {list(SIZE_KEYS)}")
        if not given:
            raise InherituneError(f"--target is empty; give at least one of {list(SIZE_KEYS)}")
    if given.get("head_size", config.head_size) != config.head_size:
        raise InherituneError(
            f"--target has head size {given['head_size']} but {config.name}'s heads are {config.head_size} wide "
            "(RoPE and the attention scale depend on it); pick a target with the same head size, i.e. "
            f"n_embd / n_head = {config.head_size} for zoo configs"
        )
    sizes = {k: given.get(k, getattr(config, k)) for k in SIZE_KEYS}
    for key in SIZE_KEYS:
        if not isinstance(sizes[key], int) or not 1 <= sizes[key] <= getattr(config, key):
            raise InherituneError(
                f"--target {key} = {sizes[key]} must be a whole number from 1 to {config.name}'s {getattr(config, key)}"
            )
    if sizes["n_head"] % sizes["n_query_groups"]:
        raise InherituneError(
            f"--target n_head {sizes['n_head']} is not a multiple of n_query_groups {sizes['n_query_groups']}"
        )
    q_ref = config.n_head // config.n_query_groups
    q = sizes["n_head"] // sizes["n_query_groups"]
    if q > q_ref:
        raise InherituneError(
            f"--target has {q} query heads per key/value group but {config.name} has {q_ref}; keep at most {q_ref} "
            f"(e.g. n_query_groups = n_head / {q_ref})"
        )
    if config.scale_embeddings and sizes["n_embd"] != config.n_embd:
        raise InherituneError(
            f"{config.name} scales its embeddings by sqrt(n_embd), so its n_embd cannot change; keep n_embd {config.n_embd}"
        )
    return sizes


def child_config(config, keep: Keep):
    """The child's ``Config``: the reference's, at the kept depth and widths (head size unchanged)."""
    from litgpt import Config

    from litgpt_inheritune.inherit import child_config as depth_config

    values = asdict(depth_config(config, keep.layers))
    values.update(n_embd=len(keep.hidden), n_head=len(keep.heads[0]), n_query_groups=len(keep.groups[0]),
                  intermediate_size=len(keep.intermediate[0]), head_size=config.head_size)
    return Config(**values)


def check_keep(config, keep: Keep) -> None:
    """Raises when ``keep`` is not a valid child of ``config`` (indices out of range, uneven layers or groups)."""
    q_ref = config.n_head // config.n_query_groups
    n = len(keep.layers)
    if not (len(keep.groups) == len(keep.heads) == len(keep.intermediate) == n):
        raise InherituneError("keep lists must have one entry per kept layer")
    for name, values, limit in (("layers", keep.layers, config.n_layer), ("hidden", keep.hidden, config.n_embd)):
        if not values or len(set(values)) != len(values) or not all(0 <= v < limit for v in values):
            raise InherituneError(f"kept {name} {values} must be distinct indices below {limit}")
    for j in range(n):
        groups, heads = keep.groups[j], keep.heads[j]
        if len(groups) != len(keep.groups[0]) or len(heads) != len(keep.heads[0]):
            raise InherituneError("every kept layer must keep the same number of heads and groups")
        if len(keep.intermediate[j]) != len(keep.intermediate[0]):
            raise InherituneError("every kept layer must keep the same number of MLP channels")
        if sorted(set(h // q_ref for h in heads)) != sorted(groups) or len(heads) % len(groups):
            raise InherituneError(f"layer {j}: kept heads {heads} do not fill kept groups {groups} evenly")
        for g in groups:
            if sum(h // q_ref == g for h in heads) != len(heads) // len(groups):
                raise InherituneError(f"layer {j}: kept groups must keep the same number of query heads")


def _rows(state, index):
    return state.index_select(0, index)


def prune_state_dict(config, state_dict: Mapping, keep: Keep, scales: Mapping | None = None) -> tuple:
    """Keeps ``keep`` of the reference's weights; returns ``(child_config, child_state_dict)``.

    ``scales`` (learned pruning) folds mask values into the weights the way the masked model applies them:
    ``head`` (per child layer, one value per kept head) scales that head's columns of ``attn.proj``;
    ``intermediate`` (per child layer) the columns of ``mlp.proj``; ``hidden`` (one value per kept channel) and
    ``layer`` (one value per child layer) the rows and bias of both branch outputs (``attn.proj``, ``mlp.proj``).
    Embedding, norms and LM head are only sliced, so tied embeddings stay tied.
    """
    import torch

    check_standard(config)
    check_keep(config, keep)
    child = child_config(config, keep)
    hs = config.head_size
    hidden = torch.tensor(keep.hidden, dtype=torch.long)
    out = {}
    layer_of = {ref: j for j, ref in enumerate(keep.layers)}
    for key, value in state_dict.items():
        if key in ("transformer.wte.weight", "lm_head.weight"):
            out[key] = value.index_select(1, hidden)
            continue
        if key == "lm_head.bias":
            out[key] = value
            continue
        if key.startswith("transformer.ln_f."):
            out[key] = value.index_select(0, hidden)
            continue
        if not key.startswith("transformer.h."):
            raise InherituneError(f"cannot prune {key!r}: not a standard LitGPT weight")
        ref_layer, name = key[len("transformer.h."):].split(".", 1)
        if int(ref_layer) not in layer_of:
            continue
        j = layer_of[int(ref_layer)]
        heads = torch.tensor(keep.heads[j], dtype=torch.long)
        groups = torch.tensor(keep.groups[j], dtype=torch.long)
        inter = torch.tensor(keep.intermediate[j], dtype=torch.long)
        head_cols = (heads[:, None] * hs + torch.arange(hs)).flatten()
        group_cols = (groups[:, None] * hs + torch.arange(hs)).flatten()
        if name.split(".")[0] in ("norm_1", "norm_2", "post_attention_norm", "post_mlp_norm"):
            new = value.index_select(0, hidden)
        elif name in ("attn.qkv.weight", "attn.qkv.bias"):
            q_size, kv_size = config.n_head * hs, config.n_query_groups * hs
            rows = torch.cat([head_cols, q_size + group_cols, q_size + kv_size + group_cols])
            new = _rows(value, rows)
            if name.endswith("weight"):
                new = new.index_select(1, hidden)
        elif name in ("attn.norm_q.weight", "attn.norm_q.bias", "attn.norm_k.weight", "attn.norm_k.bias"):
            if value.shape[0] == hs:  # one norm over each head
                new = value
            else:  # OLMo-2 style: one norm over all heads (queries) or all groups (keys)
                new = value.index_select(0, head_cols if "norm_q" in name else group_cols)
        elif name == "attn.proj.weight":
            new = value.index_select(0, hidden).index_select(1, head_cols)
        elif name in ("attn.proj.bias", "mlp.proj.bias"):
            new = value.index_select(0, hidden)
        elif name in ("mlp.fc_1.weight", "mlp.fc_2.weight", "mlp.fc.weight"):
            new = value.index_select(0, inter).index_select(1, hidden)
        elif name in ("mlp.fc_1.bias", "mlp.fc_2.bias", "mlp.fc.bias"):
            new = value.index_select(0, inter)
        elif name == "mlp.proj.weight":
            new = value.index_select(0, hidden).index_select(1, inter)
        else:
            raise InherituneError(f"cannot prune {key!r}: not a standard LitGPT block weight")
        if scales is not None and name in ("attn.proj.weight", "attn.proj.bias", "mlp.proj.weight", "mlp.proj.bias"):
            new = _fold(new, name, j, scales, hs)
        out[f"transformer.h.{j}.{name}"] = new.contiguous()
    return child, out


def _fold(value, name: str, j: int, scales: Mapping, head_size: int):
    """Multiplies the mask values the masked model applies into a branch's output projection."""
    import torch

    dtype = value.dtype
    rows = torch.ones(value.shape[0], dtype=torch.float32)
    if scales.get("hidden") is not None:
        rows = rows * scales["hidden"].float()
    if scales.get("layer") is not None:
        rows = rows * float(scales["layer"][j])
    value = value.float() * (rows if value.dim() == 1 else rows[:, None])
    if name == "attn.proj.weight" and scales.get("head") is not None:
        value = value * scales["head"][j].float().repeat_interleave(head_size)[None, :]
    if name == "mlp.proj.weight" and scales.get("intermediate") is not None:
        value = value * scales["intermediate"][j].float()[None, :]
    return value.to(dtype)


def full_keep(config, layers: Sequence[int] | None = None) -> Keep:
    """Keeps everything of ``layers`` (default all): the identity transform."""
    layers = list(range(config.n_layer)) if layers is None else list(layers)
    return Keep(layers=layers, hidden=list(range(config.n_embd)),
                groups=[list(range(config.n_query_groups)) for _ in layers],
                heads=[list(range(config.n_head)) for _ in layers],
                intermediate=[list(range(config.intermediate_size)) for _ in layers])


def top_k_keep(config, sizes: Mapping, layers: Sequence[int], hidden_score, head_score, intermediate_score) -> Keep:
    """The most important units at the target sizes, from scores (higher = keep).

    ``hidden_score`` [n_embd]; ``head_score`` and ``intermediate_score`` have one row per *reference* layer. A query
    group scores the sum of its heads; the best ``n_query_groups`` groups are kept, and in each of them the best
    ``n_head / n_query_groups`` heads.
    """
    import torch

    q_ref = config.n_head // config.n_query_groups
    q = sizes["n_head"] // sizes["n_query_groups"]

    def top(score, k):
        return sorted(torch.topk(torch.as_tensor(score, dtype=torch.float64), k).indices.tolist())

    groups, heads, inter = [], [], []
    for i in layers:
        per_head = torch.as_tensor(head_score[i], dtype=torch.float64).view(config.n_query_groups, q_ref)
        kept_groups = top(per_head.sum(1), sizes["n_query_groups"])
        groups.append(kept_groups)
        heads.append(sorted(g * q_ref + h for g in kept_groups for h in top(per_head[g], q)))
        inter.append(top(intermediate_score[i], sizes["intermediate_size"]))
    return Keep(layers=list(layers), hidden=top(hidden_score, sizes["n_embd"]), groups=groups, heads=heads,
                intermediate=inter)


def shaped_hf_config(hf: dict | None, child) -> dict | None:
    """A depth-rewritten HF ``config.json`` (see ``checkpoint.child_hf_config``) rewritten for the child's widths."""
    if hf is None:
        return None
    for size, keys in _HF_KEYS.items():
        for key in keys:
            if isinstance(hf.get(key), int):
                hf[key] = getattr(child, size)
    if isinstance(hf.get("head_dim"), int):
        hf["head_dim"] = child.head_size
    return hf


def parameter_count(config, tied: bool = False) -> int:
    """Parameters of a model of ``config`` (built on the meta device, nothing allocated); with ``tied`` the LM head
    shares the embedding's weight and is counted once."""
    import torch
    from litgpt import GPT
    from litgpt.utils import num_parameters

    with torch.device("meta"):
        model = GPT(config)
    if tied:
        model.lm_head.weight = model.transformer.wte.weight
    return num_parameters(model)


def shape_record(reference_dir, config, child, keep: Keep, sizes: Mapping, tied: bool, **extra) -> dict:
    """What a width or pruning child was made of, for its ``inheritune.json``: the reference, the target, exactly
    which units were kept, the parameter counts, and ``extra`` (method, its settings)."""
    from dataclasses import asdict

    return {"reference": str(reference_dir), "reference_name": config.name, "reference_blocks": config.n_layer,
            **extra, "target": dict(sizes), "layers": keep.layers,
            "parameters": parameter_count(child, tied), "reference_parameters": parameter_count(config, tied),
            "keep": {k: v for k, v in asdict(keep).items() if k != "layers"}}

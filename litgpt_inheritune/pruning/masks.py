"""Sheared-LLaMA's learned structured pruning masks on a LitGPT ``GPT`` (Xia et al., 2023), with grouped-query attention.

Mask types (created only for the sizes the target reduces):

- ``layer`` [L]: gates both branches of a block (attention and MLP outputs);
- ``group`` [L, G]: key/value groups; a pruned group silences all its query heads;
- ``head`` [L, G, q]: query heads inside each group (only when the target has fewer heads per group);
- ``intermediate`` [L, I]: MLP channels;
- ``hidden`` [d]: embedding channels, shared by every block, the embedding, the norms and the LM head.

Hard-concrete gates (Louizos et al.): stretch limits (-0.1, 1.1), temperature 2/3; ``log_alpha`` starts at
N(5, 0.01) clamped to [ln 0.01, ln 100]. In training ``z`` is sampled; in evaluation the deterministic mask is
sigmoid(0.8 log_alpha / beta) with exactly the target count kept per row (top-k) and the rest zeroed.

The masked model is LitGPT's own ``GPT`` with hooks: head gates scale the heads' outputs (the input of
``attn.proj``), channel gates the input of ``mlp.proj``, ``hidden * layer`` the output of each branch; the token
embedding is multiplied by the 0/1 indicator of the hidden gates (so a tied LM head stays tied when the values are
folded into the weights), and every norm averages over the kept channels only. ``shape.prune_state_dict`` with
the masks' values folded in therefore computes exactly what the masked model computes.

Memory: the gated inputs of ``attn.proj`` and ``mlp.proj`` keep, for the gates' gradient, only the product that the
projection keeps anyway (``_ScaleLast``); a masked norm keeps only its input, in the model's dtype, and recomputes
its float32 statistics in the backward pass. ``PrunableGPT`` registers its hooks once, for its lifetime, so a block
that activation checkpointing recomputes in the backward pass is recomputed with the same masks.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

LIMIT_L, LIMIT_R, BETA, EPS = -0.1, 1.1, 2.0 / 3.0, 1e-6
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(0.01), math.log(100.0)
DETERMINISTIC_SCALE = 0.8  # Sheared-LLaMA's eval-time factor on log_alpha / beta
TYPES = ("layer", "group", "head", "intermediate", "hidden")


class HardConcrete(nn.Module):
    """Gates of one mask type: ``log_alpha`` of ``shape``; ``keep`` gates kept per row of the last dimension."""

    def __init__(self, shape: tuple[int, ...], keep: int, init_mean: float = 5.0, init_std: float = 0.01) -> None:
        super().__init__()
        self.keep = keep
        initial = torch.empty(shape, device="cpu").normal_(init_mean, init_std).clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)
        self._initial = initial  # not a buffer: what ``reset_parameters`` restores
        self.log_alpha = nn.Parameter(initial.clone())

    def reset_parameters(self) -> None:
        """Back to the values drawn at construction. Lightning calls it when it materialises a model that holds a
        module built on the meta device (``fsdp2``), after sharding."""
        _fill(self.log_alpha, self._initial)

    @property
    def size(self) -> int:
        return self.log_alpha.shape[-1]

    @property
    def target_sparsity(self) -> float:
        return 1.0 - self.keep / self.size

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        a = self.log_alpha.float()  # gates in float32 whatever the model's precision
        u = torch.rand(a.shape, generator=generator, device=a.device, dtype=torch.float32).clamp(EPS, 1 - EPS)
        s = torch.sigmoid((u.log() - (1 - u).log() + a) / BETA)
        return (s * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)

    def prob_nonzero(self) -> torch.Tensor:
        return torch.sigmoid(self.log_alpha.float() - BETA * math.log(-LIMIT_L / LIMIT_R))

    def expected_sparsity(self) -> torch.Tensor:
        return 1.0 - self.prob_nonzero().mean()

    def deterministic(self) -> torch.Tensor:
        soft = torch.sigmoid(self.log_alpha.detach().float() / BETA * DETERMINISTIC_SCALE)
        kept = soft.topk(self.keep, dim=-1).indices
        return torch.zeros_like(soft).scatter(-1, kept, soft.gather(-1, kept))

    def clamp_(self) -> None:
        with torch.no_grad():
            self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


def _fill(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copies ``full`` into ``param``, or into its shard when it is a DTensor (fsdp2)."""
    with torch.no_grad():
        if hasattr(param, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor

            full = distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
        param.copy_(full.to(param.dtype))


class _Multipliers(nn.ParameterDict):
    """The Lagrange multipliers, lambda_1 and lambda_2 per mask type; they start at 0 (Sheared-LLaMA)."""

    def reset_parameters(self) -> None:
        for value in self.values():
            _fill(value, torch.zeros(value.shape))


class PruningMasks(nn.Module):
    """The masks a reference needs to reach ``sizes`` (see ``shape.target_sizes``), and their Lagrange multipliers."""

    def __init__(self, config, sizes: dict) -> None:
        super().__init__()
        L, G, d = config.n_layer, config.n_query_groups, config.n_embd
        q_ref = config.n_head // G
        q = sizes["n_head"] // sizes["n_query_groups"]
        self.config, self.sizes = config, dict(sizes)
        gates = {}
        if sizes["n_layer"] < L:
            gates["layer"] = HardConcrete((L,), sizes["n_layer"])
        if sizes["n_query_groups"] < G:
            gates["group"] = HardConcrete((L, G), sizes["n_query_groups"])
        if q < q_ref:
            gates["head"] = HardConcrete((L, G, q_ref), q)
        if sizes["intermediate_size"] < config.intermediate_size:
            gates["intermediate"] = HardConcrete((L, config.intermediate_size), sizes["intermediate_size"])
        if sizes["n_embd"] < d:
            gates["hidden"] = HardConcrete((d,), sizes["n_embd"])
        self.gates = nn.ModuleDict(gates)
        # lambda_1, lambda_2 per mask type, trained by gradient ascent (Sheared-LLaMA starts them at 0)
        self.lambdas = _Multipliers({name: nn.Parameter(torch.zeros(2)) for name in gates})

    def sample(self, generator: torch.Generator | None = None) -> dict:
        return {name: gate.sample(generator) for name, gate in self.gates.items()}

    def deterministic(self) -> dict:
        return {name: gate.deterministic() for name, gate in self.gates.items()}

    def expected_sparsity(self) -> dict:
        return {name: gate.expected_sparsity() for name, gate in self.gates.items()}

    def expected_sizes(self) -> dict:
        """Expected kept units per row of each mask type (e.g. heads per group), for logs."""
        return {name: float(gate.prob_nonzero().detach().sum(-1).float().mean()) for name, gate in self.gates.items()}

    def lagrangian(self, step: int, warmup_steps: int) -> tuple[torch.Tensor, dict]:
        """sum over types of lambda_1 (s - t) + lambda_2 (s - t)^2, the target sparsity t warmed up linearly."""
        ramp = 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
        terms, stats = [], {}
        for name, gate in self.gates.items():
            target = gate.target_sparsity * ramp
            gap = gate.expected_sparsity() - target
            lam = self.lambdas[name]
            terms.append(lam[0].float() * gap + lam[1].float() * gap * gap)
            stats[name] = {"expected_sparsity": float(gap.detach()) + target, "target_sparsity": target,
                           "lambda_1": float(lam[0].detach()), "lambda_2": float(lam[1].detach())}
        return (torch.stack(terms).sum() if terms else torch.zeros(())), stats

    def clamp_(self) -> None:
        for gate in self.gates.values():
            gate.clamp_()

    def full(self, z: dict) -> dict:
        """Per-unit values with every type expanded: ``head`` [L, H], ``intermediate`` [L, I] or None, ``hidden``
        [d] or None, ``layer`` [L] or None."""
        c = self.config
        q_ref = c.n_head // c.n_query_groups
        head = None
        if "group" in z or "head" in z:
            head = torch.ones(c.n_layer, c.n_query_groups, q_ref, device=next(iter(z.values())).device)
            if "group" in z:
                head = head * z["group"][:, :, None]
            if "head" in z:
                head = head * z["head"]
            head = head.flatten(1)
        return {"head": head, "intermediate": z.get("intermediate"), "hidden": z.get("hidden"), "layer": z.get("layer")}


def check_prunable(config) -> None:
    """Learned pruning gates branch outputs before the residual sum, so post-branch norms would undo the gates."""
    from litgpt_inheritune.errors import InherituneError
    from litgpt_inheritune.pruning.shapes import check_standard

    check_standard(config, what="prune")
    if config.post_attention_norm or config.post_mlp_norm:
        raise InherituneError(
            f"cannot prune {config.name}: its post-attention/post-MLP norms would undo the masks; "
            "use `litgpt inheritune_width` (one-shot) for this family"
        )


class _ScaleLast(torch.autograd.Function):
    """``x * scale`` over the last dimension. Keeps for the backward pass the product (which the projection it
    feeds keeps anyway, so no second activation-sized tensor) and the scale: d/d scale = sum(grad * x) =
    sum(grad * product) / scale where the scale is not 0. A gate at exactly 0 is a hard-concrete sample clamped at
    its lower limit, whose gradient to log_alpha the clamp zeroes whatever this one is; it gets 0."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        out = x * scale.to(x.dtype)
        ctx.save_for_backward(out, scale)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, scale = ctx.saved_tensors
        grad_x = grad * scale.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            dims = tuple(range(grad.dim() - 1))
            summed = (grad * out).sum(dims, dtype=torch.float32)  # one product in the model's dtype, summed in float32
            s = scale.float()
            nonzero = s != 0
            grad_scale = torch.where(nonzero, summed / torch.where(nonzero, s, torch.ones_like(s)), torch.zeros_like(s))
            grad_scale = grad_scale.to(scale.dtype)
        return grad_x, grad_scale


def scale_last(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * scale`` (scale over the last dimension, cast to x's dtype); through ``_ScaleLast`` when the scale
    needs a gradient."""
    if torch.is_grad_enabled() and scale.requires_grad:
        return _ScaleLast.apply(x, scale)
    return x * scale.to(x.dtype)


def _masked_norm(norm, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` with its statistics over the kept channels only (``keep`` 0/1 over the last dim); pruned
    channels come out as 0."""
    from litgpt.model import RMSNorm

    dtype = x.dtype
    x = x.float()
    k = keep.sum()
    if isinstance(norm, RMSNorm):
        mean_square = (x * x * keep).sum(-1, keepdim=True) / k
        weight = (1 + norm.weight) if norm.add_unit_offset else norm.weight
        out = x * torch.rsqrt(mean_square + norm.eps) * weight.float()
    elif isinstance(norm, nn.LayerNorm):
        mean = (x * keep).sum(-1, keepdim=True) / k
        var = (((x - mean) * keep) ** 2).sum(-1, keepdim=True) / k
        out = (x - mean) * torch.rsqrt(var + norm.eps)
        if norm.weight is not None:
            out = out * norm.weight.float()
        if norm.bias is not None:
            out = out + norm.bias.float()
    else:
        raise TypeError(f"cannot mask a {type(norm).__name__}")
    return (out * keep).to(dtype)


def register_masks(model, values) -> list:
    """Hooks that apply mask values to a LitGPT ``GPT``; returns their handles. ``values()`` returns the current
    expanded values (``PruningMasks.full``) or None (no masks) and is called at every hooked module, so one sample
    per forward works."""
    from torch.utils.checkpoint import checkpoint

    handles = []
    hs = model.config.head_size

    def current() -> dict:
        v = values()
        return {} if v is None else v

    def keep_of(v):
        return (v["hidden"] > 0).to(v["hidden"].dtype)

    def branch_scale(v, i):
        scale = v.get("hidden")
        if v.get("layer") is not None:
            scale = v["layer"][i] if scale is None else scale * v["layer"][i]
        return scale

    def wte_hook(module, args, output):
        v = current()
        return output if v.get("hidden") is None else output * keep_of(v).to(output.dtype)

    handles.append(model.transformer.wte.register_forward_hook(wte_hook))
    norms = [model.transformer.ln_f]
    for i, block in enumerate(model.transformer.h):
        def head_hook(module, args, i=i):
            v = current()
            if v.get("head") is None:
                return None
            return (scale_last(args[0], v["head"][i].repeat_interleave(hs)),)

        def channel_hook(module, args, i=i):
            v = current()
            if v.get("intermediate") is None:
                return None
            return (scale_last(args[0], v["intermediate"][i]),)

        def branch_hook(module, args, output, i=i):
            scale = branch_scale(current(), i)
            return output if scale is None else output * scale.to(output.dtype)

        handles.append(block.attn.proj.register_forward_pre_hook(head_hook))
        handles.append(block.mlp.proj.register_forward_pre_hook(channel_hook))
        handles.append(block.attn.register_forward_hook(branch_hook))
        handles.append(block.mlp.register_forward_hook(branch_hook))
        norms += [n for n in (block.norm_1, block.norm_2) if n is not None and not isinstance(n, nn.Identity)]

    def norm_hook(module, args, output):
        v = current()
        if v.get("hidden") is None:
            return output
        if torch.is_grad_enabled():  # keeps the input only; the float32 statistics are recomputed in backward
            return checkpoint(_masked_norm, module, args[0], keep_of(v), use_reentrant=False)
        return _masked_norm(module, args[0], keep_of(v))

    for norm in norms:
        handles.append(norm.register_forward_hook(norm_hook))
    return handles


@contextmanager
def masked(model, values):
    """Applies mask values to a LitGPT ``GPT`` while the context is open (``register_masks``)."""
    handles = register_masks(model, values)
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


class PrunableGPT(nn.Module):
    """A LitGPT ``GPT`` and its pruning masks in one module (so FSDP shards and syncs both). In training mode
    every forward samples the gates; in eval mode it uses the deterministic target-shaped masks."""

    def __init__(self, gpt, sizes: dict) -> None:
        super().__init__()
        check_prunable(gpt.config)
        self.gpt = gpt
        self.masks = PruningMasks(gpt.config, sizes)
        self.config = gpt.config
        self.generator = None  # set per step for samples that do not depend on where a run was resumed
        self._values = None  # the values of the latest forward, which a block recomputed in backward reads again
        self.stats: dict = {}
        self.expected_kept: dict = {}
        register_masks(gpt, lambda: self._values)  # for the module's lifetime (see the module's docstring)

    @property
    def max_seq_length(self) -> int:
        return self.gpt.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.gpt.max_seq_length = value

    def forward(self, idx: torch.Tensor, lagrangian: tuple[int, int] | None = None, **kwargs):
        """Logits; with ``lagrangian=(step, warmup_steps)`` also the masks' constraint term (``PruningMasks.
        lagrangian``), computed here because FSDP holds the mask parameters whole only inside forward; its
        statistics and the expected kept sizes are left in ``stats`` and ``expected_kept``."""
        z = self.masks.sample(self.generator) if self.training else self.masks.deterministic()
        self._values = self.masks.full(z)
        logits = self.gpt(idx, **kwargs)
        if lagrangian is None:
            return logits
        constraint, self.stats = self.masks.lagrangian(*lagrangian)
        self.expected_kept = self.masks.expected_sizes()
        return logits, constraint


def extraction(masks: PruningMasks, reference_config) -> tuple:
    """The target-shaped ``Keep`` and the mask values to fold (``scales`` of ``shape.prune_state_dict``) from the
    deterministic masks."""
    from litgpt_inheritune.pruning.shapes import Keep

    c = reference_config
    v = masks.full(masks.deterministic())
    v = {k: (None if t is None else t.detach().float().cpu()) for k, t in v.items()}
    q_ref = c.n_head // c.n_query_groups
    layers = list(range(c.n_layer)) if v["layer"] is None else sorted(torch.nonzero(v["layer"]).flatten().tolist())
    hidden = list(range(c.n_embd)) if v["hidden"] is None else torch.nonzero(v["hidden"]).flatten().tolist()
    groups, heads, inter = [], [], []
    for i in layers:
        if v["head"] is None:
            heads.append(list(range(c.n_head)))
        else:
            heads.append(torch.nonzero(v["head"][i]).flatten().tolist())
        groups.append(sorted({h // q_ref for h in heads[-1]}))
        inter.append(list(range(c.intermediate_size)) if v["intermediate"] is None
                     else torch.nonzero(v["intermediate"][i]).flatten().tolist())
    keep = Keep(layers=layers, hidden=hidden, groups=groups, heads=heads, intermediate=inter)
    scales = {
        "hidden": None if v["hidden"] is None else v["hidden"][hidden],
        "layer": None if v["layer"] is None else [float(v["layer"][i]) for i in layers],
        "head": None if v["head"] is None else [v["head"][i][heads[j]] for j, i in enumerate(layers)],
        "intermediate": None if v["intermediate"] is None else [v["intermediate"][i][inter[j]] for j, i in enumerate(layers)],
    }
    return keep, scales

"""Speed and memory options for training with LitGPT's own pretraining loop (``litgpt.pretrain``).

Nothing here copies LitGPT's loop. :func:`apply` is a context manager to wrap around ``pretrain.setup``; each
option patches one small piece of LitGPT for the duration of the call, through ``litgpt_inheritune.patches``:

``fused_ce``
    Fused, chunked LM head + cross-entropy. The model returns its final hidden states instead of the
    ``[B, T, vocab]`` logits, and the loss is computed chunk by chunk of tokens: each chunk's logits are made,
    reduced to its loss and its gradients (for the hidden states and the head weight) and freed at once, so the
    full logits, their float32 copies and their gradient never exist. Loss and gradients equal LitGPT's
    ``model(x)`` + ``chunked_cross_entropy`` within floating-point rounding (same matmul precision as the stock
    head). Off automatically for models with final logit soft-capping (Gemma 2).
``checkpoint``
    Activation checkpointing of every transformer ``Block`` (recomputed in the backward pass). Costs about a
    third more compute; use it where memory binds (a 24 GB GPU, larger micro-batches).
``cudnn_attention``
    Put cuDNN's fused attention first in PyTorch's SDPA backend order (flash, memory-efficient and math
    attention stay as fall-backs for shapes cuDNN does not take).

8-bit AdamW needs no patch: LitGPT instantiates any optimizer class, e.g.
``--optimizer bitsandbytes.optim.AdamW8bit`` (see :data:`ADAMW_8BIT`). LitGPT already uses
``torch.optim.AdamW(fused=True)`` on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from litgpt_inheritune import patches
from litgpt_inheritune.errors import InherituneError

OPTIONS: dict[str, str] = {
    "fused_ce": "fused chunked LM head + cross-entropy (no full logits)",
    "checkpoint": "activation checkpointing of every transformer block",
    "cudnn_attention": "cuDNN fused attention first in the SDPA backend order",
}
# On by default where safe: same loss and gradients, no memory or numerics trade-off.
DEFAULT_OPTIONS: tuple[str, ...] = ("fused_ce",)

# An optimizer config for `litgpt pretrain`/`inheritune` that keeps AdamW's states in 8 bits (bitsandbytes).
ADAMW_8BIT = {
    "class_path": "bitsandbytes.optim.AdamW8bit",
    "init_args": {"lr": 3e-4, "weight_decay": 0.01, "betas": [0.9, 0.95]},
}

# Tokens per chunk of the fused head: a chunk's float32 logits take chunk * vocab * 4 bytes (0.5 GB at 4096 x 32k).
FUSED_CE_CHUNK = 4096


def parse(options: str | Iterable[str] | None) -> tuple[str, ...]:
    """Option names from ``"a,b"``, a list, ``"none"``/``""``/``None`` (nothing), ``"default"`` or ``"all"``."""
    if options is None:
        return ()
    if isinstance(options, str):
        options = [options]
    names: list[str] = []
    for item in options:
        if not isinstance(item, str):
            raise InherituneError(f"speed options must be names, got {item!r}; choose from {', '.join(OPTIONS)}")
        for name in item.replace("+", ",").split(","):
            name = name.strip()
            if name in ("", "none"):
                continue
            expanded = {"default": DEFAULT_OPTIONS, "all": tuple(OPTIONS)}.get(name, (name,))
            for one in expanded:
                if one not in OPTIONS:
                    raise InherituneError(
                        f"unknown speed option {one!r}; choose from {', '.join(OPTIONS)} (or none, default, all)"
                    )
                if one not in names:
                    names.append(one)
    return tuple(names)


@contextmanager
def apply(
    options: str | Iterable[str] | None = DEFAULT_OPTIONS, fused_ce_chunk: int = FUSED_CE_CHUNK
) -> Iterator[None]:
    """Turns the named options on for the ``litgpt.pretrain.setup`` call made inside the ``with`` block::

        with speed.apply("fused_ce,checkpoint"):
            pretrain.setup(...)

    ``options``: names, a comma-separated string, ``"default"`` (:data:`DEFAULT_OPTIONS`), ``"all"`` or ``"none"``.
    Raises ``InherituneError`` (one line) for an unknown name. Everything is undone when the block exits.
    """
    names = parse(options)
    if fused_ce_chunk < 1:
        raise InherituneError(f"fused_ce_chunk must be a positive number of tokens, got {fused_ce_chunk}")
    import litgpt.pretrain as pretrain

    with ExitStack() as stack:
        if "fused_ce" in names:
            stack.enter_context(patches.patched("pretrain.fit", _fit_with_fused_ce(pretrain.fit, fused_ce_chunk)))
        if "checkpoint" in names:
            stack.enter_context(checkpoint_blocks())
        if "cudnn_attention" in names:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            order = [
                SDPBackend.CUDNN_ATTENTION,
                SDPBackend.FLASH_ATTENTION,
                SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH,
            ]
            stack.enter_context(sdpa_kernel(order, set_priority=True))
        yield


# ---------------------------------------------------------------------------------------------------------------
# Activation checkpointing


@contextmanager
def checkpoint_blocks() -> Iterator[None]:
    """Every ``litgpt.model.Block`` recomputes its activations in the backward pass while training."""
    from litgpt.model import Block
    from torch.utils.checkpoint import checkpoint

    stock_forward = Block.forward

    def forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return checkpoint(stock_forward, self, x, *args, use_reentrant=False, **kwargs)
        return stock_forward(self, x, *args, **kwargs)

    with patches.patched("model.Block.forward", forward):
        yield


# ---------------------------------------------------------------------------------------------------------------
# Fused LM head + cross-entropy


class _HiddenStatesHead(nn.Linear):
    """Swapped in as the class of a GPT's ``lm_head`` (same parameters): returns the hidden states it is given,
    in the dtype the stock head would multiply them in (the autocast dtype under mixed precision)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if torch.is_autocast_enabled(x.device.type):
            return x.to(torch.get_autocast_dtype(x.device.type))
        return x.to(self.weight.dtype)


def _fit_with_fused_ce(stock_fit, chunk: int):
    """Wraps ``pretrain.fit``: the trained GPT's head returns hidden states and the loop's loss is fused."""
    import litgpt.pretrain as pretrain
    from litgpt.model import GPT

    def fit(fabric, devices, state, *args, **kwargs):
        gpt = next((m for m in state["model"].modules() if isinstance(m, GPT)), None)
        if fabric.world_size > 1:  # FSDP shards the head's weight outside the model's forward
            fabric.print("fused_ce: off with several devices (FSDP); using the stock loss")
            return stock_fit(fabric, devices, state, *args, **kwargs)
        if gpt is None or gpt.config.final_logit_softcapping is not None or type(gpt.lm_head) is not nn.Linear:
            fabric.print("fused_ce: not applicable to this model (soft-capped or custom head); using the stock loss")
            return stock_fit(fabric, devices, state, *args, **kwargs)
        head = gpt.lm_head
        loss = partial(fused_loss, head=head, stock=pretrain.chunked_cross_entropy, chunk=chunk)
        head.__class__ = _HiddenStatesHead
        try:
            with patches.patched("pretrain.chunked_cross_entropy", loss):
                return stock_fit(fabric, devices, state, *args, **kwargs)
        finally:
            head.__class__ = nn.Linear

    return fit


def fused_loss(
    output: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 128,
    ignore_index: int = -100,
    *,
    head: nn.Linear,
    stock,
    chunk: int = FUSED_CE_CHUNK,
) -> torch.Tensor:
    """Stands in for ``chunked_cross_entropy(model(x), targets)`` when ``output`` is the hidden states of the
    model whose head is ``head``; any other output (e.g. LitGPT's FLOP count on a meta copy) goes to ``stock``."""
    is_hidden = (
        isinstance(output, torch.Tensor)
        and output.shape[-1] == head.in_features
        and output.device == head.weight.device
        and head.in_features != head.out_features
    )
    if not is_hidden:
        return stock(output, targets, chunk_size=chunk_size, ignore_index=ignore_index)
    return linear_cross_entropy(output, head.weight, targets, ignore_index=ignore_index, chunk=chunk, bias=head.bias)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    chunk: int = FUSED_CE_CHUNK,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, targets)`` (mean over non-ignored targets) without materialising
    the logits: chunks of ``chunk`` tokens. Matmuls run in ``hidden``'s dtype; softmax and loss in float32."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden states for {hidden.shape[0]} tokens but {targets.shape[0]} targets")
    if bias is not None:  # rare for LM heads; keep it exact and simple
        return torch.nn.functional.cross_entropy(
            torch.nn.functional.linear(hidden, weight.to(hidden.dtype), bias.to(hidden.dtype)).float(),
            targets,
            ignore_index=ignore_index,
        )
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk)
    loss_sum, _ = _chunks(hidden, weight.to(hidden.dtype), targets, ignore_index, chunk, need_grad=False)
    return loss_sum / (targets != ignore_index).sum().clamp(min=1)


class _LinearCrossEntropy(torch.autograd.Function):
    """Computes the loss and both gradients in the forward pass (one pass over the vocabulary per chunk); the
    backward pass only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk):
        w = weight.to(hidden.dtype)
        loss_sum, (grad_hidden, grad_weight) = _chunks(
            hidden, w, targets, ignore_index, chunk, need_grad=True, want_weight_grad=ctx.needs_input_grad[1]
        )
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss_sum / (targets != ignore_index).sum().clamp(min=1)

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = gw = None
        if ctx.needs_input_grad[0]:
            gh = grad_hidden * grad_output.to(grad_hidden.dtype)
        if ctx.needs_input_grad[1]:
            gw = (grad_weight * grad_output).to(ctx.weight_dtype)
        return gh, gw, None, None, None


def _chunk_loss_grad(logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, ignore_index: int):
    """One chunk: summed loss and d(loss * scale)/d(logits) in the logits' dtype. Works in place on one float copy
    of the chunk's logits (``logits`` is a temporary of the caller's, and may be that copy)."""
    f = logits.to(scale.dtype)
    valid = targets != ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    lse = torch.logsumexp(f, dim=-1)
    picked = f.gather(1, safe[:, None]).squeeze(1)
    loss_sum = torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
    row_scale = torch.where(valid, scale, torch.zeros_like(scale))[:, None]
    grad = f.sub_(lse[:, None]).exp_().mul_(row_scale)  # softmax x scale
    grad.scatter_add_(1, safe[:, None], -row_scale)  # minus the target's one-hot
    return loss_sum, grad.to(logits.dtype)


def _chunk_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    f = logits.to(torch.promote_types(logits.dtype, torch.float32))
    valid = targets != ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    loss = torch.logsumexp(f, dim=-1) - f.gather(1, safe[:, None]).squeeze(1)
    return torch.where(valid, loss, torch.zeros_like(loss)).sum()


_compiled: dict[str, Any] = {}


def _kernel(name: str, fn, device: torch.device):
    """The chunk function, compiled on CUDA into one or two fused kernels (eager elsewhere)."""
    if device.type != "cuda":
        return fn
    if name in _compiled:
        return _compiled[name]
    compiled = torch.compile(fn, dynamic=True)
    if compiled is not fn:  # not cached while torch.compile is patched away (``--compile false`` runs)
        _compiled[name] = compiled
    return compiled


def _chunks(hidden, w, targets, ignore_index, chunk, need_grad, want_weight_grad=True):
    n = hidden.shape[0]
    acc = torch.promote_types(hidden.dtype, torch.float32)  # float32, or float64 for float64 inputs
    loss_sum = torch.zeros((), dtype=acc, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_grad else None
    grad_weight = None
    scale = 1.0 / (targets != ignore_index).sum().clamp(min=1).to(acc)
    loss_grad = _kernel("loss_grad", _chunk_loss_grad, hidden.device)
    loss_only = _kernel("loss", _chunk_loss, hidden.device)
    for start in range(0, n, chunk):
        h = hidden[start : start + chunk]
        t = targets[start : start + chunk]
        logits = h @ w.T
        if not need_grad:
            loss_sum = loss_sum + loss_only(logits, t, ignore_index)
            continue
        part, grad = loss_grad(logits, t, scale.expand(t.shape[0]), ignore_index)
        del logits
        loss_sum = loss_sum + part
        grad_hidden[start : start + chunk] = grad @ w
        if want_weight_grad:
            part_w = (grad.T @ h).to(acc)
            grad_weight = part_w if grad_weight is None else grad_weight.add_(part_w)
    if need_grad and grad_weight is None:
        grad_weight = torch.zeros((), device=w.device)
    return loss_sum, (grad_hidden, grad_weight)


def estimate_flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token, PaLM's convention: 6 x (parameters in matmuls, head included, embedding lookup
    excluded) + 12 x layers x attention width x sequence length (full, not causal-halved, attention)."""
    d = config.n_embd
    attn_width = config.n_head * config.head_size
    qkv = d * (config.n_head + 2 * config.n_query_groups) * config.head_size
    proj = attn_width * d
    if config.mlp_class_name in ("LLaMAMLP", "GemmaMLP"):
        mlp = 3 * d * config.intermediate_size
    else:
        mlp = 2 * d * config.intermediate_size
    matmul_params = config.n_layer * (qkv + proj + mlp) + d * config.padded_vocab_size
    return 6.0 * matmul_params + 12.0 * config.n_layer * attn_width * seq_len


def peak_bf16_flops(device_name: str) -> float | None:
    """Datasheet dense bf16 peak of known GPUs (FLOP/s), for MFU; None where unknown."""
    name = device_name.upper()
    for key, value in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("4090", 165e12)):
        if key in name:
            return value
    return None


__all__ = [
    "ADAMW_8BIT",
    "DEFAULT_OPTIONS",
    "OPTIONS",
    "apply",
    "checkpoint_blocks",
    "estimate_flops_per_token",
    "linear_cross_entropy",
    "parse",
    "peak_bf16_flops",
]

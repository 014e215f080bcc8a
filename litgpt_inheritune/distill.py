"""Logit knowledge distillation from the reference inside `litgpt pretrain`'s loop (a baseline arm).

The loop computes ``loss = chunked_cross_entropy(model(input_ids), targets)``. ``distillation`` patches two names of
``litgpt.pretrain`` for the length of a run: ``GPT``, so that the student remembers the input ids of its last
forward pass, and ``chunked_cross_entropy``, which (only when gradients are on, i.e. in training steps) runs the
frozen teacher on the same ids and returns

    alpha * CE(student, targets) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

averaged over tokens. Validation (no gradients) keeps the plain cross-entropy, so validation losses of a
distilled child compare directly with every other arm's.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch

from litgpt_inheritune import patches
from litgpt_inheritune.errors import InherituneError

KD_CHUNK = 256
"""Tokens per chunk of :func:`kd_loss`: a few float32 ``[KD_CHUNK, vocab]`` temporaries at a time (about 0.1 GB
each for a 128k vocabulary)."""


def kd_loss(student_logits, teacher_logits, targets, temperature: float, alpha: float, ignore_index: int = -100,
            chunk_size: int = KD_CHUNK):
    """The distillation loss above for logits [B, T, V] and targets [B, T], averaged over the tokens whose target
    is not ``ignore_index`` (0 when there are none).

    The teacher's logits may have more columns (a padded vocabulary); only the student's ``V`` count. Rows are
    processed ``chunk_size`` at a time, in float32: when the student's logits need a gradient, each chunk's
    gradient is made in the same pass and written into one tensor of the logits' shape and dtype, which the
    backward pass only scales. Besides that gradient, no more than a few float32 ``[chunk_size, V]`` tensors exist
    at once, and nothing waits for the device (no boolean indexing, no ``.item()``). Only the student's logits get
    a gradient: the teacher is frozen.
    """
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    targets = targets.reshape(-1)
    settings = float(temperature), float(alpha), ignore_index, max(int(chunk_size), 1)
    if torch.is_grad_enabled() and student.requires_grad:
        return _KDLoss.apply(student, teacher, targets, *settings)
    return _kd_chunks(student, teacher, targets, *settings, want_grad=False)[0]


def _kd_chunks(student, teacher, targets, temperature, alpha, ignore_index, chunk_size, want_grad):
    """The mean loss and, if ``want_grad``, its gradient with respect to ``student`` (in ``student``'s dtype)."""
    rows, vocab = student.shape
    keep = (targets != ignore_index).float()
    scale = 1 / keep.sum().clamp(min=1)
    safe_targets = targets.where(targets != ignore_index, 0)
    total = torch.zeros((), dtype=torch.float32, device=student.device)
    grad = torch.empty_like(student) if want_grad else None
    for start in range(0, rows, chunk_size):
        part = slice(start, start + chunk_size)
        row_weight = keep[part] * scale  # 0 for ignored tokens
        # Private float32 copies: modified in place below.
        s = student[part].to(torch.float32, copy=True)
        t = teacher[part, :vocab].to(torch.float32, copy=True)
        y = safe_targets[part, None]
        loss = torch.zeros(s.shape[0], dtype=torch.float32, device=s.device)
        g = None
        if alpha > 0:  # cross-entropy: logsumexp(s) - s[y]; its gradient softmax(s) - onehot(y)
            lse = torch.logsumexp(s, -1)
            loss += alpha * (lse - s.gather(-1, y).squeeze(-1))
            if want_grad:
                g = torch.sub(s, lse[:, None]).exp_().mul_(alpha)
                g.scatter_add_(-1, y, torch.full(y.shape, -alpha, dtype=g.dtype, device=g.device))
            del lse
        if alpha < 1:  # T^2 KL(p_t || p_s) at temperature T; its gradient T (p_s - p_t)
            log_p_s = torch.log_softmax(s.div_(temperature), -1)
            del s
            log_p_t = torch.log_softmax(t.div_(temperature), -1)
            del t
            p_t = log_p_t.exp()
            loss += (1 - alpha) * temperature**2 * log_p_t.sub_(log_p_s).mul_(p_t).sum(-1)
            del log_p_t
            if want_grad:
                kd = log_p_s.exp_().sub_(p_t).mul_((1 - alpha) * temperature)
                g = kd if g is None else g.add_(kd)
            del log_p_s, p_t
        else:
            del s, t
        total += (loss * row_weight).sum()
        if want_grad:
            grad[part] = g.mul_(row_weight[:, None])
        del g
    return total, grad


class _KDLoss(torch.autograd.Function):
    """:func:`kd_loss` with its gradient made in the forward pass (one pass over the logits per chunk, no
    softmaxes kept); the backward pass scales it in place, so it runs once per forward."""

    @staticmethod
    def forward(ctx, student, teacher, targets, temperature, alpha, ignore_index, chunk_size):
        loss, ctx.grad = _kd_chunks(student, teacher, targets, temperature, alpha, ignore_index, chunk_size,
                                    want_grad=True)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("kd_loss's gradient was already used: compute the loss again for a second backward")
        return grad.mul_(grad_output), None, None, None, None, None, None


@contextmanager
def _quiet_bitsandbytes():
    """Hides bitsandbytes' expected notices: LLM.int8() computes in float16 by design, and its CPU kernels still
    call a torch check that torch deprecates."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"MatMul8bitLt: inputs will be cast from")
        warnings.filterwarnings("ignore", message=r"_check_is_size will be removed", category=FutureWarning)
        yield


def load_teacher(reference_dir: Path, device, quantize: Literal["bnb.nf4", "bnb.int8", None] = None, dtype=None):
    """The reference as a frozen model on ``device``, in ``dtype`` (default: bf16 on CUDA, float32 elsewhere); with
    ``quantize``, every linear layer's weight in 4-bit NF4 or 8-bit LLM.int8() storage (bitsandbytes, CUDA and CPU).

    The model is built on the meta device and its tensors are made on ``device`` from the memory-mapped checkpoint,
    directly in their final dtype (quantized layers one at a time), so memory peaks at about one copy of the
    teacher as it is used; the RoPE cache, which is not in the checkpoint, is computed on ``device``.
    """
    from litgpt import GPT, Config

    from litgpt_inheritune.checkpoint import check_weights_match_config, load_state_dict_lazily

    reference_dir = Path(reference_dir)
    config = Config.from_file(reference_dir / "model_config.yaml")
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    state_dict = dict(load_state_dict_lazily(reference_dir / "lit_model.pth"))
    check_weights_match_config(config, state_dict, reference_dir / "lit_model.pth")
    with torch.device("meta"):
        teacher = GPT(config)
    if quantize is not None:
        with _quiet_bitsandbytes():
            _quantize_linear_layers(teacher, state_dict, device, dtype, quantize)
    made: dict = {}  # tied weights (one storage under two names) are made once

    def on_device(tensor):
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if key not in made:
            made[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
        return made[key]

    teacher.load_state_dict({name: on_device(tensor) for name, tensor in state_dict.items()}, strict=False,
                            assign=True)
    teacher.cos, teacher.sin = teacher.rope_cache(device=device)
    left = [name for name, tensor in [*teacher.named_parameters(), *teacher.named_buffers()] if tensor.is_meta]
    if left:
        raise InherituneError(f"the teacher's {left[:3]} are neither in {str(reference_dir / 'lit_model.pth')!r} nor "
                              "rebuilt by distill.load_teacher; run the kd arm without this reference's model family")
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


def _quantize_linear_layers(teacher, state_dict: dict, device, dtype, quantize: str) -> None:
    """Replaces each ``nn.Linear`` of ``teacher`` (on the meta device) by its bitsandbytes counterpart holding the
    quantized weight of ``state_dict`` on ``device``; consumes those weights from ``state_dict``."""
    import bitsandbytes as bnb

    if quantize not in ("bnb.nf4", "bnb.int8"):
        raise InherituneError(f"--kd_quantize must be bnb.nf4 or bnb.int8, got {quantize!r}")
    linears = [(name, module) for name, module in teacher.named_modules() if type(module) is torch.nn.Linear]
    for name, linear in linears:
        weight = state_dict.pop(f"{name}.weight")
        bias = state_dict.pop(f"{name}.bias", None)
        args = linear.in_features, linear.out_features, bias is not None
        if quantize == "bnb.nf4":
            layer = bnb.nn.Linear4bit(*args, compute_dtype=dtype, compress_statistics=False, quant_type="nf4",
                                      device="meta")
            # Params4bit quantizes when moved to a device; the float weight exists for this one layer only.
            layer.weight = bnb.nn.Params4bit(weight.to(device=device, dtype=dtype), requires_grad=False,
                                             compress_statistics=False, quant_type="nf4", module=layer).to(device)
        else:
            layer = bnb.nn.Linear8bitLt(*args, has_fp16_weights=False, threshold=6.0, device="meta")
            # Int8Params quantizes (row-wise absmax, via float16) when moved from the CPU to a device.
            layer.weight = bnb.nn.Int8Params(weight.to("cpu"), requires_grad=False, has_fp16_weights=False).to(device)
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(teacher.get_submodule(parent), child, layer)


@contextmanager
def distillation(pretrain_module, reference_dir: Path, temperature: float = 2.0, alpha: float = 0.5,
                 quantize: Literal["bnb.nf4", "bnb.int8", None] = None):
    """Makes `litgpt pretrain`'s training loss the distillation loss for the runs inside the block."""
    if temperature <= 0:
        raise InherituneError(f"--kd_temperature must be positive, got {temperature}")
    if not 0 <= alpha <= 1:
        raise InherituneError(f"--kd_alpha must be in [0, 1], got {alpha}")
    plain_loss, plain_gpt = pretrain_module.chunked_cross_entropy, pretrain_module.GPT
    seen: dict = {}

    class Student(plain_gpt):
        def forward(self, idx, *args, **kwargs):
            seen["idx"] = idx
            return super().forward(idx, *args, **kwargs)

    def loss(logits, targets, *args, **kwargs):
        idx = seen.get("idx")
        # Validation (no gradients) and LitGPT's FLOP count on the meta device keep the plain loss.
        if not torch.is_grad_enabled() or idx is None or idx.shape != targets.shape or logits.device.type == "meta":
            return plain_loss(logits, targets, *args, **kwargs)
        if "teacher" not in seen:
            seen["teacher"] = load_teacher(reference_dir, logits.device, quantize)
            seen["teacher"].max_seq_length = max(idx.shape[1], 1)
        with torch.no_grad(), _quiet_bitsandbytes():
            teacher_logits = seen["teacher"](idx)
        return kd_loss(logits, teacher_logits, targets, temperature, alpha)

    with patches.patched("pretrain.GPT", Student), patches.patched("pretrain.chunked_cross_entropy", loss):
        yield seen

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

from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from litgpt_inheritune import patches
from litgpt_inheritune.errors import InherituneError


def kd_loss(student_logits, teacher_logits, targets, temperature: float, alpha: float, ignore_index: int = -100):
    """The distillation loss above for logits [B, T, V] and targets [B, T]."""
    import torch.nn.functional as F

    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab).float()
    t = teacher_logits.reshape(-1, vocab).float()[:, :vocab]
    y = targets.reshape(-1)
    ce = F.cross_entropy(s, y, ignore_index=ignore_index)
    if alpha >= 1.0:
        return ce
    keep = y != ignore_index
    kl = F.kl_div(F.log_softmax(s[keep] / temperature, -1), F.log_softmax(t[keep] / temperature, -1),
                  reduction="batchmean", log_target=True)
    return alpha * ce + (1 - alpha) * temperature**2 * kl


def load_teacher(reference_dir: Path, device, quantize: Literal["bnb.nf4", "bnb.int8", None] = None):
    """The reference as a frozen model on ``device`` (bf16 on CUDA, float32 on CPU; 4/8-bit with bitsandbytes)."""
    import torch
    from litgpt import GPT, Config

    from litgpt_inheritune.checkpoint import load_state_dict_lazily

    config = Config.from_file(Path(reference_dir) / "model_config.yaml")
    device = torch.device(device)
    state_dict = load_state_dict_lazily(Path(reference_dir) / "lit_model.pth")
    if quantize is None:
        with torch.device(device):
            teacher = GPT(config)
        teacher.load_state_dict(state_dict)
        if device.type == "cuda":
            teacher = teacher.to(torch.bfloat16)
    else:
        if device.type != "cuda":
            raise InherituneError(f"--kd_quantize {quantize} needs a CUDA GPU (bitsandbytes); drop it on CPU")
        from lightning.fabric.plugins import BitsandbytesPrecision

        plugin = BitsandbytesPrecision(mode=quantize[4:], dtype=torch.bfloat16)
        with torch.device("meta"):
            teacher = GPT(config)
        teacher = plugin.convert_module(teacher)
        teacher.load_state_dict(state_dict, assign=True)
        teacher = teacher.to(device)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


@contextmanager
def distillation(pretrain_module, reference_dir: Path, temperature: float = 2.0, alpha: float = 0.5,
                 quantize: Literal["bnb.nf4", "bnb.int8", None] = None):
    """Makes `litgpt pretrain`'s training loss the distillation loss for the runs inside the block."""
    import torch

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
        with torch.no_grad():
            teacher_logits = seen["teacher"](idx)
        return kd_loss(logits, teacher_logits, targets, temperature, alpha)

    with patches.patched("pretrain.GPT", Student), patches.patched("pretrain.chunked_cross_entropy", loss):
        yield seen

"""Logit distillation (``distill``): the chunked loss against the plain formula, the teacher built in its dtype or
quantized by bitsandbytes on the CPU, and `litgpt inheritune_arms`' kd arm training with a 4-bit and an 8-bit
teacher."""

import csv
import math

import bitsandbytes as bnb
import pytest
import torch
import torch.nn.functional as F
from litgpt import GPT, Config
from litgpt.args import EvalArgs, TrainArgs

from litgpt_inheritune import distill
from litgpt_inheritune.distill import kd_loss, load_teacher
from litgpt_inheritune.experiments.arms import run_arms

from test_train import small_text


def plain_kd_loss(student_logits, teacher_logits, targets, temperature, alpha, ignore_index=-100):
    """The loss as first written: whole float32 copies of the logits and boolean indexing of the kept tokens."""
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab).float()
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1]).float()[:, :vocab]
    y = targets.reshape(-1)
    ce = F.cross_entropy(s, y, ignore_index=ignore_index)
    if alpha >= 1.0:
        return ce
    keep = y != ignore_index
    kl = F.kl_div(F.log_softmax(s[keep] / temperature, -1), F.log_softmax(t[keep] / temperature, -1),
                  reduction="batchmean", log_target=True)
    return alpha * ce + (1 - alpha) * temperature**2 * kl


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_chunked_kd_loss_and_its_gradient_equal_the_plain_formula(alpha, dtype):
    torch.manual_seed(0)
    student = (3 * torch.randn(3, 7, 50)).to(dtype)
    teacher = 3 * torch.randn(3, 7, 64)  # a padded vocabulary: columns past the student's 50 do not count
    targets = torch.randint(0, 50, (3, 7))
    targets[0, :3] = targets[2, 6] = -100
    chunked, plain = student.clone().requires_grad_(), student.clone().requires_grad_()
    loss = kd_loss(chunked, teacher, targets, temperature=2.0, alpha=alpha, chunk_size=4)  # 21 tokens: 6 chunks
    expected = plain_kd_loss(plain, teacher, targets, temperature=2.0, alpha=alpha)
    (0.5 * loss).backward()  # an upstream gradient other than 1, as under gradient accumulation
    (0.5 * expected).backward()
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert chunked.grad.dtype == dtype
    torch.testing.assert_close(chunked.grad, plain.grad, rtol=1e-4, atol=1e-6)
    assert chunked.grad[0, :3].abs().max() == 0  # ignored tokens get no gradient
    with torch.no_grad():  # without a gradient (e.g. a frozen student): the same value
        assert kd_loss(student, teacher, targets, 2.0, alpha, chunk_size=5).item() == pytest.approx(loss.item())


def test_kd_loss_leaves_float32_inputs_unchanged_and_is_zero_without_kept_tokens():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 4, 9, requires_grad=True), torch.randn(2, 4, 9)
    before = student.detach().clone(), teacher.clone()
    kd_loss(student, teacher, torch.randint(0, 9, (2, 4)), 2.0, 0.5, chunk_size=3).backward()
    assert torch.equal(student.detach(), before[0]) and torch.equal(teacher, before[1])
    nothing = kd_loss(student, teacher, torch.full((2, 4), -100), 2.0, 0.5)
    nothing.backward()
    assert nothing.item() == 0 and math.isfinite(student.grad.sum().item())


@pytest.fixture(scope="module")
def float_teacher_logits(tiny_reference):
    """The tiny reference's logits on fixed ids, computed with LitGPT's own model on the CPU."""
    model = GPT(Config.from_file(tiny_reference / "model_config.yaml"))
    model.load_state_dict(torch.load(tiny_reference / "lit_model.pth", weights_only=True))
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return ids, model.eval()(ids)


@pytest.mark.parametrize(("quantize", "storage", "kind", "cosine"), [
    (None, torch.float32, torch.nn.Parameter, 0.999999),
    ("bnb.nf4", torch.uint8, bnb.nn.Params4bit, 0.98),
    ("bnb.int8", torch.int8, bnb.nn.Int8Params, 0.999),
])
def test_teacher_is_built_on_the_device_in_its_storage_and_matches_the_float_model(
        tiny_reference, float_teacher_logits, quantize, storage, kind, cosine):
    ids, expected = float_teacher_logits
    teacher = load_teacher(tiny_reference, "cpu", quantize)
    linears = [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 + 5 * 6  # the head, and qkv, proj, fc_1, fc_2, proj in each of the 6 blocks
    for layer in linears:
        assert type(layer.weight) is kind and layer.weight.dtype == storage and layer.weight.device.type == "cpu"
    assert teacher.transformer.wte.weight.dtype == torch.float32 and not teacher.transformer.wte.weight.requires_grad
    # The RoPE cache is not in the checkpoint: it is computed on the device, not left on the meta device.
    assert teacher.cos.device.type == "cpu" and teacher.cos.abs().sum() > 0 and teacher.sin.abs().sum() > 0
    teacher.max_seq_length = ids.shape[1]
    with torch.no_grad(), distill._quiet_bitsandbytes():
        logits = teacher(ids)
    assert logits.dtype == torch.float32
    assert F.cosine_similarity(logits.flatten(), expected.flatten(), 0) > cosine
    # and the tolerance tells the reference apart from another model of the same shape
    other = GPT(teacher.config).eval()
    with torch.no_grad():
        assert F.cosine_similarity(other(ids).flatten(), expected.flatten(), 0) < 0.5


@pytest.mark.parametrize(("quantize", "kind"), [("bnb.nf4", bnb.nn.Params4bit), ("bnb.int8", bnb.nn.Int8Params)])
def test_kd_arm_trains_with_a_quantized_teacher_on_cpu(tmp_path, tiny_reference, text_dirs, monkeypatch, quantize,
                                                       kind):
    teachers, calls = [], []

    def spy_teacher(*args, **kwargs):
        teachers.append(load_teacher(*args, **kwargs))
        return teachers[-1]

    def spy_loss(student_logits, teacher_logits, targets, temperature, alpha):
        calls.append({"kd": kd_loss(student_logits, teacher_logits, targets, temperature, alpha),
                      "ce": F.cross_entropy(student_logits.detach().flatten(0, 1), targets.flatten()).item(),
                      "teacher_finite": bool(teacher_logits.isfinite().all())})
        return calls[-1]["kd"]

    monkeypatch.setattr(distill, "load_teacher", spy_teacher)
    monkeypatch.setattr(distill, "kd_loss", spy_loss)
    out = tmp_path / "arms"
    rows = run_arms(
        reference_dir=tiny_reference, n_layers=2, data=small_text(tmp_path, text_dirs, n_train=1), out_dir=out,
        arms=["kd"], precision="32-true", devices=1, compile=False, kd_quantize=quantize, kd_alpha=0.5,
        train=TrainArgs(save_interval=None, log_interval=1, global_batch_size=2, micro_batch_size=2, lr_warmup_steps=1,
                        max_tokens=2 * 2 * 32, max_seq_length=32, max_norm=1.0, min_lr=1e-4),
        eval=EvalArgs(interval=2, max_iters=1, initial_validation=False, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
    )
    assert [r["arm"] for r in rows] == ["kd"] and (out / "kd" / "final" / "lit_model.pth").is_file()
    (teacher,) = teachers  # loaded once, quantized, on the run's device
    assert all(type(m.weight) is kind for m in teacher.modules() if isinstance(m, torch.nn.Linear))
    assert teacher.cos.device.type == "cpu"
    assert len(calls) == 2 and all(c["teacher_finite"] for c in calls)  # one per training step
    logged = [float(r["loss"]) for r in csv.DictReader(next(out.rglob("metrics.csv")).open()) if r.get("loss")]
    assert logged[0] == pytest.approx(calls[0]["kd"].item(), rel=1e-5)  # the distillation loss is what trained
    assert calls[0]["kd"].item() != pytest.approx(calls[0]["ce"], rel=1e-3)  # and the teacher's term is in it

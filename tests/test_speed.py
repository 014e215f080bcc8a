"""Speed options: same loss and gradients as LitGPT's stock path, one-line errors, and the benchmark's CPU smoke run."""

import sys
from pathlib import Path

import pytest
import torch

from litgpt_inheritune import speed
from litgpt_inheritune.errors import InherituneError

ROOT = Path(__file__).resolve().parents[1]


FAMILIES = ["open_llama_3b", "pythia-14m", "phi-2", "Qwen2.5-0.5B"]  # llama; neox; neox with a head bias; qwen


def _tiny_gpt(tie: bool = False, family: str = "open_llama_3b"):
    from litgpt import GPT, Config

    config = Config.from_name(
        family, n_layer=2, n_embd=32, n_head=4, n_query_groups=2, intermediate_size=64,
        vocab_size=100, padded_vocab_size=128, block_size=16, rotary_percentage=1.0,
    )
    torch.manual_seed(0)
    model = GPT(config)
    if tie:
        model.transformer.wte.weight = model.lm_head.weight
    return model


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_linear_cross_entropy_matches_cross_entropy_in_float64(chunk):
    g = torch.Generator().manual_seed(chunk)
    hidden = torch.randn(3, 5, 16, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(40, 16, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 40, (3, 5), generator=g)
    targets[0, 1] = targets[2, 4] = -100  # ignored positions count neither in the loss nor in the mean

    ref = torch.nn.functional.cross_entropy((hidden @ weight.T).reshape(-1, 40), targets.reshape(-1))
    ref_gh, ref_gw = torch.autograd.grad(ref * 0.37, (hidden, weight))
    loss = speed.linear_cross_entropy(hidden, weight, targets, chunk=chunk)
    gh, gw = torch.autograd.grad(loss * 0.37, (hidden, weight))

    assert torch.allclose(loss, ref, rtol=1e-12, atol=1e-12)
    assert torch.allclose(gh, ref_gh, rtol=1e-10, atol=1e-12)
    assert torch.allclose(gw, ref_gw, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(speed.linear_cross_entropy(hidden, weight, targets, chunk=chunk), ref)


@pytest.mark.parametrize("tie, family", [(False, f) for f in FAMILIES] + [(True, "open_llama_3b")])
def test_fused_head_gives_the_stock_loss_and_gradients_of_every_parameter(tie, family):
    from litgpt.utils import chunked_cross_entropy

    x = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(2))

    model = _tiny_gpt(tie, family)
    stock_loss = chunked_cross_entropy(model(x), y)
    stock_loss.backward()
    stock = _grads(model)

    model = _tiny_gpt(tie, family)
    model.lm_head.__class__ = speed._HiddenStatesHead
    hidden = model(x)
    assert hidden.shape == (2, 16, 32)  # the model now returns hidden states, not logits
    loss = speed.fused_loss(hidden, y, head=model.lm_head, stock=chunked_cross_entropy, chunk=5)
    loss.backward()
    fused = _grads(model)

    torch.testing.assert_close(loss, stock_loss, rtol=1e-5, atol=1e-6)
    assert fused.keys() == stock.keys()
    for name in stock:
        torch.testing.assert_close(fused[name], stock[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_loss_passes_logits_it_does_not_own_to_the_stock_loss():
    """LitGPT counts FLOPs on a meta-device copy whose head still returns logits: those go to the stock loss."""
    from litgpt.utils import chunked_cross_entropy

    model = _tiny_gpt()
    with torch.device("meta"):
        logits = torch.empty(2, 16, 128)
        targets = torch.zeros(2, 16, dtype=torch.long)
    seen = []

    def stock(*args, **kwargs):
        seen.append(args[0].shape)
        return chunked_cross_entropy(*args, **kwargs)

    speed.fused_loss(logits, targets, chunk_size=0, head=model.lm_head, stock=stock)
    assert seen == [torch.Size([2, 16, 128])]


@pytest.mark.parametrize("family", FAMILIES)
def test_activation_checkpointing_gives_equal_gradients_and_is_undone(family):
    from litgpt.model import Block

    x = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(3))
    model = _tiny_gpt(family=family)
    model(x).float().pow(2).mean().backward()
    stock = _grads(model)

    stock_forward = Block.forward
    model = _tiny_gpt(family=family)
    with speed.checkpoint_blocks():
        assert Block.forward is not stock_forward
        model(x).float().pow(2).mean().backward()
    assert Block.forward is stock_forward
    checkpointed = _grads(model)
    for name in stock:
        torch.testing.assert_close(checkpointed[name], stock[name], rtol=1e-5, atol=1e-7, msg=name)


def test_apply_patches_litgpt_only_inside_the_block():
    import litgpt.pretrain as pretrain
    from litgpt.model import Block

    fit, forward = pretrain.fit, Block.forward
    with speed.apply("fused_ce,checkpoint,cudnn_attention"):
        assert pretrain.fit is not fit and Block.forward is not forward
    assert pretrain.fit is fit and Block.forward is forward
    with speed.apply("none"):
        assert pretrain.fit is fit


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, ()),
        ("", ()),
        ("none", ()),
        ("fused_ce", ("fused_ce",)),
        ("checkpoint+fused_ce,checkpoint", ("checkpoint", "fused_ce")),
        (["cudnn_attention", "fused_ce"], ("cudnn_attention", "fused_ce")),
        ("default", speed.DEFAULT_OPTIONS),
        ("all", tuple(speed.OPTIONS)),
    ],
)
def test_parse(spec, expected):
    assert speed.parse(spec) == expected


@pytest.mark.parametrize("spec", ["fused_ce,bogus", ["fast"], [3], "Fused_CE"])
def test_parse_errors_are_one_line_and_name_the_choices(spec):
    with pytest.raises(InherituneError) as info:
        speed.parse(spec)
    message = str(info.value)
    assert "\n" not in message
    assert "fused_ce" in message and "checkpoint" in message


def test_apply_rejects_a_bad_chunk_size_in_one_line():
    with pytest.raises(InherituneError, match="fused_ce_chunk must be a positive"):
        with speed.apply("fused_ce", fused_ce_chunk=0):
            pass


def test_flops_per_token_matches_the_issue_mfu_convention():
    from litgpt import Config

    config = Config.from_name("open_llama_3b", n_layer=13)
    flops = speed.estimate_flops_per_token(config, 2048)
    # 40k tokens/s at about 46 % of the H100's 989 TFLOP/s, as the issue measured
    assert 0.45 < 40_000 * flops / speed.peak_bf16_flops("NVIDIA H100 80GB HBM3") < 0.47


def bench_module():
    """bench/train_speed.py as a module: its ``main(argv)`` is what `python bench/train_speed.py ARGS` runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "bench" / "train_speed.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["train_speed"] = bench  # its dataclass looks its module up
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules["train_speed"]
    return bench


def test_bench_cpu_smoke_run_prints_the_table(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs.jsonl"
    monkeypatch.chdir(tmp_path)
    bench_module().main(["--device", "cpu", "--tiny", "--steps", "4", "--warmup", "1", "--runs",
                         "stock,all,stock@mb=2,fused_ce@mb=2,precision=32-true", "--out", str(out)])
    stdout = capsys.readouterr().out
    table = stdout[stdout.index("| run |"):]
    for run in ("stock", "all", "stock@mb=2", "fused_ce@mb=2,precision=32-true"):
        assert f"| {run} |" in table
    rows = [line for line in out.read_text().splitlines() if '"run"' in line]
    assert len(rows) == 4
    import json

    stock, fused_all, stock_mb2, fused_mb2 = (json.loads(r) for r in rows)
    assert stock["tokens_per_s"] > 0 and fused_all["tokens_per_s"] > 0
    assert len(stock["loss"]) == 4
    # same data, seed and float32: the options do not change the loss curve (micro-batch 2 accumulates twice)
    for a, b in ((stock, fused_all), (stock_mb2, fused_mb2)):
        assert max(abs(x - y) for x, y in zip(a["loss"], b["loss"])) < 1e-4


def test_bench_rejects_a_bad_run_spec_in_one_line():
    with pytest.raises(SystemExit) as info:
        bench_module().main(["--device", "cpu", "--tiny", "--runs", "fast"])
    message = str(info.value.code)
    assert message.startswith("error: bad run spec 'fast'") and "\n" not in message


def test_bench_run_specs():
    bench = bench_module()
    runs = bench.split_runs("stock,checkpoint+fused_ce@optimizer=adamw8bit,mem=24,stock#2,all@mb=8")
    assert runs == ["stock", "checkpoint+fused_ce@optimizer=adamw8bit,mem=24", "stock#2", "all@mb=8"]
    assert bench.parse_spec(runs[1]) == (runs[1], ("checkpoint", "fused_ce"), {"optimizer": "adamw8bit", "mem": "24"})
    assert bench.parse_spec("stock#2") == ("stock#2", None, {})
    with pytest.raises(SystemExit, match="bad run spec"):
        bench.parse_spec("fused_ce@lr=1")


def test_bench_memory_estimate_runs_without_a_gpu(tmp_path, capsys, monkeypatch):
    import json

    out = tmp_path / "mem.jsonl"
    monkeypatch.chdir(tmp_path)
    bench_module().main(["--device", "cpu", "--tiny", "--estimate_memory", "--precision", "bf16-mixed", "--runs",
                         "stock,fused_ce+checkpoint@optimizer=adamw8bit", "--out", str(out)])
    assert "| stock | 4 | bf16-mixed | AdamW (fused) |" in capsys.readouterr().out
    stock, lean = (json.loads(line) for line in out.read_text().splitlines() if '"run"' in line)
    assert stock["param_gib"] == pytest.approx(lean["param_gib"])
    # AdamW's two float32 states per value against two uint8 states (plus block scales) of bitsandbytes' 8-bit AdamW
    assert lean["opt_gib"] < 0.3 * stock["opt_gib"]
    assert 0 < lean["total_gib"] < stock["total_gib"]

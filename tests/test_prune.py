"""The width and pruning commands end to end on a tiny llama-shaped reference (GQA, tied embeddings) with SmolLM2's
real tokenizer and real English text: exact target shapes, loadable checkpoints, importance that sees a dead query
group, resumption (a DomainMixture's weights included), memory options that leave the gradients as they were,
bad input."""

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from litgpt import GPT, Config
from litgpt.args import EvalArgs, TrainArgs
from litgpt.data import TextFiles

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.pruning.masks import PrunableGPT, PruningMasks
from litgpt_inheritune.pruning.training import prune
from litgpt_inheritune.pruning.width import build_width_child

from test_data_mixture import text_mixture  # noqa: F401  (a fixture: two real domains, tokenized)

TARGET = {"n_layer": 4, "n_embd": 24, "n_head": 2, "n_query_groups": 1, "intermediate_size": 40}


def load(directory: Path):
    config = Config.from_file(directory / "model_config.yaml")
    model = GPT(config)
    model.load_state_dict(torch.load(directory / "lit_model.pth"))
    return config, model


@pytest.fixture
def dead_group_reference(tmp_path, tiny_reference):
    """The tiny reference with the value rows of key/value group 1 zeroed in every block: its heads output nothing."""
    import shutil

    directory = tmp_path / "dead-group"
    shutil.copytree(tiny_reference, directory)
    config = Config.from_file(directory / "model_config.yaml")
    state = torch.load(directory / "lit_model.pth")
    hs, q_size, kv_size = config.head_size, config.n_head * config.head_size, config.n_query_groups * config.head_size
    for i in range(config.n_layer):
        state[f"transformer.h.{i}.attn.qkv.weight"][q_size + kv_size + hs:q_size + 2 * kv_size] = 0
    torch.save(state, directory / "lit_model.pth")
    return directory


def test_width_child_has_the_target_shape_and_drops_a_dead_group(tmp_path, dead_group_reference, raw_text):
    out = tmp_path / "width"
    child, keep = build_width_child(dead_group_reference, TARGET, raw_text, out, n_sequences=4, seq_len=32,
                                    device="cpu")
    assert all(g == [0] for g in keep.groups)  # group 1's heads are silent, so group 0 is kept in every block
    config, model = load(out)
    assert {k: getattr(config, k) for k in TARGET} == TARGET and config.head_size == 8
    state = model.state_dict()
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])  # still tied
    hf = json.loads((out / "config.json").read_text())
    assert (hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"], hf["intermediate_size"],
            hf["num_hidden_layers"]) == (24, 2, 1, 40, 4)
    record = json.loads((out / "inheritune.json").read_text())
    assert record["method"] == "width" and record["target"] == TARGET and record["parameters"] < record["reference_parameters"]
    scores = torch.load(out / "importance.pt")
    assert scores["head"].shape == (6, 4) and torch.all(scores["head"][:, 2:] == 0) and torch.all(scores["head"][:, :2] > 0)
    model(torch.randint(0, 100, (1, 8)))  # runs at the new shape


def test_width_refuses_bad_input_before_work(tmp_path, tiny_reference, raw_text):
    out = tmp_path / "width"
    out.mkdir()
    (out / "lit_model.pth").write_text("keep me")
    with pytest.raises(InherituneError, match="already holds"):
        build_width_child(tiny_reference, TARGET, raw_text, out)
    assert (out / "lit_model.pth").read_text() == "keep me"
    with mock.patch("litgpt_inheritune.pruning.importance.activation_importance", side_effect=AssertionError("no work")):
        with pytest.raises(InherituneError, match="from 1 to"):
            build_width_child(tiny_reference, {"n_embd": 64}, raw_text, tmp_path / "w2")
        with pytest.raises(InherituneError, match="head size"):
            build_width_child(tiny_reference, "pythia-14m", raw_text, tmp_path / "w2")
    assert not (tmp_path / "w2").exists()


TRAIN = TrainArgs(save_interval=2, log_interval=1, global_batch_size=2, micro_batch_size=1, lr_warmup_steps=1,
                  max_seq_length=32, max_norm=1.0, min_lr=1e-5)
EVAL = EvalArgs(interval=2, max_iters=2)


def run_prune(reference, text_dirs, out, steps=4, **kwargs):
    data = TextFiles(train_data_path=text_dirs[0], val_data_path=text_dirs[1], num_workers=0)
    return prune(reference, TARGET, data, out, steps=steps, train=TRAIN, eval=EVAL, lagrangian_warmup_steps=2, lr=1e-3,
                 mask_lr=0.5, lambda_lr=0.5, precision="32-true", **kwargs)


def test_prune_extracts_the_target_shape(tmp_path, tiny_reference, text_dirs):
    final = run_prune(tiny_reference, text_dirs, tmp_path / "prune")
    config, model = load(final)
    assert {k: getattr(config, k) for k in TARGET} == TARGET
    state = model.state_dict()
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    metrics = [json.loads(line) for line in (tmp_path / "prune" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert set(metrics[-1]["masks"]) == {"layer", "group", "intermediate", "hidden"}  # 2 heads per group stay 2
    assert metrics[-1]["masks"]["hidden"]["target_sparsity"] == pytest.approx(1 - 24 / 32)
    assert "val_loss" in metrics[1] and "val_loss" in metrics[3]
    record = json.loads((final / "inheritune.json").read_text())
    assert record["method"] == "prune" and len(record["layers"]) == 4
    # The extracted child computes what the trained masked model computes with its deterministic masks.
    saved = torch.load(tmp_path / "prune" / "prune_state.pth", weights_only=False)["model"]
    reference_config = Config.from_file(tiny_reference / "model_config.yaml")
    masked_model = PrunableGPT(GPT(reference_config), TARGET)
    masked_model.load_state_dict(saved)
    masked_model.eval()
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.eval()(ids), masked_model(ids), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(masked_model.gpt.transformer.h[0].attn.qkv.weight,
                              torch.load(tiny_reference / "lit_model.pth")["transformer.h.0.attn.qkv.weight"])


def test_the_training_model_and_optimizer_are_let_go_before_the_extraction(tmp_path, tiny_reference, text_dirs):
    """The extraction reads the saved state back: the training model, its gradients and AdamW's states must be gone by
    then (each a model's size: a 7B prune's peak would otherwise be at its very end)."""
    import gc
    import weakref

    from litgpt_inheritune.pruning import shapes

    references, alive = [], []
    stock_step, stock_extract = torch.optim.AdamW.step, shapes.prune_state_dict

    def step(self, *args, **kwargs):
        result = stock_step(self, *args, **kwargs)
        if not references:  # after the first step: every parameter, its gradient and its AdamW states
            tensors = [p for group in self.param_groups for p in group["params"]]
            tensors += [p.grad for p in tensors if p.grad is not None]
            tensors += [t for state in self.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
            references.extend(weakref.ref(t) for t in tensors)
            references.append(weakref.ref(self))
        return result

    def extract(*args, **kwargs):
        gc.collect()
        alive.append(sum(r() is not None for r in references))
        return stock_extract(*args, **kwargs)

    with mock.patch.object(torch.optim.AdamW, "step", step), mock.patch.object(shapes, "prune_state_dict", extract):
        run_prune(tiny_reference, text_dirs, tmp_path / "prune", steps=2)
    assert len(references) > 100 and alive == [0]  # before: 261 of 261 alive


def test_prune_resumes_where_it_stopped(tmp_path, tiny_reference, text_dirs):
    straight = run_prune(tiny_reference, text_dirs, tmp_path / "straight", steps=6)
    calls = {"n": 0}
    original = PruningMasks.clamp_

    def interrupt_after_three(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    with mock.patch.object(PruningMasks, "clamp_", interrupt_after_three), pytest.raises(KeyboardInterrupt):
        run_prune(tiny_reference, text_dirs, tmp_path / "resumed", steps=6)
    assert not (tmp_path / "resumed" / "final").exists()
    with pytest.raises(InherituneError, match="other settings"):
        run_prune(tiny_reference, text_dirs, tmp_path / "resumed", steps=7)
    # resume defaults to auto: from step 2; the second half recomputes every block in backward, to the same numbers
    resumed = run_prune(tiny_reference, text_dirs, tmp_path / "resumed", steps=6, speed="checkpoint")
    a, b = torch.load(straight / "lit_model.pth"), torch.load(resumed / "lit_model.pth")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    losses = lambda d: {m["step"]: m["loss"] for m in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())}
    first, second = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    for step in (5, 6):
        assert second[step] == pytest.approx(first[step], rel=1e-5)


def test_prune_refuses_bad_input_before_work(tmp_path, tiny_reference, text_dirs):
    from dataclasses import replace

    with mock.patch("lightning.Fabric", side_effect=AssertionError("no work")):
        with pytest.raises(InherituneError, match=r"max_seq_length 4096 is longer than the reference's block_size 128; "
                                                  r"pass --train.max_seq_length 128 or less"):
            prune(tiny_reference, TARGET, TextFiles(text_dirs[0]), tmp_path / "p", 2, replace(TRAIN, max_seq_length=4096), EVAL)
        with pytest.raises(InherituneError, match="fused_ce"):
            prune(tiny_reference, TARGET, TextFiles(text_dirs[0]), tmp_path / "p", 2, TRAIN, EVAL, speed="fused_ce")
        with pytest.raises(InherituneError, match="heads per key/value group"):
            prune(tiny_reference, {"n_head": 4, "n_query_groups": 1}, TextFiles(text_dirs[0]), tmp_path / "p", 2, TRAIN, EVAL)
        with pytest.raises(InherituneError, match="--steps"):
            prune(tiny_reference, TARGET, TextFiles(text_dirs[0]), tmp_path / "p", 0, TRAIN, EVAL)
        with pytest.raises(InherituneError, match="--data is required"):
            prune(tiny_reference, TARGET, None, tmp_path / "p", 2, TRAIN, EVAL)
    assert not (tmp_path / "p").exists()
    # the batch split needs the launched world: checked right after the launch, before the first byte
    with pytest.raises(InherituneError, match="is not a multiple of 1 process x --train.micro_batch_size"):
        prune(tiny_reference, TARGET, TextFiles(text_dirs[0]), tmp_path / "p", 2,
              replace(TRAIN, global_batch_size=3, micro_batch_size=2), EVAL, devices=1)
    assert not (tmp_path / "p").exists()


def test_prune_defaults_to_litgpts_precision(tmp_path, tiny_reference, text_dirs):
    from litgpt.utils import get_default_supported_precision

    with mock.patch("litgpt_inheritune.rundir.launch", side_effect=KeyboardInterrupt) as launch:
        with pytest.raises(KeyboardInterrupt):
            prune(tiny_reference, TARGET, TextFiles(text_dirs[0]), tmp_path / "p", 2, TRAIN, EVAL)
    assert launch.call_args.args[3] == get_default_supported_precision(training=True) == "bf16-mixed"


def test_memory_savers_leave_the_gradients_as_they_were(tiny_reference):
    """The gated projections' inputs (which keep only the product), the recomputed masked norms and activation
    checkpointing of every block give the gradients of plain autograd over the same masked model, masks included."""
    from litgpt_inheritune import speed

    config = Config.from_file(tiny_reference / "model_config.yaml")
    reference = GPT(config)
    reference.load_state_dict(torch.load(tiny_reference / "lit_model.pth"))
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))

    def gradients(plain: bool, checkpointing: bool) -> dict:
        torch.manual_seed(1)
        with mock.patch("torch.utils.checkpoint.checkpoint", lambda f, *a, **k: f(*a)) if plain else mock.MagicMock():
            model = PrunableGPT(GPT(config), TARGET)  # the hooks take checkpoint when they are registered
        model.gpt.load_state_dict(reference.state_dict())
        with torch.no_grad():
            for gate in model.masks.gates.values():
                gate.log_alpha.uniform_(-2.0, 4.0)  # samples spread over [0, 1], some exactly 0 or 1
        model.generator = torch.Generator().manual_seed(2)
        model.train()
        with (mock.patch("litgpt_inheritune.pruning.masks.scale_last", lambda x, s: x * s.to(x.dtype)) if plain
              else mock.MagicMock()), (speed.checkpoint_blocks() if checkpointing else mock.MagicMock()):
            logits, constraint = model(ids[:, :-1], lagrangian=(1, 2))
            (torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()) + constraint).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    expected = gradients(plain=True, checkpointing=False)
    assert all(expected[f"masks.gates.{t}.log_alpha"].abs().sum() > 0 for t in ("layer", "group", "intermediate", "hidden"))
    for checkpointing in (False, True):
        got = gradients(plain=False, checkpointing=checkpointing)
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_resumed_prune_keeps_the_domain_weights_it_reached(tmp_path, tiny_reference, text_mixture):  # noqa: F811
    """Dynamic batch loading moved the weights at step 2; interrupted at step 3 and resumed from the step-2 save, the
    run updates those weights at step 4, not the initial ones."""
    from litgpt_inheritune.data.dbl import dbl_update
    from litgpt_inheritune.data.mixture import DomainMixture

    references = {"code": 9.0, "prose": 11.0}
    out = tmp_path / "prune"

    def run():
        data = DomainMixture(text_mixture, num_workers=0, dynamic=True, reference_losses=references)
        return prune(tiny_reference, {"n_layer": 4, "n_embd": 24}, data, out, 4,
                     TrainArgs(save_interval=2, log_interval=1, global_batch_size=2, micro_batch_size=2,
                               lr_warmup_steps=1, max_seq_length=32, max_norm=1.0, min_lr=1e-5),
                     EvalArgs(interval=2, max_iters=2), precision="32-true")

    original, calls = PruningMasks.clamp_, {"n": 0}

    def interrupt_at_three(self):
        original(self)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    with mock.patch.object(PruningMasks, "clamp_", interrupt_at_three), pytest.raises(KeyboardInterrupt):
        run()
    # A state saved before the loader's state was (an older version): one line that says what to do, nothing changed
    state_path = out / "prune_state.pth"
    saved = state_path.read_bytes()
    old = torch.load(state_path, weights_only=False)
    del old["train_dataloader"]
    torch.save(old, state_path)
    metrics = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(InherituneError, match="older version.*--overwrite true"):
        run()
    assert (out / "metrics.jsonl").read_bytes() == metrics
    state_path.write_bytes(saved)
    run()
    evals = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "domain_weights" in r}
    assert sorted(evals) == [2, 4]
    initial = DomainMixture(text_mixture).initial_weights()
    assert evals[2]["domain_weights"] != pytest.approx(initial)
    expected = dbl_update(evals[2]["domain_weights"], evals[4]["domain_losses"], references)
    assert evals[4]["domain_weights"] == pytest.approx(expected, rel=1e-9)
    assert evals[4]["domain_weights"] != pytest.approx(dbl_update(initial, evals[4]["domain_losses"], references))

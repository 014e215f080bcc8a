"""Width and shape: exactness of the state-dict transform, the learned masks and their extraction, on tiny random
LitGPT models of several families (grouped-query and multi-head attention, RMSNorm and LayerNorm, biases,
parallel residual, tied embeddings)."""

import pytest
import torch
from litgpt import GPT, Config

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.pruning.masks import PrunableGPT, PruningMasks, extraction, masked
from litgpt_inheritune.pruning.shapes import Keep, full_keep, prune_state_dict, target_sizes, top_k_keep

VOCAB, SEQ = 96, 12
TINY = dict(n_layer=4, n_embd=32, head_size=8, intermediate_size=48, block_size=32, vocab_size=VOCAB,
            padded_vocab_size=VOCAB)
FAMILIES = {
    "llama-gqa": ("SmolLM2-135M", dict(n_head=6, n_query_groups=2)),  # 3 query heads per group
    "pythia-mha": ("pythia-14m", dict(n_head=4)),  # LayerNorm, biases, parallel residual
    "phi-2": ("phi-2", dict(n_head=4, n_embd=40, head_size=10, intermediate_size=80)),  # partial RoPE, shared norm
    "qwen3-qknorm": ("Qwen3-0.6B", dict(n_head=4, n_query_groups=2)),
    "olmo2": ("OLMo-2-1124-7B", dict(n_head=4, n_query_groups=4)),  # q/k norms over all heads
    "gemma-2": ("gemma-2-2b", dict(n_head=4, n_query_groups=2, sliding_window_size=4, attention_scores_scalar=8)),
}


def tiny(family: str) -> Config:
    name, overrides = FAMILIES[family]
    return Config.from_name(name, **{**TINY, **overrides})


def random_model(config: Config, seed: int = 0, tie: bool = False) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if ("norm" in name or "ln_f" in name) else 0.2 * torch.randn_like(p))
    if tie:
        model.lm_head.weight = model.transformer.wte.weight
    return model.eval()


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def build(config: Config, state: dict) -> GPT:
    model = GPT(config)
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_keeping_everything_is_the_identity(family):
    config = tiny(family)
    model = random_model(config)
    child, state = prune_state_dict(config, model.state_dict(), full_keep(config))
    from dataclasses import replace

    assert child.name == f"{config.name}-inheritune-{config.n_layer}L"  # a child's name says what it is
    assert replace(child, name=config.name) == config
    reference = model.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in state)
    assert torch.equal(build(child, state)(tokens()), model(tokens()))


@pytest.mark.parametrize("family", ["llama-gqa", "pythia-mha", "qwen3-qknorm", "gemma-2"])
def test_pruning_heads_channels_and_blocks_equals_silencing_them(family):
    """Dropped heads, groups, MLP channels and blocks compute what the reference computes with them silenced."""
    config = tiny(family)
    model = random_model(config)
    q = config.n_head // config.n_query_groups
    layers = [0, 2, 3]
    groups = [[g for g in range(config.n_query_groups) if config.n_query_groups == 1 or g != j % config.n_query_groups]
              for j in range(len(layers))]
    per_group = max(1, q - 1)
    heads = [sorted(g * q + h for g in gs for h in ([0, 2][:per_group] if q == 3 else range(per_group))) for gs in groups]
    inter = [sorted(torch.randperm(config.intermediate_size, generator=torch.Generator().manual_seed(j))[:30].tolist())
             for j in range(len(layers))]
    keep = Keep(layers=layers, hidden=list(range(config.n_embd)), groups=groups, heads=heads, intermediate=inter)
    child, state = prune_state_dict(config, model.state_dict(), keep)
    assert (child.n_layer, child.n_head, child.intermediate_size) == (3, len(heads[0]), 30)
    assert child.n_query_groups == len(groups[0]) and child.head_size == config.head_size

    silenced = {k: v.clone() for k, v in model.state_dict().items()}
    hs = config.head_size
    for j, i in enumerate(layers):
        head_mask = torch.zeros(config.n_head)
        head_mask[heads[j]] = 1
        silenced[f"transformer.h.{i}.attn.proj.weight"] *= head_mask.repeat_interleave(hs)[None, :]
        channel_mask = torch.zeros(config.intermediate_size)
        channel_mask[inter[j]] = 1
        silenced[f"transformer.h.{i}.mlp.proj.weight"] *= channel_mask[None, :]
    from litgpt_inheritune.inherit import inherit

    depth_child, depth_state = inherit(config, silenced, layers)
    expected = build(depth_child, depth_state)(tokens())
    torch.testing.assert_close(build(child, state)(tokens()), expected, rtol=1e-5, atol=1e-5)


def test_prune_slices_norms_and_keeps_tied_embeddings_tied():
    config = tiny("llama-gqa")
    model = random_model(config, tie=True)
    keep = full_keep(config, [0, 1])
    keep.hidden = [1, 3, 4, 8, 9, 10, 20, 31]
    child, state = prune_state_dict(config, model.state_dict(), keep)
    assert child.n_embd == 8
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    assert torch.equal(state["transformer.h.1.norm_2.weight"], model.transformer.h[1].norm_2.weight[keep.hidden])
    assert torch.equal(state["transformer.ln_f.weight"], model.transformer.ln_f.weight[keep.hidden])
    build(child, state)  # loads strictly at the new sizes


def test_top_k_keeps_whole_query_groups():
    config = tiny("llama-gqa")  # 6 heads, 2 groups of 3
    sizes = target_sizes(config, {"n_head": 2, "n_query_groups": 1, "n_embd": 16, "intermediate_size": 8})
    head = torch.tensor([[1.0, 1, 1, 5, 0, 0]] * config.n_layer)  # group 0 sums 3, group 1 sums 5
    keep = top_k_keep(config, sizes, [0, 1], torch.arange(32.0), head, torch.arange(48.0).repeat(4, 1))
    assert keep.groups == [[1], [1]]
    assert keep.heads[0] == [3, 4] or keep.heads[0] == [3, 5]
    assert keep.hidden == list(range(16, 32))
    assert keep.intermediate[0] == list(range(40, 48))


def test_target_sizes_checks():
    config = tiny("llama-gqa")
    assert target_sizes(config, {"n_layer": 2})["n_embd"] == 32
    with pytest.raises(InherituneError, match="from 1 to"):
        target_sizes(config, {"n_embd": 64})
    with pytest.raises(InherituneError, match="heads per key/value group"):
        target_sizes(config, {"n_head": 4, "n_query_groups": 1})
    with pytest.raises(InherituneError, match="not a multiple"):
        target_sizes(config, {"n_head": 5, "n_query_groups": 2})
    with pytest.raises(InherituneError, match="unknown sizes"):
        target_sizes(config, {"n_heads": 2})
    with pytest.raises(InherituneError, match="head size"):
        target_sizes(config, {"head_size": 4})
    with pytest.raises(InherituneError, match="unknown --target"):
        target_sizes(config, "no-such-model")
    smol = Config.from_name("SmolLM2-135M")
    assert target_sizes(smol, "SmolLM2-135M") == {k: getattr(smol, k) for k in
                                                 ("n_layer", "n_embd", "n_head", "n_query_groups", "intermediate_size")}
    with pytest.raises(InherituneError, match="head size"):
        target_sizes(smol, "pythia-14m")
    gemma = tiny("gemma-2")
    with pytest.raises(InherituneError, match="sqrt"):
        target_sizes(gemma, {"n_embd": 16})


MASK_CASES = {
    "llama-groups": ("llama-gqa", {"n_layer": 3, "n_embd": 20, "n_query_groups": 1, "n_head": 3, "intermediate_size": 30}),
    "llama-heads-in-groups": ("llama-gqa", {"n_embd": 24, "n_head": 4, "n_query_groups": 2}),
    "pythia": ("pythia-mha", {"n_layer": 2, "n_embd": 24, "n_head": 2, "n_query_groups": 2, "intermediate_size": 16}),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_extracted_model_equals_masked_model(case):
    family, target = MASK_CASES[case]
    config = tiny(family)
    tie = family == "llama-gqa"
    model = PrunableGPT(random_model(config, tie=tie), target_sizes(config, target))
    torch.manual_seed(3)
    with torch.no_grad():
        for gate in model.masks.gates.values():
            gate.log_alpha.uniform_(-2.0, 4.0)  # deterministic values spread between 0 and 1
    model.eval()
    masked_out = model(tokens())
    keep, scales = extraction(model.masks, config)
    child, state = prune_state_dict(config, model.gpt.state_dict(), keep, scales)
    assert {k: getattr(child, k) for k in target} == target
    torch.testing.assert_close(build(child, state)(tokens()), masked_out, rtol=1e-4, atol=1e-4)
    if tie:
        assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])


@pytest.mark.parametrize("family", ["llama-gqa", "pythia-mha"])
def test_all_masks_at_one_equals_the_reference(family):
    config = tiny(family)
    model = random_model(config)
    expected = model(tokens())
    ones = {"head": torch.ones(config.n_layer, config.n_head), "intermediate": torch.ones(config.n_layer, config.intermediate_size),
            "hidden": torch.ones(config.n_embd), "layer": torch.ones(config.n_layer)}
    with masked(model, lambda: ones):
        torch.testing.assert_close(model(tokens()), expected, rtol=1e-5, atol=1e-5)


def test_lagrangian_drives_expected_sizes_to_the_target():
    """Masks and multipliers alone (no LM loss): gradient descent on the masks and ascent on the lambdas bring
    every mask type's expected sparsity to its target."""
    config = tiny("llama-gqa")
    masks = PruningMasks(config, target_sizes(config, {"n_layer": 2, "n_embd": 16, "n_query_groups": 1,
                                                       "n_head": 3, "intermediate_size": 12}))
    optimizer = torch.optim.AdamW(
        [{"params": list(masks.gates.parameters()), "lr": 0.1, "weight_decay": 0.0},
         {"params": list(masks.lambdas.parameters()), "lr": 0.1, "weight_decay": 0.0, "maximize": True}])
    for step in range(400):
        loss, stats = masks.lagrangian(step, warmup_steps=100)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        masks.clamp_()
    _, stats = masks.lagrangian(400, warmup_steps=100)
    for name, s in stats.items():
        assert s["target_sparsity"] > 0.4
        assert abs(s["expected_sparsity"] - s["target_sparsity"]) < 0.05, (name, s)
    expected = masks.expected_sizes()
    assert abs(expected["layer"] - 2) < 0.4 and abs(expected["hidden"] - 16) < 2

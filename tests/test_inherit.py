"""Fast CPU tests of the inheritance functions and the checkpoint writer, on tiny random LitGPT models.

Every reference model here has 6 blocks of width 32 (40 for phi-2) and a 128-token vocabulary, with all
parameters (norms and biases included) drawn at random so that no tensor keeps its default value.
"""

import json
from pathlib import Path

import pytest
import torch
from litgpt import GPT, Config
from litgpt.model import do_softcapping
from litgpt.utils import save_config

from litgpt_inheritune.checkpoint import atomic_dir, child_hf_config, write_checkpoint
from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.inherit import (
    PARTS,
    child_config,
    child_key_sources,
    inherit,
    part_of,
    reference_ties_embeddings,
    resolve_layers,
    resolve_parts,
)

DEPTH = 6
VOCAB = 128
SEQ = 16  # longer than the sliding windows below, so windowed and global blocks differ

TINY = dict(
    n_layer=DEPTH, n_embd=32, n_head=4, head_size=8, intermediate_size=64, block_size=64,
    vocab_size=VOCAB, padded_vocab_size=VOCAB,
)

# LitGPT config name and the overrides that keep each family tiny but valid.
FAMILIES = {
    "llama": ("SmolLM2-135M", dict(n_query_groups=2)),
    "llama-3.2 (rope_adjustments)": ("Llama-3.2-1B", dict(n_query_groups=2)),
    "pythia": ("pythia-14m", dict()),
    "gemma-2": ("gemma-2-2b", dict(n_query_groups=2, sliding_window_size=4, attention_scores_scalar=8)),
    "gemma-3": ("gemma-3-1b-it", dict(n_query_groups=2, sliding_window_size=4, attention_scores_scalar=8)),
    # phi-2 rotates 40% of each head: head_size 10 gives 4 rotary dims (an even count, as RoPE needs).
    "phi-2": ("phi-2", dict(n_embd=40, head_size=10, intermediate_size=80)),
    "falcon": ("falcon-7b", dict(n_query_groups=1)),
    "qwen3": ("Qwen3-0.6B", dict(n_query_groups=2)),
    "olmo2": ("OLMo-2-1124-7B", dict(n_query_groups=4)),
}

# Child layer choices: a prefix, an explicit list with the last block, and a reordered list.
LAYER_CHOICES = {
    "first-3": [0, 1, 2],
    "first-1": [0],
    "0-1-last": [0, 1, DEPTH - 1],
    "reordered": [5, 0, 3],
}


def tiny_config(family: str) -> Config:
    name, overrides = FAMILIES[family]
    return Config.from_name(name, **{**TINY, **overrides})


def randomize(model: GPT, seed: int) -> GPT:
    """Draws every parameter at random; norm weights stay around 1 so activations keep a sane scale."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "norm" in name or "ln_f" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)
    return model.eval()


def reference_model(family: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return randomize(GPT(tiny_config(family)), seed)


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def load_child(config: Config, state_dict) -> GPT:
    model = GPT(config)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def run_with_block_outputs(model: GPT, idx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The model's logits and the hidden state after each of its blocks."""
    outputs: list[torch.Tensor] = []
    handles = [block.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for block in model.transformer.h]
    try:
        with torch.no_grad():
            logits = model(idx)
    finally:
        for handle in handles:
            handle.remove()
    assert len(outputs) == len(model.transformer.h)
    return outputs, logits


def run_reference_blocks(model: GPT, idx: torch.Tensor, layers) -> torch.Tensor:
    """The hidden state after running the reference's blocks ``layers`` in that order, as GPT.forward would
    run them: same embedding scale, and each block gets the RoPE (global or local) its own index selects."""
    T = idx.size(1)
    cos, sin = model.cos[:T].unsqueeze(0), model.sin[:T].unsqueeze(0)
    rope = model.config.rope_indices
    with torch.no_grad():
        x = model.transformer.wte(idx)
        if model.config.scale_embeddings:
            x = x * torch.tensor(model.config.n_embd**0.5, dtype=x.dtype)
        for i in layers:
            c, s = (cos[..., rope[i]], sin[..., rope[i]]) if rope is not None else (cos, sin)
            x = model.transformer.h[i](x, c, s)
    return x


def head(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """The reference's final norm and LM head (with its logit softcapping) applied to a hidden state."""
    with torch.no_grad():
        logits = model.lm_head(model.transformer.ln_f(x))
        if model.config.final_logit_softcapping is not None:
            logits = do_softcapping(logits, model.config.final_logit_softcapping)
    return logits


# --------------------------------------------------------------------------------------------------------------
# 1. Exactness across architectures
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reference_block_runner_matches_gpt_forward(family):
    """The helper that runs chosen reference blocks reproduces GPT.forward when given every block in order."""
    reference = reference_model(family)
    idx = tokens()
    outputs, logits = run_with_block_outputs(reference, idx)
    hidden = run_reference_blocks(reference, idx, range(DEPTH))
    assert torch.equal(hidden, outputs[-1])
    assert torch.equal(head(reference, hidden), logits)


@pytest.mark.parametrize("choice", list(LAYER_CHOICES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_child_computes_exactly_what_the_reference_blocks_compute(family, choice):
    layers = LAYER_CHOICES[choice]
    reference = reference_model(family)
    config = reference.config
    child_cfg, state_dict = inherit(config, reference.state_dict(), layers)
    assert child_cfg.n_layer == len(layers)
    child = load_child(child_cfg, state_dict)

    idx = tokens()
    ref_outputs, _ = run_with_block_outputs(reference, idx)
    child_outputs, child_logits = run_with_block_outputs(child, idx)

    if layers == list(range(len(layers))):
        # A prefix: the child's last hidden state is the reference's after block layers[-1], bit for bit.
        assert torch.equal(child_outputs[-1], ref_outputs[layers[-1]])
    # Block by block, the child's block k does what reference block layers[k] does after layers[:k].
    for k in range(len(layers)):
        assert torch.equal(child_outputs[k], run_reference_blocks(reference, idx, layers[: k + 1])), f"block {k}"
    # The child's logits are the reference's final norm and head applied to that hidden state.
    assert torch.equal(child_logits, head(reference, child_outputs[-1]))


def test_exactness_check_can_fail():
    """Guard against a vacuous test: a child missing one block's weights does not match."""
    reference = reference_model("llama")
    child_cfg, state_dict = inherit(reference.config, reference.state_dict(), [0, 1, 2])
    state_dict = dict(state_dict)
    key = "transformer.h.1.mlp.fc_1.weight"
    state_dict[key] = state_dict[key] + 1e-3
    child = load_child(child_cfg, state_dict)
    idx = tokens()
    ref_outputs, _ = run_with_block_outputs(reference, idx)
    child_outputs, _ = run_with_block_outputs(child, idx)
    assert torch.equal(child_outputs[0], ref_outputs[0])
    assert not torch.equal(child_outputs[2], ref_outputs[2])


def test_child_state_dict_is_a_copy_of_the_reference():
    """The child's tensors do not share storage with the reference's (it may be a memory-mapped file)."""
    reference = reference_model("pythia")
    state = reference.state_dict()
    _, child_state = inherit(reference.config, state, [0, 2])
    assert child_state["transformer.h.1.attn.qkv.weight"].data_ptr() != state["transformer.h.2.attn.qkv.weight"].data_ptr()
    assert torch.equal(child_state["transformer.h.1.attn.qkv.weight"], state["transformer.h.2.attn.qkv.weight"])


def test_inherit_from_memory_mapped_checkpoint(tmp_path):
    reference = reference_model("qwen3")
    torch.save(reference.state_dict(), tmp_path / "lit_model.pth")
    mapped = torch.load(tmp_path / "lit_model.pth", mmap=True, weights_only=True)
    child_cfg, state_dict = inherit(reference.config, mapped, [0, 4])
    child = load_child(child_cfg, state_dict)
    idx = tokens()
    outputs, logits = run_with_block_outputs(child, idx)
    assert torch.equal(outputs[-1], run_reference_blocks(reference, idx, [0, 4]))
    assert torch.equal(logits, head(reference, outputs[-1]))


# --------------------------------------------------------------------------------------------------------------
# 2. Per-layer settings (gemma-2 sliding windows, gemma-3 sliding windows and local/global RoPE)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gemma-2", "gemma-3"])
@pytest.mark.parametrize("layers", [[5, 0, 1], [1, 2, 5], [3], [0, 1, 2, 3, 4, 5]])
def test_per_layer_config_lists_are_sliced(family, layers):
    config = tiny_config(family)
    assert len(config.sliding_window_indices) == DEPTH
    child = child_config(config, layers)
    assert child.n_layer == len(layers)
    assert child.sliding_window_indices == [config.sliding_window_indices[i] for i in layers]
    if config.rope_indices is None:
        assert child.rope_indices is None
    else:
        assert child.rope_indices == [config.rope_indices[i] for i in layers]
    # Nothing else changes.
    for key in ("n_embd", "n_head", "n_query_groups", "head_size", "sliding_window_size", "rope_local_base_freq",
                "attention_logit_softcapping", "final_logit_softcapping"):
        assert getattr(child, key) == getattr(config, key)
    assert child.name == f"{config.name}-inheritune-{len(layers)}L"  # the reference's name stays its prefix
    # The reference config is not modified.
    assert config.n_layer == DEPTH and len(config.sliding_window_indices) == DEPTH


@pytest.mark.parametrize("family", ["gemma-2", "gemma-3"])
def test_per_layer_slicing_matters_for_non_prefix_layers(family):
    """With the per-layer lists of the first blocks instead of the chosen ones, the child would compute
    something else; with the sliced lists it computes what the chosen reference blocks compute."""
    layers = [5, 0, 1]  # gemma-2: windows [0, 1, 0] vs prefix [1, 0, 1]; gemma-3: [0, 1, 1] vs [1, 1, 1]
    reference = reference_model(family)
    child_cfg, state_dict = inherit(reference.config, reference.state_dict(), layers)
    prefix_cfg = child_config(reference.config, [0, 1, 2])
    assert child_cfg.sliding_window_indices != prefix_cfg.sliding_window_indices

    idx = tokens()
    expected = run_reference_blocks(reference, idx, layers)
    good, _ = run_with_block_outputs(load_child(child_cfg, state_dict), idx)
    wrong, _ = run_with_block_outputs(load_child(prefix_cfg, state_dict), idx)
    assert torch.equal(good[-1], expected)
    assert not torch.allclose(wrong[-1], expected)


# --------------------------------------------------------------------------------------------------------------
# MoE references: dense blocks must come before expert blocks
# --------------------------------------------------------------------------------------------------------------


def moe_config() -> Config:
    return Config(
        name="tiny-moe", n_layer=DEPTH, n_embd=32, n_head=4, padded_vocab_size=VOCAB, vocab_size=VOCAB,
        mlp_class_name="LLaMAMoE", intermediate_size=64, moe_intermediate_size=16, n_expert=4, n_expert_per_token=2,
        first_k_dense_replace=2, norm_class_name="RMSNorm", parallel_residual=False, bias=False,
    )


def test_moe_first_k_dense_replace_is_recounted():
    config = moe_config()
    assert child_config(config, [0, 1, 4]).first_k_dense_replace == 2
    assert child_config(config, [1, 3, 5]).first_k_dense_replace == 1
    assert child_config(config, [3, 5]).first_k_dense_replace == 0
    with pytest.raises(InherituneError) as info:
        child_config(config, [3, 0])
    assert "\n" not in str(info.value)


def test_moe_child_matches_reference_blocks():
    reference = randomize(GPT(moe_config()), 0)
    layers = [1, 3, 5]
    child_cfg, state_dict = inherit(reference.config, reference.state_dict(), layers)
    child = load_child(child_cfg, state_dict)
    idx = tokens()
    outputs, logits = run_with_block_outputs(child, idx)
    assert torch.equal(outputs[-1], run_reference_blocks(reference, idx, layers))
    assert torch.equal(logits, head(reference, outputs[-1]))


# --------------------------------------------------------------------------------------------------------------
# 3. Parts ablation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gemma-2", "pythia"])
def test_parts_attention_and_norms_only(family):
    from litgpt_inheritune.child import pretrain_init_state_dict

    layers = [0, 2, 5]
    reference = reference_model(family)
    ref_state = reference.state_dict()
    init = pretrain_init_state_dict(child_config(reference.config, layers), seed=7)
    child_cfg, state_dict = inherit(reference.config, ref_state, layers, parts=["attention", "norms"], init_state_dict=init)
    load_child(child_cfg, state_dict)  # loads strictly

    sources = child_key_sources(ref_state.keys(), layers)
    assert set(state_dict) == set(init) == set(sources)
    seen = set()
    for key, tensor in state_dict.items():
        part = part_of(key)[0]
        seen.add(part)
        source = ref_state[sources[key]]
        if part in ("attention", "norms"):
            assert torch.equal(tensor, source), key
        else:
            assert torch.equal(tensor, init[key]), key
            assert not torch.equal(tensor, source), key
    assert seen == set(PARTS)
    assert "transformer.h.1.mlp.fc_1.weight" in state_dict or "transformer.h.1.mlp.fc.weight" in state_dict


def test_parts_empty_is_the_init_model():
    from litgpt_inheritune.child import pretrain_init_state_dict

    reference = reference_model("llama")
    ref_state = reference.state_dict()
    init = pretrain_init_state_dict(child_config(reference.config, [0, 1]), seed=3)
    _, state_dict = inherit(reference.config, ref_state, [0, 1], parts=[], init_state_dict=init)
    assert not torch.equal(state_dict["transformer.wte.weight"], ref_state["transformer.wte.weight"])
    for key, tensor in state_dict.items():
        assert torch.equal(tensor, init[key]), key
        assert not torch.equal(tensor, ref_state[key]), key


def test_pretrain_init_is_seeded():
    from litgpt_inheritune.child import pretrain_init_state_dict

    config = child_config(tiny_config("llama"), [0, 1])
    a, b, c = (pretrain_init_state_dict(config, seed) for seed in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.wte.weight"], c["transformer.wte.weight"])


def test_partial_parts_without_init_is_an_error():
    reference = reference_model("llama")
    with pytest.raises(InherituneError) as info:
        inherit(reference.config, reference.state_dict(), [0], parts=["attention"])
    assert "\n" not in str(info.value)


def test_init_dtype_follows_the_reference():
    from litgpt_inheritune.child import pretrain_init_state_dict

    reference = reference_model("llama").to(torch.bfloat16)
    init = pretrain_init_state_dict(child_config(reference.config, [0]), seed=0)  # float32
    _, state_dict = inherit(reference.config, reference.state_dict(), [0], parts=["embedding"], init_state_dict=init)
    assert {t.dtype for t in state_dict.values()} == {torch.bfloat16}


# --------------------------------------------------------------------------------------------------------------
# 4. Tied embeddings
# --------------------------------------------------------------------------------------------------------------


def test_tied_embeddings_stay_tied():
    reference = reference_model("llama")
    reference.lm_head.weight = reference.transformer.wte.weight
    state = reference.state_dict()
    assert reference_ties_embeddings(state)
    child_cfg, state_dict = inherit(reference.config, state, [0, 1])
    assert state_dict["lm_head.weight"] is state_dict["transformer.wte.weight"]
    assert torch.equal(state_dict["lm_head.weight"], state["lm_head.weight"])
    load_child(child_cfg, state_dict)


def test_tied_by_value_not_by_object():
    """Two distinct tensors with equal values (as after torch.load of separately stored copies) count as tied."""
    reference = reference_model("llama")
    with torch.no_grad():
        reference.lm_head.weight.copy_(reference.transformer.wte.weight)
    state = reference.state_dict()
    assert state["lm_head.weight"] is not state["transformer.wte.weight"]
    assert reference_ties_embeddings(state)
    _, state_dict = inherit(reference.config, state, [0])
    assert state_dict["lm_head.weight"] is state_dict["transformer.wte.weight"]


def test_untied_embeddings_stay_separate():
    reference = reference_model("llama")
    state = reference.state_dict()
    assert not reference_ties_embeddings(state)
    _, state_dict = inherit(reference.config, state, [0])
    assert state_dict["lm_head.weight"] is not state_dict["transformer.wte.weight"]
    assert torch.equal(state_dict["lm_head.weight"], state["lm_head.weight"])
    assert not reference_ties_embeddings({"transformer.wte.weight": torch.zeros(3, 2)})


def test_tie_is_dropped_when_only_the_embedding_is_inherited():
    from litgpt_inheritune.child import pretrain_init_state_dict

    reference = reference_model("llama")
    reference.lm_head.weight = reference.transformer.wte.weight
    state = reference.state_dict()
    init = pretrain_init_state_dict(child_config(reference.config, [0]), seed=0)
    _, state_dict = inherit(reference.config, state, [0], parts=["embedding"], init_state_dict=init)
    assert state_dict["lm_head.weight"] is not state_dict["transformer.wte.weight"]
    assert torch.equal(state_dict["lm_head.weight"], init["lm_head.weight"])


# --------------------------------------------------------------------------------------------------------------
# 5. Input errors
# --------------------------------------------------------------------------------------------------------------


def test_resolve_layers_accepts_valid_input():
    assert resolve_layers(6, n_layers=1) == [0]
    assert resolve_layers(6, n_layers=6) == [0, 1, 2, 3, 4, 5]
    assert resolve_layers(6, layers=[5, 0, 3]) == [5, 0, 3]
    assert resolve_layers(6, layers=(2,)) == [2]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_layers=0),
        dict(n_layers=7),
        dict(n_layers=-1),
        dict(n_layers=True),
        dict(n_layers=2.0),
        dict(layers=[]),
        dict(layers=[0, 1, 1]),
        dict(layers=[0, 6]),
        dict(layers=[-1]),
        dict(layers=[0, True]),
        dict(layers=[0.0]),
        dict(),
        dict(n_layers=2, layers=[0, 1]),
    ],
    ids=lambda kw: repr(kw),
)
def test_resolve_layers_errors(kwargs):
    with pytest.raises(InherituneError) as info:
        resolve_layers(6, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message


def test_resolve_layers_messages_name_the_problem():
    with pytest.raises(InherituneError, match=r"\[1\]"):
        resolve_layers(6, layers=[0, 1, 1])
    with pytest.raises(InherituneError, match=r"\[6, 9\]"):
        resolve_layers(6, layers=[0, 6, 9])
    with pytest.raises(InherituneError, match="6"):
        resolve_layers(6, n_layers=7)


def test_resolve_parts():
    assert resolve_parts(None) == PARTS
    assert resolve_parts([]) == ()
    assert resolve_parts(["mlp", "head"]) == ("mlp", "head")
    with pytest.raises(InherituneError) as info:
        resolve_parts(["attention", "ffn"])
    assert "ffn" in str(info.value) and "\n" not in str(info.value)


def test_inherit_rejects_bad_layers_with_one_line():
    reference = reference_model("pythia")
    for layers in ([], [0, 0], [DEPTH]):
        with pytest.raises(InherituneError) as info:
            inherit(reference.config, reference.state_dict(), layers)
        assert "\n" not in str(info.value)


def test_part_of():
    assert part_of("transformer.wte.weight") == ("embedding", None)
    assert part_of("transformer.ln_f.weight") == ("final_norm", None)
    assert part_of("lm_head.bias") == ("head", None)
    assert part_of("transformer.h.12.attn.qkv.weight") == ("attention", 12)
    assert part_of("transformer.h.3.attn.norm_q.weight") == ("attention", 3)
    assert part_of("transformer.h.3.mlp.experts.1.fc_1.weight") == ("mlp", 3)
    assert part_of("transformer.h.0.post_mlp_norm.weight") == ("norms", 0)
    for key in ("transformer.h.0.adapter.weight", "something.else"):
        with pytest.raises(InherituneError) as info:
            part_of(key)
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------------------
# 6. HF config rewriting, atomic writes
# --------------------------------------------------------------------------------------------------------------


def test_child_hf_config_slices_depth_and_per_layer_lists(tmp_path):
    types = ["sliding_attention", "full_attention"] * 3
    hf = dict(num_hidden_layers=6, layer_types=types, hidden_size=32, no_rope_layers=[1, 1, 1, 0, 1, 0],
              other_list=[1, 2, 3, 4, 5, 6])
    (tmp_path / "config.json").write_text(json.dumps(hf))
    layers = [5, 0, 2]
    child = child_hf_config(tmp_path, layers)
    assert child["num_hidden_layers"] == 3
    assert child["layer_types"] == [types[i] for i in layers]
    assert child["no_rope_layers"] == [0, 1, 1]  # blocks 5, 0, 2
    assert child["hidden_size"] == 32
    assert child["other_list"] == [1, 2, 3, 4, 5, 6]  # not a known per-layer key
    assert json.loads((tmp_path / "config.json").read_text()) == hf  # the reference's file is untouched


def test_child_hf_config_without_config_json(tmp_path):
    assert child_hf_config(tmp_path, [0]) is None


def test_child_hf_config_other_depth_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(n_layer=4, layer_types=["a", "b", "c", "d"])))
    child = child_hf_config(tmp_path, [3, 1])
    assert child["n_layer"] == 2 and child["layer_types"] == ["d", "b"]


def tiny_child(tmp_path: Path):
    reference = reference_model("llama")
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    (ref_dir / "config.json").write_text(json.dumps(dict(num_hidden_layers=DEPTH, layer_types=list(range(DEPTH)))))
    (ref_dir / "generation_config.json").write_text("{}")
    config, state = inherit(reference.config, reference.state_dict(), [0, 3])
    return ref_dir, config, state


def test_write_checkpoint_writes_a_loadable_child(tmp_path):
    ref_dir, config, state = tiny_child(tmp_path)
    out = tmp_path / "child"
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp != out
        write_checkpoint(tmp, config, state, ref_dir, [0, 3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child", "reference"]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "lit_model.pth", "model_config.yaml", "prompt_style.yaml"]
    loaded = Config.from_file(out / "model_config.yaml")
    assert loaded.n_layer == 2
    GPT(loaded).load_state_dict(torch.load(out / "lit_model.pth", weights_only=True), strict=True)
    hf = json.loads((out / "config.json").read_text())
    assert hf["num_hidden_layers"] == 2 and hf["layer_types"] == [0, 3]


def test_write_into_existing_dir_without_overwrite_keeps_old_contents(tmp_path):
    ref_dir, config, state = tiny_child(tmp_path)
    out = tmp_path / "child"
    out.mkdir()
    (out / "lit_model.pth").write_bytes(b"old weights")
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InherituneError) as info:
        with atomic_dir(out, overwrite=False) as tmp:
            write_checkpoint(tmp, config, state, ref_dir, [0, 3])
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == ["lit_model.pth", "notes.txt"]
    assert (out / "lit_model.pth").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child", "reference"]  # no temp dir left


def test_write_into_existing_dir_with_overwrite_replaces_it(tmp_path):
    ref_dir, config, state = tiny_child(tmp_path)
    out = tmp_path / "child"
    out.mkdir()
    (out / "notes.txt").write_text("stale")
    with atomic_dir(out, overwrite=True) as tmp:
        write_checkpoint(tmp, config, state, ref_dir, [0, 3])
    assert not (out / "notes.txt").exists()
    assert (out / "lit_model.pth").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child", "reference"]  # no temp or old dir left


def test_exception_inside_atomic_dir_leaves_nothing(tmp_path):
    out = tmp_path / "nested" / "child"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(out) as tmp:
            (tmp / "lit_model.pth").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_exception_inside_atomic_dir_keeps_existing_out_dir(tmp_path):
    out = tmp_path / "child"
    out.mkdir()
    (out / "lit_model.pth").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "lit_model.pth").write_bytes(b"partial")
            raise KeyboardInterrupt
    assert (out / "lit_model.pth").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["child"]


# --------------------------------------------------------------------------------------------------------------
# 7. inheritune_init end to end
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def reference_dir(tmp_path) -> Path:
    """A tiny llama-style LitGPT checkpoint with tied embeddings and an HF config.json (no tokenizer)."""
    reference = reference_model("llama")
    reference.lm_head.weight = reference.transformer.wte.weight
    directory = tmp_path / "tiny-reference"
    directory.mkdir()
    torch.save(reference.state_dict(), directory / "lit_model.pth")
    save_config(reference.config, directory)
    (directory / "config.json").write_text(json.dumps(dict(
        architectures=["LlamaForCausalLM"], num_hidden_layers=DEPTH, hidden_size=32, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, head_dim=8, vocab_size=VOCAB, tie_word_embeddings=True,
    )))
    return directory


@pytest.mark.parametrize(
    "kwargs, layers",
    [
        (dict(n_layers=3), [0, 1, 2]),
        (dict(layers=[5, 0, 2, 3]), [5, 0, 2, 3]),
        (dict(layers=[1, 4], parts=["embedding", "attention", "head"]), [1, 4]),
    ],
    ids=["n_layers", "layers", "parts"],
)
def test_init_setup_end_to_end(tmp_path, reference_dir, kwargs, layers):
    from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint

    from litgpt_inheritune.commands.init import setup

    out = tmp_path / "child"
    setup(reference_dir, out_dir=out, seed=5, **kwargs)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "inheritune.json", "lit_model.pth", "model_config.yaml",
                                                     "prompt_style.yaml"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())

    config = Config.from_file(out / "model_config.yaml")
    assert config.n_layer == len(layers)
    state = torch.load(out / "lit_model.pth", weights_only=True)
    child = GPT(config)
    child.load_state_dict(state, strict=True)
    hf = json.loads((out / "config.json").read_text())
    assert hf["num_hidden_layers"] == len(layers)

    reference = GPT(Config.from_file(reference_dir / "model_config.yaml"))
    reference.load_state_dict(torch.load(reference_dir / "lit_model.pth", weights_only=True), strict=True)
    if "parts" not in kwargs:
        # The written child computes what the chosen reference blocks compute.
        idx = tokens()
        outputs, logits = run_with_block_outputs(child.eval(), idx)
        assert torch.equal(outputs[-1], run_reference_blocks(reference.eval(), idx, layers))
        assert torch.equal(logits, head(reference, outputs[-1]))
        assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    else:
        assert torch.equal(state["transformer.h.0.attn.qkv.weight"], reference.state_dict()["transformer.h.1.attn.qkv.weight"])
        assert not torch.equal(state["transformer.h.0.mlp.fc_1.weight"], reference.state_dict()["transformer.h.1.mlp.fc_1.weight"])

    hf_dir = tmp_path / "hf"
    convert_lit_checkpoint(checkpoint_dir=out, output_dir=hf_dir)
    converted = torch.load(hf_dir / "model.pth", weights_only=True)
    layer_ids = {int(key.split(".")[2]) for key in converted if key.startswith("model.layers.")}
    assert layer_ids == set(range(len(layers)))


def test_init_setup_refuses_existing_checkpoint(tmp_path, reference_dir):
    from litgpt_inheritune.commands.init import setup

    out = tmp_path / "child"
    out.mkdir()
    (out / "lit_model.pth").write_bytes(b"old")
    with pytest.raises(SystemExit) as info:
        setup(reference_dir, n_layers=2, out_dir=out)
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert (out / "lit_model.pth").read_bytes() == b"old"

    setup(reference_dir, n_layers=2, out_dir=out, overwrite=True)
    assert Config.from_file(out / "model_config.yaml").n_layer == 2


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_layers=0), dict(n_layers=DEPTH + 1), dict(layers=[0, 0]), dict(layers=[DEPTH]), dict(),
     dict(n_layers=2, parts=["ffn"])],
    ids=repr,
)
def test_init_setup_bad_input_is_one_line_and_writes_nothing(tmp_path, reference_dir, kwargs):
    from litgpt_inheritune.commands.init import setup

    out = tmp_path / "child"
    with pytest.raises(SystemExit) as info:
        setup(reference_dir, out_dir=out, **kwargs)
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert not out.exists()


def test_init_setup_missing_reference(tmp_path):
    from litgpt_inheritune.commands.init import setup

    with pytest.raises(SystemExit) as info:
        setup(tmp_path / "nope", n_layers=1, out_dir=tmp_path / "child")
    assert "\n" not in str(info.value.code)

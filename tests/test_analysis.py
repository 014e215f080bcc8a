"""Lazy-layer analysis: metrics against hand-computed values, hooks against LitGPT's attention, block selection."""

import json
import math

import pytest
import torch

from litgpt_inheritune.analysis.lazy_layers import analyze_model, angular_distances, attention_probabilities, attention_rank, column_mass, normalized_entropy, suggest_n
from litgpt_inheritune.analysis.selection import select_layers
from litgpt_inheritune.errors import InherituneError

T = 10


def sink_map() -> torch.Tensor:
    """Every query puts all its attention on the first token: the degenerate, rank-1 map of a lazy head."""
    a = torch.zeros(1, T, T)
    a[..., 0] = 1.0
    return a


def test_rank_one_attention_sink():
    a = sink_map()
    assert attention_rank(a).tolist() == [1]
    count, top = column_mass(a)
    assert count.tolist() == [1] and top.tolist() == pytest.approx([1.0])
    assert normalized_entropy(a).tolist() == pytest.approx([0.0])


def test_identity_attention_is_full_rank():
    a = torch.eye(T).unsqueeze(0)
    # All singular values are 1: 9 of 10 hold 0.9 of the energy; every column holds 1/10 of the mass.
    assert attention_rank(a, tau=0.9).tolist() == [9]
    assert attention_rank(a, tau=0.95).tolist() == [10]
    count, top = column_mass(a, eta=0.9)
    assert count.tolist() == [9] and top.tolist() == pytest.approx([0.1])
    assert normalized_entropy(a).tolist() == pytest.approx([0.0])


def test_uniform_causal_attention():
    a = torch.tril(torch.ones(T, T))
    a = (a / a.sum(-1, keepdim=True)).unsqueeze(0)
    assert normalized_entropy(a).tolist() == pytest.approx([1.0])  # uniform over every visible key
    # Column j holds sum_{i>=j} 1/(i+1)^2 of the squared mass; column 0 the most.
    col = [sum(1 / (i + 1) ** 2 for i in range(j, T)) for j in range(T)]
    count, top = column_mass(a)
    assert top.item() == pytest.approx(col[0] / sum(col))
    shares = sorted((c / sum(col) for c in col), reverse=True)
    assert count.item() == next(k for k in range(1, T + 1) if sum(shares[:k]) >= 0.9)
    sigma2 = sorted((torch.linalg.svdvals(a[0].double()) ** 2).tolist(), reverse=True)
    assert attention_rank(a).item() == next(k for k in range(1, T + 1) if sum(sigma2[:k]) >= 0.9 * sum(sigma2))


def test_heads_are_measured_separately():
    both = torch.cat([sink_map(), torch.eye(T).unsqueeze(0)])
    assert attention_rank(both).tolist() == [1, 9]


def tiny_model(name="SmolLM2-135M", **overrides):
    from litgpt import GPT, Config

    config = Config.from_name(name, **{"n_layer": 3, "n_embd": 32, "n_head": 4, "n_query_groups": 2,
                                       "intermediate_size": 64, "block_size": 64, "padded_vocab_size": 128,
                                       "vocab_size": 128, **overrides})
    torch.manual_seed(0)
    return GPT(config).eval()


@pytest.mark.parametrize("name, overrides", [
    ("SmolLM2-135M", {}),  # grouped-query attention, causal mask
    ("gemma-2-2b", {"n_head": 4, "n_query_groups": 2, "head_size": 8, "sliding_window_size": 4}),  # softcapping, windows
])
def test_probabilities_are_the_attention_litgpt_applies(name, overrides):
    """probs @ v equals LitGPT's own attention output for every block (so the maps analysed are the real ones)."""
    model = tiny_model(name, **overrides)
    checked = []
    for block in model.transformer.h:
        attn = block.attn
        original = attn.scaled_dot_product_attention

        def check(q, k, v, mask=None, attn=attn, original=original):
            y = original(q, k, v, mask)
            ours = (attention_probabilities(attn, q, k, mask) @ v.float()).transpose(1, 2)
            torch.testing.assert_close(ours, y.float(), atol=1e-5, rtol=1e-4)
            checked.append(True)
            return y

        attn.scaled_dot_product_attention = check
    model(torch.randint(0, 128, (2, 16)))
    assert len(checked) == model.config.n_layer


def test_residual_metrics_match_a_manual_forward():
    model = tiny_model()
    tokens = torch.randint(0, 128, (3, 16))
    result = analyze_model(model, tokens, batch_size=2)
    # Residual streams computed by hand, block by block.
    streams = []
    hooks = [b.register_forward_hook(lambda m, a, o: streams.append((a[0].detach(), o.detach()))) for b in model.transformer.h]
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    for l, (x_in, x_out) in enumerate(streams):
        expected = (1 - torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)).mean().item()
        assert result["blocks"][l]["block_influence"] == pytest.approx(expected, rel=1e-5)
    xs = [streams[0][0][:, -1]] + [o[:, -1] for _, o in streams]
    cos = torch.nn.functional.cosine_similarity(xs[0], xs[2], dim=-1)
    assert result["angular_distance"][0][2] == pytest.approx((torch.arccos(cos) / math.pi).mean().item(), rel=1e-5)
    assert result["angular_distance"][2][2] is None  # past the last block
    assert result["sequences"] == 3 and len(result["blocks"]) == 3
    assert all(1 <= b["max_rank"] <= 16 for b in result["blocks"])


def test_angular_distance_of_identical_streams_is_zero():
    last = torch.randn(4, 1, 8).repeat(1, 3, 1)
    table = angular_distances(last)
    assert table[0][1] == pytest.approx(0.0, abs=1e-6) and table[0][2] == pytest.approx(0.0, abs=1e-6)
    opposite = torch.stack([last[:, 0], -last[:, 0]], dim=1)
    assert angular_distances(opposite)[0][1] == pytest.approx(1.0, abs=1e-6)


def test_suggested_n():
    assert suggest_n([5, 4, 1, 1], [0, 0, 1, 1]) == (2, "blocks 2..3 are lazy (every head rank 1)")
    n, reason = suggest_n([5, 4, 3, 2], [0, 0, 0.6, 0.5])
    assert n == 2 and "half" in reason
    assert suggest_n([5, 5, 5, 5, 5, 5], [0] * 6)[0] == 3


def fake_analysis(influence, distance):
    return {"n_blocks": len(influence), "blocks": [{"block_influence": v} for v in influence], "angular_distance": distance}


def test_select_layers():
    assert select_layers("first", 3, 8) == [0, 1, 2]
    assert select_layers("even", 3, 7) == [0, 3, 6]
    assert select_layers("even", 1, 7) == [0]
    analysis = fake_analysis([0.9, 0.1, 0.5, 0.05, 0.3], None)
    assert select_layers("block_influence", 3, 5, analysis) == [0, 2, 4]
    # Drop 2 consecutive blocks: d[l][2] is smallest at l = 2, so blocks 2 and 3 go.
    d = [[0, 0.5, 0.6, 0.7, 0.8, 0.9], [0, 0.4, 0.5, 0.6, 0.7, None], [0, 0.1, 0.2, 0.3, None, None],
         [0, 0.2, 0.3, None, None, None], [0, 0.3, None, None, None, None], [0, None, None, None, None, None]]
    assert select_layers("angular_distance", 3, 5, fake_analysis([0] * 5, d)) == [0, 1, 4]
    with pytest.raises(InherituneError, match="needs --analysis"):
        select_layers("block_influence", 3, 5)
    with pytest.raises(InherituneError, match="6-block model"):
        select_layers("block_influence", 3, 5, fake_analysis([0] * 6, None))
    with pytest.raises(InherituneError, match="unknown --select"):
        select_layers("last", 3, 5)


def test_analyze_command_on_the_real_model_and_select_from_it(smollm2_dir, raw_text, tmp_path, litgpt_cli):
    """The real SmolLM2 reference on real text: files written, then a child's blocks chosen from the analysis (both
    through LitGPT's CLI entry point, in this process)."""
    out = tmp_path / "analysis"
    command = ["inheritune_analyze", str(smollm2_dir), "--data", str(raw_text), "--out_dir", str(out),
               "--n_sequences", "3", "--seq_len", "24"]
    code, _, err = litgpt_cli(*command)
    assert code == 0, err[-2000:]
    result = json.loads((out / "analysis.json").read_text())
    assert result["n_blocks"] == 30 and len(result["blocks"]) == 30 and result["sequences"] == 3
    assert len(result["blocks"][0]["rank_per_head"]) == 9
    assert 1 <= result["suggested_n"] < 30
    assert (out / "analysis.png").stat().st_size > 10_000 and (out / "analysis.md").is_file()
    code, _, err = litgpt_cli(*command)
    assert code != 0 and "already holds an analysis" in err.strip().splitlines()[-1]

    child = tmp_path / "child"
    code, _, err = litgpt_cli("inheritune_init", str(smollm2_dir), "--n_layers", "6", "--select",
                                     "block_influence", "--analysis", str(out), "--out_dir", str(child))
    assert code == 0, err[-2000:]
    record = json.loads((child / "inheritune.json").read_text())
    scores = [b["block_influence"] for b in result["blocks"]]
    assert record["layers"] == sorted(sorted(range(30), key=lambda l: -scores[l])[:6])
    assert record["select"] == "block_influence"
    from litgpt import Config

    assert Config.from_file(child / "model_config.yaml").n_layer == 6

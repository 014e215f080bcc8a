"""Sheared-LLaMA's dynamic batch loading rule, checked against values computed by hand."""

import math

import pytest

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.data.dbl import dbl_update, normalize_weights

# Sheared-LLaMA's RedPajama domains, initial weights and its reference losses for a 1.3B target.
DOMAINS = ["cc", "github", "book", "stackexchange", "wiki", "arxiv", "c4"]
INITIAL = dict(zip(DOMAINS, [0.67, 0.045, 0.045, 0.02, 0.045, 0.025, 0.15]))
REFERENCE = dict(zip(DOMAINS, [1.9643, 0.7459, 2.1393, 1.6117, 1.7590, 1.4449, 2.1251]))


def test_weights_move_toward_the_lagging_domain():
    losses = dict(REFERENCE)
    losses["github"] += 1.0  # the child lags its reference on code only
    new = dbl_update(INITIAL, losses, REFERENCE)
    assert new["github"] > INITIAL["github"]
    assert all(new[d] < INITIAL[d] for d in DOMAINS if d != "github")
    assert math.isclose(sum(new.values()), 1.0)


def test_matches_the_formula_by_hand():
    weights = {"a": 0.5, "b": 0.5}
    new = dbl_update(weights, {"a": 3.0, "b": 2.0}, {"a": 2.0, "b": 2.0}, smoothing=0.1)
    # alpha = softmax(log 0.5 + [1, 0]) = [e, 1] / (e + 1); w = 0.9 alpha + 0.05.
    alpha_a = math.e / (math.e + 1)
    assert math.isclose(new["a"], 0.9 * alpha_a + 0.05)
    assert math.isclose(new["b"], 0.9 * (1 - alpha_a) + 0.05)


def test_clipped_excess_as_the_papers_algorithm():
    """The paper's Algorithm 1 clips the excess loss at 0 (the released code does not, the default here)."""
    weights = {"a": 0.5, "b": 0.5}
    losses, reference = {"a": 3.0, "b": 1.0}, {"a": 2.0, "b": 2.0}  # a lags by 1, b is ahead by 1
    clipped = dbl_update(weights, losses, reference, smoothing=0.0, clip_excess=True)
    raw = dbl_update(weights, losses, reference, smoothing=0.0)
    # clipped: softmax(log 0.5 + [1, 0]); raw: softmax(log 0.5 + [1, -1])
    assert math.isclose(clipped["a"], math.e / (math.e + 1))
    assert math.isclose(raw["a"], math.e / (math.e + 1 / math.e))
    assert raw["a"] > clipped["a"] > 0.5
    # when no domain lags, the clipped rule leaves the weights alone
    ahead = dbl_update(weights, {"a": 1.0, "b": 1.5}, reference, smoothing=0.0, clip_excess=True)
    assert all(math.isclose(ahead[d], 0.5) for d in weights)


def test_no_gap_keeps_the_weights_up_to_smoothing():
    new = dbl_update(INITIAL, REFERENCE, REFERENCE, smoothing=0.0)
    assert all(math.isclose(new[d], INITIAL[d]) for d in DOMAINS)


@pytest.mark.parametrize("empty", [None, float("nan")])
def test_a_domain_without_samples_gives_no_nan(empty):
    losses = {d: REFERENCE[d] + 0.1 for d in DOMAINS}
    losses["book"] = empty
    new = dbl_update(INITIAL, losses, REFERENCE)
    assert all(math.isfinite(v) for v in new.values())
    # Every other domain lags by 0.1, book counts as on par: book loses share, the others keep their ratios.
    assert new["book"] < INITIAL["book"]
    assert math.isclose(new["cc"] / new["c4"], INITIAL["cc"] / INITIAL["c4"], rel_tol=1e-3)
    del losses["book"]
    assert dbl_update(INITIAL, losses, REFERENCE) == new


def test_repeated_updates_stay_a_distribution():
    weights = dict(INITIAL)
    losses = {d: REFERENCE[d] + (2.0 if d == "arxiv" else 0.0) for d in DOMAINS}
    for _ in range(50):
        weights = dbl_update(weights, losses, REFERENCE)
    assert math.isclose(sum(weights.values()), 1.0)
    assert weights["arxiv"] > 0.99 and min(weights.values()) >= 1e-4 / len(DOMAINS) * 0.99


@pytest.mark.parametrize(
    "call, named",
    [
        (lambda: dbl_update(INITIAL, {"reddit": 1.0}, REFERENCE), "reddit"),
        (lambda: dbl_update(INITIAL, REFERENCE, {"cc": 1.0}), "no reference loss"),
        (lambda: normalize_weights({"a": -1.0}), "'a'"),
        (lambda: normalize_weights({"a": 0.0}), "zero"),
        (lambda: normalize_weights({}), "at least one"),
        (lambda: dbl_update(INITIAL, REFERENCE, REFERENCE, smoothing=1.0), "smoothing"),
    ],
)
def test_bad_input_is_one_line(call, named):
    with pytest.raises(InherituneError) as info:
        call()
    assert named in str(info.value) and "\n" not in str(info.value)

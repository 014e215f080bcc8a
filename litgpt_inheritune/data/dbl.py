"""Domain weights of a multi-domain data mixture, and Sheared-LLaMA's dynamic batch loading (DBL) rule.

At each evaluation, with the child's held-out loss ``l_i`` and a reference loss ``r_i`` per domain ``i``:

    delta_i = l_i - r_i
    alpha   = softmax(log w + delta)
    w       = (1 - smoothing) * alpha + smoothing / k        (k domains; renormalised)

so domains where the child lags its reference get sampled more. Unlike the original code, a domain that had no
validation samples in the window (loss missing or NaN) keeps its share instead of turning every weight into NaN.

``delta`` is the raw excess loss, as in the released Sheared-LLaMA code (the default). The paper's Algorithm 1 clips
it at zero (``clip_excess=True``): a domain the child already does better on than the reference then stops losing
share for it. The default follows the code, whose numbers the paper reports.
"""

from __future__ import annotations

import math
from typing import Mapping

from litgpt_inheritune.errors import InherituneError


def normalize_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights scaled to sum to one; a one-line error for empty, negative, non-finite or all-zero weights."""
    if not weights:
        raise InherituneError("give at least one domain weight, e.g. --domain_weights '{web: 0.7, code: 0.3}'")
    for name, value in weights.items():
        if not math.isfinite(value) or value < 0:
            raise InherituneError(f"the weight of domain {name!r} is {value}; weights must be finite and >= 0")
    total = sum(weights.values())
    if total <= 0:
        raise InherituneError("all domain weights are zero; give at least one positive weight")
    return {name: value / total for name, value in weights.items()}


def dbl_update(
    weights: Mapping[str, float],
    losses: Mapping[str, float | None],
    reference_losses: Mapping[str, float],
    smoothing: float = 1e-4,
    clip_excess: bool = False,
) -> dict[str, float]:
    """One step of dynamic batch loading: new domain weights from per-domain validation and reference losses.

    ``losses`` may lack a domain or hold ``None``/NaN for it (no samples this window): that domain's excess loss
    counts as zero, so its weight moves only through the normalisation.
    """
    weights = normalize_weights(weights)
    unknown = sorted((set(losses) | set(reference_losses)) - set(weights))
    if unknown:
        raise InherituneError(f"unknown domain(s) {unknown}; the mixture's domains are {sorted(weights)}")
    missing_reference = sorted(set(weights) - set(reference_losses))
    if missing_reference:
        raise InherituneError(f"no reference loss for domain(s) {missing_reference}; give one per domain")
    if not 0 <= smoothing < 1:
        raise InherituneError(f"smoothing must be in [0, 1), got {smoothing}")

    logits = {}
    for name, weight in weights.items():
        loss = losses.get(name)
        delta = 0.0 if loss is None or not math.isfinite(loss) else loss - reference_losses[name]
        if clip_excess:
            delta = max(delta, 0.0)
        logits[name] = (math.log(weight) if weight > 0 else -math.inf) + delta
    top = max(logits.values())
    exp = {name: math.exp(value - top) for name, value in logits.items()}
    total = sum(exp.values())
    k = len(weights)
    smoothed = {name: (1 - smoothing) * value / total + smoothing / k for name, value in exp.items()}
    return normalize_weights(smoothed)

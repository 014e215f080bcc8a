"""`litgpt inheritune_init`: write the inherited child as a LitGPT checkpoint, without training it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from litgpt_inheritune.checks import check_out_dir, child_bytes
from litgpt_inheritune.child import build_child, plan_child
from litgpt_inheritune.errors import InherituneError, one_line_errors
from litgpt_inheritune.rundir import other_rank_skips


@one_line_errors
def setup(
    reference_dir: Path,
    n_layers: int | None = None,
    layers: list[int] | None = None,
    parts: list[str] | None = None,
    out_dir: Path = Path("out/inheritune_init"),
    tokenizer_dir: Path | None = None,
    seed: int = 42,
    overwrite: bool = False,
    select: Literal["first", "even", "block_influence", "angular_distance"] = "first",
    analysis: Path | None = None,
) -> None:
    """Write a child model that inherits the first blocks of a reference model, as a LitGPT checkpoint.

    The child gets the reference's token embedding, the chosen blocks, the final norm and the LM head.
    The output dir holds lit_model.pth, model_config.yaml, a HF config.json describing the child and the
    tokenizer files, so `litgpt generate`, `litgpt evaluate` and `litgpt convert_from_litgpt` accept it.

    Arguments:
        reference_dir: LitGPT checkpoint dir of the reference model (lit_model.pth, model_config.yaml, tokenizer).
        n_layers: Inherit the first ``n_layers`` blocks. Give this or ``layers``.
        layers: Explicit reference block indices to inherit, in the child's order, e.g. ``[0, 1, 2, 29]``.
        parts: What to inherit; default all of embedding, attention, mlp, norms, final_norm, head.
            Parts left out get LitGPT's pretraining init (the paper's ablations; ``[]`` is a random-init child).
        out_dir: Where to write the child checkpoint. Written to a temporary dir first, then renamed.
        tokenizer_dir: Check that this tokenizer matches the reference's vocabulary (default: the reference's).
        seed: Random seed for the parts that are not inherited.
        overwrite: Replace an existing checkpoint in ``out_dir``.
        select: How ``n_layers`` blocks are chosen: ``first`` (Inheritune), ``even`` (spread over the depth),
            ``block_influence`` (the most influential) or ``angular_distance`` (drop the most redundant run);
            the last two read ``analysis``. The choice is recorded in ``out_dir/inheritune.json``.
        analysis: ``analysis.json`` (or its dir) written by `litgpt inheritune_analyze` for this reference.
    """
    if other_rank_skips("inheritune_init"):
        return
    out_dir = Path(out_dir)
    if (out_dir / "lit_model.pth").exists() and not overwrite:
        raise InherituneError(
            f"{str(out_dir)!r} already holds a checkpoint; choose another --out_dir or pass --overwrite true"
        )
    check_out_dir(out_dir, reference_dir)  # a file, an unwritable place, inside the reference: before any work
    t0 = time.perf_counter()
    plan = plan_child(reference_dir, n_layers, layers, parts, tokenizer_dir, select, analysis)
    check_out_dir(out_dir, reference_dir, child_bytes(plan))
    child = build_child(plan, out_dir, seed=seed, overwrite=overwrite)
    print(
        f"Wrote a {child.n_layer}-block child of {plan.config.name} ({plan.config.n_layer} blocks; inherited blocks "
        f"{plan.layers}, parts {list(plan.parts)}) to {str(out_dir)!r} in {time.perf_counter() - t0:.1f} s"
    )


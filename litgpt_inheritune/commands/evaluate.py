"""`litgpt inheritune_evaluate` and `litgpt inheritune_collect`: the papers' downstream suite through lm-eval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from litgpt_inheritune.downstream.evaluate import evaluate
from litgpt_inheritune.errors import InherituneError, one_line_errors


@one_line_errors
def setup(
    checkpoint_dir: Path,
    tasks: str | None = None,
    suite: Literal["inheritune", "offline", None] = None,
    include_path: Path | None = None,
    out_dir: Path | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
    device: str | None = None,
    limit: float | None = None,
    seed: int = 1234,
) -> None:
    """Evaluate a child or a reference with `litgpt evaluate` (lm-eval), on hub or offline tasks.

    ``--suite inheritune`` runs the first paper's ten tasks with their shots (MMLU 5-shot, the rest 0-shot), as
    one `litgpt evaluate` call per shot count. ``--include_path DIR`` adds task YAMLs over local files (see
    ``litgpt_inheritune.downstream.tasks``), so evaluation works without network. Results of every call are merged into
    ``out_dir/results.json`` (default ``checkpoint_dir/evaluate``), the input of `litgpt inheritune_collect`.

    Arguments:
        checkpoint_dir: A LitGPT checkpoint dir (lit_model.pth, model_config.yaml, config.json, tokenizer).
        tasks: Comma-separated lm-eval task names. Give this or ``suite``.
        suite: A named suite of tasks with their shots: ``inheritune`` (the paper's, from the hub) or ``offline``
            (tasks written from files every Python has, into ``out_dir/tasks``: no download).
        include_path: A directory of extra lm-eval task YAMLs (e.g. offline tasks over local JSON lines files).
        out_dir: Where the converted model and results go.
        num_fewshot: Shots for ``tasks`` (a suite sets its own).
        batch_size: Batch size for lm-eval.
        device: e.g. ``cuda`` or ``cpu`` (default: CUDA when available).
        limit: Evaluate only this many examples per task (or this fraction).
        seed: Random seed for lm-eval.
    """
    arguments = dict(locals())
    evaluate(**arguments)


@one_line_errors
def collect_setup(
    results: dict[str, Path],
    reference: str | None = None,
    tasks: list[str] | None = None,
    out: Path | None = None,
) -> None:
    """Write one markdown table of several models' lm-eval results, in the form of the papers' tables.

    Rows are models, columns tasks, then the average and the percentage of the reference's average.

    Arguments:
        results: ``{model name: results.json}`` (from `litgpt inheritune_evaluate` or `litgpt evaluate`).
        reference: The model whose average counts as 100%.
        tasks: Columns to show, in order (default: every task found, sorted).
        out: Write the table here too (default: print only).
    """
    from litgpt_inheritune.downstream.tasks import collect

    loaded = {}
    for name, path in results.items():
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise InherituneError(f"no results at {str(path)!r} for model {name!r}")
        loaded[name] = json.loads(path.read_text())
    table = collect(loaded, reference, tasks)
    if out is not None:
        Path(out).write_text(table + "\n")
    print(table)


"""`litgpt inheritune_evaluate` and `litgpt inheritune_collect`: the papers' downstream suite through
`litgpt evaluate`, with offline task definitions, and one table of several models' results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from litgpt_inheritune import patches
from litgpt_inheritune.errors import InherituneError


def evaluate(
    checkpoint_dir: Path,
    tasks: str | None = None,
    suite: str | None = None,
    include_path: Path | None = None,
    out_dir: Path | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
    device: str | None = None,
    limit: float | None = None,
    seed: int = 1234,
) -> dict:
    """``setup`` without the error conversion; returns the merged lm-eval results."""
    import logging

    # bitsandbytes warns at import that an optional CPU kernel for 4-bit matmuls ("pip install kernels") is
    # missing; evaluation never runs 4-bit layers, so the warning only alarms.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager
    from litgpt.eval.evaluate import convert_and_evaluate

    from litgpt_inheritune.tasks import SUITES

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "lit_model.pth").is_file():
        raise InherituneError(f"{str(checkpoint_dir)!r} holds no lit_model.pth; give a LitGPT checkpoint dir (e.g. out/.../final)")
    if (tasks is None) == (suite is None):
        raise InherituneError(f"give --tasks 'a,b' or --suite {'|'.join(SUITES)}, one of them")
    if suite is not None and suite not in SUITES:
        raise InherituneError(f"unknown --suite {suite!r}; choose from {list(SUITES)}")
    if include_path is not None and not Path(include_path).is_dir():
        raise InherituneError(f"--include_path {str(include_path)!r} is not a directory of task YAMLs")
    out_dir = Path(out_dir) if out_dir is not None else checkpoint_dir / "evaluate"
    if suite == "offline" and include_path is None:  # the offline tasks are written here, from local files
        from litgpt_inheritune.tasks import write_pydoc_cloze

        include_path = write_pydoc_cloze(out_dir / "tasks")
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    wanted = list(SUITES[suite]) if suite else [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in manager.all_tasks]
    if unknown:
        raise InherituneError(f"lm-eval knows no task(s) {unknown}; check the names or pass --include_path with their YAMLs")
    import os

    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        root = str(Path(include_path).resolve()) if include_path else None
        index = getattr(manager, "task_index", {})
        local = {t for t in wanted if root and str(Path(str(index.get(t, {}).get("yaml_path", "/"))).resolve()).startswith(root)}
        hub = [t for t in wanted if t not in local]
        if hub:
            raise InherituneError(
                f"task(s) {hub} download their data from the hub, which is off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); "
                "evaluate offline with --suite offline, or give --include_path with task YAMLs over local files"
            )
    groups: dict[int | None, list[str]] = {}
    for task in wanted:
        shots = SUITES[suite][task] if suite else num_fewshot
        groups.setdefault(shots, []).append(task)

    plain = evaluator.simple_evaluate
    merged: dict = {"results": {}, "n-shot": {}, "configs": {}, "versions": {}}
    # LitGPT converts the checkpoint into out_dir and reuses any pytorch_model.bin it finds there, whole or half
    # written, of this checkpoint or another: the converted weights live only while this command runs.
    converted = [out_dir / "pytorch_model.bin", out_dir / "model.pth"]
    for path in converted:
        path.unlink(missing_ok=True)
    try:
        for shots, names in groups.items():
            part = out_dir / f"results_{shots or 0}shot.json"
            with patches.patched("lm_eval.simple_evaluate",
                                 lambda *args, **kwargs: plain(*args, task_manager=manager, **kwargs)), \
                    patches.patched("lm_eval.get_git_commit_hash", quiet_git_hash):
                convert_and_evaluate(checkpoint_dir, tasks=",".join(names), out_dir=out_dir, num_fewshot=shots,
                                     batch_size=batch_size, device=device, limit=limit, seed=seed, save_filepath=part)
            result = json.loads(part.read_text())
            for key in merged:
                merged[key].update(result.get(key, {}))
    finally:
        for path in converted:
            path.unlink(missing_ok=True)
    merged["checkpoint"] = str(checkpoint_dir)
    (out_dir / "results.json").write_text(json.dumps(merged, indent=2, default=str) + "\n")
    return merged


def quiet_git_hash() -> str | None:
    """lm-eval records the git commit of the working directory and lets git print "fatal: not a git repository"
    outside one; the same record, without the message."""
    import subprocess

    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


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
    ``litgpt_inheritune.tasks``), so evaluation works without network. Results of every call are merged into
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
    try:
        evaluate(**arguments)
    except InherituneError as exc:
        raise SystemExit(f"error: {exc}") from None


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
    from litgpt_inheritune.tasks import collect

    try:
        loaded = {}
        for name, path in results.items():
            path = Path(path)
            if path.is_dir():
                path = path / "results.json"
            if not path.is_file():
                raise InherituneError(f"no results at {str(path)!r} for model {name!r}")
            loaded[name] = json.loads(path.read_text())
        table = collect(loaded, reference, tasks)
    except InherituneError as exc:
        raise SystemExit(f"error: {exc}") from None
    if out is not None:
        Path(out).write_text(table + "\n")
    print(table)

"""The papers' downstream suite through `litgpt evaluate`, with offline task definitions (the body of
`litgpt inheritune_evaluate`)."""

from __future__ import annotations

import json
from pathlib import Path

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
    """The body of the command (``commands``), raising ``InherituneError`` on bad input; returns the merged lm-eval results."""
    import logging

    # bitsandbytes warns at import that an optional CPU kernel for 4-bit matmuls ("pip install kernels") is
    # missing; evaluation never runs 4-bit layers, so the warning only alarms.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager
    from litgpt.eval.evaluate import convert_and_evaluate

    from litgpt_inheritune.downstream.tasks import SUITES

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
        from litgpt_inheritune.downstream.tasks import write_pydoc_cloze

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

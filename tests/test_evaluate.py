"""Evaluation: `litgpt evaluate` on an inherited child with an offline lm-eval task, and the results collector."""

import json
import subprocess
import sys

import pytest

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.downstream.tasks import collect, convert_piqa, task_scores, write_pydoc_cloze


def litgpt(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "litgpt", *args], capture_output=True, text=True, timeout=900,
                          cwd=cwd)


def test_child_and_reference_evaluate_offline_and_collect(tmp_path, tiny_reference, litgpt_cli, monkeypatch):
    """The child's evaluation runs as a user starts it (a subprocess); the child itself, the reference's evaluation
    and the table go through LitGPT's CLI entry point in this process."""
    tasks = write_pydoc_cloze(tmp_path / "tasks", n_items=6)
    items = [json.loads(line) for line in (tasks / "pydoc_cloze.jsonl").read_text().splitlines()]
    assert len(items) == 6 and all(i["target"].startswith(" ") for i in items)
    child = tmp_path / "child"
    code, _, err = litgpt_cli("inheritune_init", tiny_reference, "--n_layers", "2", "--out_dir", child)
    assert code == 0, err[-2000:]
    monkeypatch.chdir(tmp_path)  # outside any git repository
    for name, checkpoint in (("child", child), ("reference", tiny_reference)):
        args = ["inheritune_evaluate", str(checkpoint), "--tasks", "pydoc_cloze", "--include_path", str(tasks),
                "--out_dir", str(tmp_path / f"eval_{name}"), "--limit", "4", "--device", "cpu"]
        if name == "child":
            done = litgpt(*args, cwd=tmp_path)
            code, err = done.returncode, done.stderr
        else:
            code, _, err = litgpt_cli(*args)
        assert code == 0, err[-3000:]
        # quiet of harmless alarms, and the converted weights are gone (LitGPT would reuse them, whole or not)
        assert "not a git repository" not in err and "gemm_4bit_forward" not in err
        assert not (tmp_path / f"eval_{name}" / "pytorch_model.bin").exists()
    # The config.json trap: the model lm-eval ran is the child's depth, not the reference's.
    assert json.loads((tmp_path / "eval_child" / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((tmp_path / "eval_reference" / "config.json").read_text())["num_hidden_layers"] == 6
    results = {n: json.loads((tmp_path / f"eval_{n}" / "results.json").read_text()) for n in ("child", "reference")}
    for r in results.values():
        assert r["results"]["pydoc_cloze"]["perplexity,none"] > 1
    assert results["child"]["results"] != results["reference"]["results"]
    table = collect(results, reference="reference")
    assert table.splitlines()[0] == "| model | pydoc_cloze | average | % of reference |"
    reference_row = table.splitlines()[3]
    assert reference_row.startswith("| reference |") and reference_row.endswith(("| 100.0 |", "| - |"))
    code, _, err = litgpt_cli("inheritune_collect", json.dumps({n: str(tmp_path / f"eval_{n}") for n in results}),
                                     "--reference", "reference", "--out", str(tmp_path / "table.md"))
    assert code == 0, err[-2000:]
    assert (tmp_path / "table.md").read_text().strip() == table


def test_collector_prefers_normalised_accuracy_and_reports_share_of_reference():
    reference = {"results": {"piqa": {"acc,none": 0.70, "acc_norm,none": 0.72}, "mmlu": {"acc,none": 0.40}}}
    child = {"results": {"piqa": {"acc,none": 0.60, "acc_norm,none": 0.63}, "mmlu": {"acc,none": 0.25}}}
    assert task_scores(reference) == pytest.approx({"piqa": 72.0, "mmlu": 40.0})
    lines = collect({"reference": reference, "child": child}, reference="reference").splitlines()
    assert lines[0] == "| model | mmlu | piqa | average | % of reference |"
    assert lines[3] == "| child | 25.00 | 63.00 | 44.00 | 78.6 |"
    with pytest.raises(InherituneError, match="not one of the models"):
        collect({"child": child}, reference="reference")


def test_piqa_converter_reads_the_original_release_format(tmp_path):
    src = tmp_path / "piqa"
    src.mkdir()
    questions = [{"goal": "To dry wet shoes", "sol1": "stuff them with newspaper", "sol2": "fill them with water"},
                 {"goal": "To cool soup quickly", "sol1": "leave it on the stove", "sol2": "stir it in a cold bowl"}]
    (src / "valid.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (src / "valid-labels.lst").write_text("0\n1\n")
    out = convert_piqa(src, tmp_path / "tasks")
    rows = [json.loads(line) for line in (out / "piqa_local.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [0, 1] and rows[1]["sol2"] == "stir it in a cold bowl"
    assert "task: piqa_local" in (out / "piqa_local.yaml").read_text()
    from lm_eval.tasks import TaskManager

    assert "piqa_local" in TaskManager(include_path=str(out)).all_tasks
    (src / "valid-labels.lst").write_text("0\n")
    with pytest.raises(InherituneError, match="2 questions but valid-labels.lst 1 labels"):
        convert_piqa(src, tmp_path / "again")

"""Offline evaluation tasks for lm-eval (``dataset_path: json`` over local files), and the papers' task suite.

lm-eval normally downloads each task's data from a hub. A task defined by a YAML file whose dataset is a local JSON
lines file runs without network; ``litgpt inheritune_evaluate --include_path DIR`` makes lm-eval read such YAMLs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from litgpt_inheritune.errors import InherituneError

# The first Inheritune paper's downstream suite (lm-eval task names) with its shots: 0-shot except MMLU 5-shot.
PAPER_SUITE: dict[str, int] = {
    "wsc": 0,  # SuperGLUE Winograd schema
    "piqa": 0,
    "boolq": 0,
    "winogrande": 0,
    "logiqa": 0,
    "mmlu": 5,
    "wnli": 0,
    "qnli": 0,
    "mnli": 0,
    "truthfulqa_mc2": 0,
}
# Tasks this package writes itself from files every Python has: evaluation without any download.
OFFLINE_SUITE = {"pydoc_cloze": 0}
SUITES = {"inheritune": PAPER_SUITE, "offline": OFFLINE_SUITE}


def _yaml(task: str, data_file: Path, body: str) -> str:
    return (
        f"task: {task}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(Path(data_file).resolve()))}\n"
        "test_split: test\n" + body
    )


def write_pydoc_cloze(out_dir: Path, n_items: int = 200) -> Path:
    """A last-word prediction task (LAMBADA-style) over Python's reference prose (pydoc_data, PSF licence).

    Each item is a paragraph of at least 40 words; the model must give its last word. Metrics: accuracy of the
    greedy continuation and perplexity of the target. Writes ``pydoc_cloze.jsonl`` and ``pydoc_cloze.yaml``.
    """
    from pydoc_data.topics import topics

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            words = " ".join(paragraph.split())
            match = re.match(r"^(.*\S)\s+([A-Za-z]{3,})[.]$", words)
            if match and len(words.split()) >= 40:
                items.append({"context": match.group(1), "target": " " + match.group(2), "topic": name})
            if len(items) >= n_items:
                break
        if len(items) >= n_items:
            break
    data = out_dir / "pydoc_cloze.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    body = (
        "output_type: loglikelihood\n"
        "doc_to_text: \"{{context}}\"\n"
        "doc_to_target: \"{{target}}\"\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "metadata:\n  version: 1.0\n"
    )
    (out_dir / "pydoc_cloze.yaml").write_text(_yaml("pydoc_cloze", data, body))
    return out_dir


def convert_piqa(source_dir: Path, out_dir: Path, split: str = "valid") -> Path:
    """PIQA from its original release files (``{split}.jsonl`` and ``{split}-labels.lst``) into an offline task
    ``piqa_local`` scored like lm-eval's ``piqa`` (two solutions, accuracy and length-normalised accuracy)."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    questions, labels = source_dir / f"{split}.jsonl", source_dir / f"{split}-labels.lst"
    for path in (questions, labels):
        if not path.is_file():
            raise InherituneError(f"{str(path)!r} not found; give the dir of PIQA's original {split}.jsonl and {split}-labels.lst")
    records = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()]
    answers = [int(line) for line in labels.read_text().split()]
    if len(records) != len(answers):
        raise InherituneError(f"{questions.name} has {len(records)} questions but {labels.name} {len(answers)} labels")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "piqa_local.jsonl"
    data.write_text("".join(json.dumps({**r, "label": a}) + "\n" for r, a in zip(records, answers)))
    body = (
        "output_type: multiple_choice\n"
        "doc_to_text: \"Question: {{goal}}\\nAnswer:\"\n"
        "doc_to_target: label\n"
        "doc_to_choice: \"{{[sol1, sol2]}}\"\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    (out_dir / "piqa_local.yaml").write_text(_yaml("piqa_local", data, body))
    return out_dir


# --- results tables ----------------------------------------------------------------------------------------------

PREFERRED_METRICS = ("acc_norm,none", "acc,none", "mc2,none", "exact_match,none", "f1,none")


def task_scores(results: dict) -> dict[str, float]:
    """``{task: score in percent}`` from an lm-eval results JSON (acc_norm preferred, then acc, mc2, ...)."""
    scores = {}
    for task, metrics in results.get("results", {}).items():
        for name in PREFERRED_METRICS:
            value = metrics.get(name)
            if isinstance(value, (int, float)):
                scores[task] = 100.0 * float(value)
                break
    return scores


def collect(results: dict[str, dict], reference: str | None = None, tasks: list[str] | None = None) -> str:
    """One markdown table: rows models, columns tasks, then the average and (given a reference) % of it."""
    scores = {name: task_scores(r) for name, r in results.items()}
    if reference is not None and reference not in scores:
        raise InherituneError(f"--reference {reference!r} is not one of the models {list(scores)}")
    columns = tasks or sorted({t for s in scores.values() for t in s})
    head = ["model", *columns, "average"] + (["% of reference"] if reference else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def average(s):
        values = [s[t] for t in columns if t in s]
        return sum(values) / len(values) if values else float("nan")

    for name, s in scores.items():
        cells = [f"{s[t]:.2f}" if t in s else "-" for t in columns]
        cells.append(f"{average(s):.2f}")
        if reference:
            base = average(scores[reference])
            cells.append(f"{100 * average(s) / base:.1f}" if base > 0 else "-")
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)

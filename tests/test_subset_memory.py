"""Peak memory of subset building does not follow the corpus's size (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "subset_speed.py"


def corpus(root: Path, n_files: int) -> Path:
    """``n_files`` .jsonl files of Python's reference prose (pydoc_data/topics.py, PSF licence), 79 documents each."""
    from pydoc_data.topics import topics

    lines = "".join(json.dumps({"text": topics[name]}) + "\n" for name in sorted(topics))
    root.mkdir()
    for i in range(n_files):
        (root / f"part-{i:04d}.jsonl").write_text(lines)
    return root


def peak(corpus_dir: Path, reference: Path, out: Path) -> dict:
    arguments = {"corpus": str(corpus_dir), "tokenizer_dir": str(reference), "out_dir": str(out), "tokens": 20_000,
                 "val_tokens": 2_000, "num_workers": 2, "progress": False}
    run = subprocess.run([sys.executable, str(BENCH), "--child", json.dumps(arguments)], check=True,
                         capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_peak_rss_does_not_grow_with_the_corpus(tmp_path, tiny_reference):
    small = peak(corpus(tmp_path / "small", 4), tiny_reference, tmp_path / "a")  # 1.9 MB of text
    large = peak(corpus(tmp_path / "large", 160), tiny_reference, tmp_path / "b")  # 75 MB, 12,640 documents
    assert small["train_tokens"] >= 20_000 and large["train_tokens"] >= 20_000
    assert large["tokenized_documents"] < 60  # the candidate pass: only documents that can be chosen
    # Holding the corpus's text (or its tokens) would add well over 75 MB; a few dozen bytes per document do not.
    assert large["main_peak_mb"] < small["main_peak_mb"] + 48, (small, large)
    assert large["worker_peak_mb"] < small["worker_peak_mb"] + 48, (small, large)

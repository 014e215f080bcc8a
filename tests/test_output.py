"""What a user reads: a short `litgpt inheritune` run says what it does in the package's own words, without LitGPT's
and litdata's misleading or repeated lines, and prepares its text without touching litdata's machine-wide staging."""

import tempfile
from pathlib import Path


def test_a_short_run_prints_no_misleading_lines_and_leaves_no_shared_staging(tmp_path, tiny_reference, raw_text,
                                                                           text_dirs, litgpt_cli, monkeypatch):
    # litdata's defaults, as a user has them (the test session points them at a private folder)
    monkeypatch.delenv("DATA_OPTIMIZER_CACHE_FOLDER")
    monkeypatch.delenv("DATA_OPTIMIZER_DATA_CACHE_FOLDER")
    shared = [Path(tempfile.gettempdir()) / "chunks", Path(tempfile.gettempdir()) / "data"]
    before = {str(p): sorted(p.iterdir()) if p.is_dir() else None for p in shared}
    code, out, err = litgpt_cli(
        "inheritune", tiny_reference, "--n_layers", 2, "--parts", "[]", "--data", "TextFiles",
        "--data.train_data_path", raw_text, "--data.val_data_path", text_dirs[1], "--train.micro_batch_size", 2,
        "--train.global_batch_size", 2, "--train.max_seq_length", 32, "--train.epochs", "null",
        "--train.max_tokens", 128, "--eval.interval", 2, "--eval.max_iters", 1, "--precision", "32-true",
        "--compile", "false", "--out_dir", tmp_path / "run")
    assert code == 0, err
    text = out + err
    for misleading in ("Preprocessed training data found", "Preprocessed validation data found", "Measured TFLOPs",
                       "Tok/sec", "Create an account on https://lightning.ai", "Storing the files under",
                       "is more than this machine's", "([])"):
        assert misleading not in text, misleading
    assert "Random init (LitGPT's pretraining init) of a 2-block child of" in text and "nothing inherited" in text
    assert f"Tokenizing the text of {str(raw_text)!r}" in text
    trained = [line for line in text.splitlines() if line.startswith("Trained 128 tokens in ")]
    assert len(trained) == 1 and trained[0].endswith(" tokens/s)")
    after = {str(p): sorted(p.iterdir()) if p.is_dir() else None for p in shared}
    assert after == before  # nothing staged in, or left in, the machine-wide folders

"""README's "Your first own run" commands, copied from README.md and run as written (bash, in a folder laid out as
the demo leaves it: checkpoints/SmolLM2-135M-Instruct and out/demo/data), so README cannot drift from the code."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command(start: str) -> str:
    lines = [line for line in README.read_text().splitlines() if line.startswith(start)]
    assert len(lines) == 1, f"README.md should hold one line starting with {start!r}"
    return lines[0]


def test_first_own_run_commands_work_as_written(tmp_path, smollm2_dir, text_dirs):
    train = readme_command(". .venv/bin/activate && litgpt inheritune checkpoints/")
    evaluate = readme_command(". .venv/bin/activate && litgpt inheritune_evaluate ")
    # The folder as the demo leaves it; `.venv/bin/activate` stands for the README's virtual environment.
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "SmolLM2-135M-Instruct").symlink_to(smollm2_dir)
    for source, split in zip(text_dirs, ("train", "val")):
        target = tmp_path / "out" / "demo" / "data" / split
        target.mkdir(parents=True)
        for path in sorted(source.glob("*.txt")):
            shutil.copy(path, target / path.name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "demo" / "data").rglob("*")}

    done = subprocess.run(["bash", "-c", train], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    # readable output: one line of settings (the file has the rest), no known-harmless alarms
    assert output.count("Training the SmolLM2-135M-Instruct-inheritune-4L child, 4 blocks") == 1
    assert "'optimizer':" not in output and "pin_memory" not in output and "newer version of litdata" not in output
    # TextFiles' default of 4 DataLoader workers is capped to the cores without a word (the user chose nothing)
    assert "is more than this machine's" not in output
    final = tmp_path / "out" / "first" / "final"
    assert json.loads((final / "final.json").read_text())["iter"] == 4  # --train.max_tokens alone sets the budget: 2048 / (4 x 128)
    assert json.loads((final / "config.json").read_text())["num_hidden_layers"] == 4
    # the demo's text folders were only read
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "demo" / "data").rglob("*")} == before

    done = subprocess.run(["bash", "-c", evaluate], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((final / "evaluate" / "results.json").read_text())
    assert results["results"]["pydoc_cloze"]["perplexity,none"] > 1
    assert not (final / "evaluate" / "pytorch_model.bin").exists()


def test_every_command_has_a_whole_sentence_in_litgpt_help():
    """`litgpt --help` shows the first line of each command's docstring: it must be a whole sentence."""
    import inspect

    from litgpt_inheritune._hook import declared_commands

    commands = declared_commands()
    assert len(commands) == 10
    for name, function in commands.items():
        first = inspect.getdoc(function).splitlines()[0]
        assert first.endswith("."), f"{name}: {first!r}"


def test_hub_tasks_offline_and_missing_references_name_the_way_on(tmp_path, tiny_reference, monkeypatch):
    from litgpt_inheritune.commands import init
    from litgpt_inheritune.downstream import evaluate
    from litgpt_inheritune.errors import InherituneError

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    try:
        evaluate.evaluate(tiny_reference, tasks="hellaswag", out_dir=tmp_path / "eval")
        raise AssertionError("a hub task offline must stop before any work")
    except InherituneError as exc:
        assert "--suite offline" in str(exc) and "hellaswag" in str(exc)
    assert not (tmp_path / "eval" / "pytorch_model.bin").exists()

    for reference, command in (("checkpoints/openlm-research/open_llama_3b", "litgpt download openlm-research/open_llama_3b"),
                               ("checkpoints/meta-llama/Llama-2-7b-hf", "--access_token")):
        try:
            init.setup(tmp_path / reference, n_layers=2, out_dir=tmp_path / "child")
            raise AssertionError("a missing reference must stop")
        except SystemExit as exc:
            assert command in str(exc.code) and "\n" not in str(exc.code)
    assert not (tmp_path / "child").exists()

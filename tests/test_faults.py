"""Faults and bad input: a full disk while a checkpoint is written, a checkpoint cut short, staging left by a killed
run, out_dirs that cannot be written, broken tokenizers and text, half-prepared data. Each case: the exit status, one
line that says what to do, nothing of the user's lost, no debris left. Disk-full cases use a write wrapper that
raises ENOSPC part-way, as a full disk does."""

import errno
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import litdata  # imported here: its first import reads stderr's fileno, which pytest's capture lacks
import torch
from litgpt.args import EvalArgs, TrainArgs
from litgpt.data import TextFiles

from litgpt_inheritune.commands import init
from litgpt_inheritune.commands import inheritune as train
from test_bad_input import one_line_error, snapshot
from test_train import small_text


def train_args(**kw) -> TrainArgs:
    values = dict(save_interval=2, log_interval=1, global_batch_size=2, micro_batch_size=2, lr_warmup_steps=1,
                  epochs=None, max_tokens=6 * 64, max_seq_length=32, max_norm=1.0, min_lr=1e-4)
    values.update(kw)
    return TrainArgs(**values)


QUIET = EvalArgs(interval=1000, max_iters=2, initial_validation=False, final_validation=False)


def inheritune(reference, out, data, **kwargs):
    arguments = dict(n_layers=2, out_dir=out, data=data, train=train_args(), eval=QUIET, precision="32-true",
                     devices=1, logger_name="csv", compile=False)
    arguments.update(kwargs)
    return train.setup(reference, **arguments)


def debris(directory: Path) -> list[str]:
    """Temporary files a save or a staging step could leave behind."""
    return [str(p) for p in directory.rglob("*") if ".partial" in p.name or ".tmp" in p.name
            or (p.name.startswith("tmp") and p.is_file())]


def full_disk_at(write_number: int):
    """Lets checkpoint writes through until the ``write_number``-th, which writes half its bytes and then fails as
    a full disk does (fsspec's local file writes every Lightning checkpoint)."""
    from fsspec.implementations.local import LocalFileOpener

    plain = LocalFileOpener.write
    calls = {"n": 0}

    def write(self, data, *args, **kwargs):
        if not str(self.path).endswith("lit_model.pth.partial"):  # e.g. the CSV logger's metrics
            return plain(self, data, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == write_number:
            plain(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return plain(self, data, *args, **kwargs)

    return mock.patch.object(LocalFileOpener, "write", write)


def test_full_disk_and_cut_checkpoints_never_resume_half_a_file(tmp_path, tiny_reference, text_dirs, capsys):
    data = small_text(tmp_path, text_dirs)
    whole = tmp_path / "whole"
    inheritune(tiny_reference, whole, data)
    expected = torch.load(whole / "final" / "lit_model.pth", weights_only=True)
    assert (whole / "final" / "prompt_style.yaml").is_file()  # a base model's plain prompt style travels along

    # The disk fills while step 4 is written: one line naming the file and the cause; no half file, no temp file.
    run = tmp_path / "run"
    with full_disk_at(2):
        message = one_line_error(lambda: inheritune(tiny_reference, run, data))
    assert "no space left" in message and "step-00000004" in message
    assert (run / "step-00000002" / "lit_model.pth").is_file()
    assert not (run / "step-00000004" / "lit_model.pth").exists() and not debris(run)

    # A checkpoint cut short some other way (the newest one) is skipped with a warning, never loaded.
    inheritune(tiny_reference, run, data, resume=True)
    cut = run / "step-00000006" / "lit_model.pth"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    shutil.rmtree(run / "final")
    capsys.readouterr()
    inheritune(tiny_reference, run, data, resume=True)
    out = capsys.readouterr().out
    assert "warning: skipping incomplete checkpoint(s)" in out and "step-00000006" in out and "step-00000004" in out
    resumed = torch.load(run / "final" / "lit_model.pth", weights_only=True)
    assert json.loads((run / "final" / "final.json").read_text())["iter"] == 6
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)
    assert not debris(run)


def dead_pid() -> int:
    done = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True)
    return int(done.stdout)


def test_staging_of_a_killed_run_is_removed_by_the_next(tmp_path, tiny_reference):
    out = tmp_path / "child"
    host = socket.gethostname()
    stale = tmp_path / f".child.tmp-{host}-{dead_pid()}-abc123"
    stale.mkdir()
    (stale / "lit_model.pth").write_bytes(b"x" * 1000)  # what a kill -9 in the middle of the write leaves
    alive = tmp_path / f".child.tmp-{host}-{os.getpid()}-def456"  # a run still at work: left alone
    alive.mkdir()
    other_host = tmp_path / f".child.tmp-elsewhere-{dead_pid()}-0a0a0a"  # another machine's: left alone
    other_host.mkdir()
    init.setup(tiny_reference, n_layers=2, out_dir=out)
    assert (out / "lit_model.pth").is_file()
    assert not stale.exists() and alive.exists() and other_host.exists()


@pytest.mark.parametrize("command", ["inheritune_init", "inheritune"])
def test_out_dirs_that_cannot_be_written_are_refused_before_any_work(command, tmp_path, tiny_reference, text_dirs):
    data = small_text(tmp_path, text_dirs)

    def run(out, **kwargs):
        if command == "inheritune_init":
            return init.setup(tiny_reference, n_layers=2, out_dir=out, **kwargs)
        with mock.patch("litgpt.pretrain.setup", side_effect=AssertionError("no work")):
            return inheritune(tiny_reference, out, data, **kwargs)

    a_file = tmp_path / "a_file"
    a_file.write_text("the user's notes")
    for overwrite in (False, True):  # a file is never replaced, with or without --overwrite
        assert "is a file" in one_line_error(lambda: run(a_file, overwrite=overwrite))
    assert a_file.read_text() == "the user's notes"
    assert "is a file" in one_line_error(lambda: run(a_file / "child"))
    assert "cannot be created" in one_line_error(lambda: run(Path("/proc/1/inheritune-child")))
    assert "inside the reference dir" in one_line_error(lambda: run(tiny_reference / "child"))
    assert not (tiny_reference / "child").exists()
    with mock.patch("shutil.disk_usage", return_value=shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6)):
        message = one_line_error(lambda: run(tmp_path / "small_disk"))
    assert "MiB free but the child needs" in message and not (tmp_path / "small_disk").exists()


def test_full_disk_while_the_child_is_written(tmp_path, tiny_reference):
    out = tmp_path / "child"

    def torch_save_on_a_full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    free = shutil._ntuple_diskusage(10**12, 10**12, 0)
    with mock.patch("torch.save", torch_save_on_a_full_disk), mock.patch("shutil.disk_usage", return_value=free), \
            mock.patch("litgpt_inheritune.commands.init.check_out_dir"):  # the disk "fills" only once the write starts
        message = one_line_error(lambda: init.setup(tiny_reference, n_layers=2, out_dir=out))
    assert "no space left on the device" in message and str(out) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no child, no staging


def test_broken_tokenizer_and_text_are_one_line_errors_before_out_dir_is_touched(tmp_path, tiny_reference, text_dirs):
    reference = shutil.copytree(tiny_reference, tmp_path / "reference")
    (reference / "tokenizer.json").write_text("")
    out = tmp_path / "out"
    assert "cannot load a tokenizer" in one_line_error(lambda: init.setup(reference, n_layers=2, out_dir=out))
    data = small_text(tmp_path, text_dirs)
    with mock.patch("litgpt.pretrain.setup", side_effect=AssertionError("no work")):
        assert "cannot load a tokenizer" in one_line_error(lambda: inheritune(reference, out, data))
    assert not out.exists()

    no_text = tmp_path / "no_text"
    no_text.mkdir()
    (no_text / "notes.md").write_text("not a .txt file")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("fine text")
    (bad / "b.txt").write_bytes(b"caf\xe9 latin-1 text")
    cases = {
        str(no_text): (TextFiles(no_text, val_data_path=text_dirs[1]), "holds no .txt files"),
        str(bad / "b.txt"): (TextFiles(bad, val_data_path=text_dirs[1]), "is not UTF-8 text"),
        str(tmp_path / "missing"): (TextFiles(tmp_path / "missing", val_data_path=text_dirs[1]), "does not exist"),
    }
    with mock.patch("litgpt.pretrain.setup", side_effect=AssertionError("no work")):
        for named, (module, what) in cases.items():
            message = one_line_error(lambda: inheritune(tiny_reference, out, module, train=train_args(epochs=1,
                                                                                                    max_tokens=None)))
            assert what in message and named in message
    assert not out.exists()  # and the next attempt is not told that out_dir "holds an interrupted run"


def test_text_is_prepared_whole_with_a_private_litdata_cache(tmp_path, tiny_reference, text_dirs):
    from litgpt import Tokenizer

    from litgpt_inheritune.checks import locate_text_cache, prepare_text_files

    data = small_text(tmp_path, text_dirs)
    inputs = snapshot(tmp_path / "train_txt"), snapshot(tmp_path / "val_txt")
    data.connect(Tokenizer(tiny_reference), batch_size=2, max_seq_length=32)
    cache = locate_text_cache(data)
    assert cache.parent.parent == Path(os.environ["INHERITUNE_CACHE"])
    # What a preparation killed half-way (or emptied by another one) leaves: a dir without a usable index.
    data.out_path_train.mkdir(parents=True)
    (data.out_path_train / "chunk-0-0.bin").write_bytes(b"half")
    seen = []
    plain = litdata.optimize

    def optimize(*args, **kwargs):
        seen.append(os.environ["DATA_OPTIMIZER_CACHE_FOLDER"])
        return plain(*args, **kwargs)

    with mock.patch.object(litdata, "optimize", optimize):
        prepare_text_files(data)
    assert len(seen) == 2 and all("inheritune-litdata-" in s for s in seen)
    assert not Path(seen[0]).parent.exists()  # the private staging folder is gone
    for directory in (data.out_path_train, data.out_path_val):
        index = json.loads((directory / "index.json").read_text())
        assert index["chunks"] and all((directory / c["filename"]).is_file() for c in index["chunks"])
    assert not debris(data.train_data_path) and not debris(data.val_data_path)
    before = snapshot(data.out_path_train)
    prepare_text_files(data)  # complete: left as it is
    assert snapshot(data.out_path_train) == before
    # the user's text folders were only read
    assert (snapshot(tmp_path / "train_txt"), snapshot(tmp_path / "val_txt")) == inputs
    assert all(p.suffix == ".txt" for p in (tmp_path / "train_txt").iterdir())
    # another sequence length or other text is another cache entry; the same inputs find the same one
    (tmp_path / "again").mkdir()
    again = small_text(tmp_path / "again", text_dirs)
    again.connect(Tokenizer(tiny_reference), batch_size=2, max_seq_length=32)
    assert locate_text_cache(again) != cache  # other folders
    data.connect(Tokenizer(tiny_reference), batch_size=2, max_seq_length=64)
    assert locate_text_cache(data) != cache
    data.connect(Tokenizer(tiny_reference), batch_size=2, max_seq_length=32)
    assert locate_text_cache(data) == cache


def test_killed_data_preparation_ends_quietly_and_its_spill_is_removed_next_time(tmp_path, tiny_reference):
    """kill -9 of `litgpt inheritune_data` (the parent only) while two workers tokenize: the workers end at once
    without tracebacks, and the next run removes the spill dir the killed one left in $TMPDIR."""
    import signal
    import sys
    import time

    from pydoc_data.topics import topics

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [topics[name] for name in sorted(topics)]
    for i in range(6):
        (corpus / f"part-{i}.jsonl").write_text("".join(json.dumps({"text": texts[j % len(texts)]}) + "\n"
                                                        for j in range(i, i + 400)))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "litgpt", "inheritune_data", str(corpus), str(tiny_reference), "--val_tokens",
               "1000", "--num_workers", "2"]
    process = subprocess.Popen(command + ["--fraction", "0.9", "--out_dir", str(tmp_path / "killed")], env=env,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not any(p.stat().st_size > 0 for p in scratch.glob("inheritune-data-*/spill-*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    time.sleep(2)
    with pytest.raises(ProcessLookupError):  # no worker of the killed run is left
        os.killpg(process.pid, 0)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-2000:]
    left = list(scratch.glob("inheritune-data-*"))
    assert left and not (tmp_path / "killed").exists()

    done = subprocess.run(command + ["--tokens", "20000", "--out_dir", str(tmp_path / "next")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not any(p.exists() for p in left) and (tmp_path / "next" / "summary.json").is_file()

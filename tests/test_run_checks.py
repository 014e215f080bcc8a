"""Faults and bad input, round two: every bad budget, batch split, data path and config file refused in one line
before the first byte of the run is written; what a killed save leaves inside checkpoint dirs removed by the next
run, which says so and says what it resumes from."""

import shutil
from pathlib import Path

import pytest
import torch
from litgpt.args import EvalArgs, TrainArgs

from litgpt_inheritune.commands import inheritune as train
from litgpt_inheritune.training import check_batches
from test_bad_input import one_line_error
from test_train import small_text

QUIET = EvalArgs(interval=1000, max_iters=2, initial_validation=False, final_validation=False)


def train_args(**kw) -> TrainArgs:
    values = dict(save_interval=2, log_interval=1, global_batch_size=2, micro_batch_size=2, lr_warmup_steps=1,
                  epochs=None, max_tokens=4 * 64, max_seq_length=32, max_norm=1.0, min_lr=1e-4)
    values.update(kw)
    return TrainArgs(**values)


def inheritune(reference, out, data, **kwargs):
    arguments = dict(n_layers=2, out_dir=out, data=data, train=train_args(), eval=QUIET, precision="32-true",
                     devices=1, logger_name="csv", compile=False)
    arguments.update(kwargs)
    return train.setup(reference, **arguments)


def test_bad_budgets_batches_data_and_configs_are_refused_before_the_first_byte(tmp_path, tiny_reference, text_dirs):
    from litgpt_inheritune.data.mixture import DomainMixture

    data = small_text(tmp_path, text_dirs, n_train=1)
    broken = tmp_path / "broken-reference"  # a reference whose model_config.yaml does not parse
    shutil.copytree(tiny_reference, broken)
    (broken / "model_config.yaml").write_text("name: tiny\nn_layer: [6\nn_embd: 32\n")
    a_file = sorted(Path(data.train_data_path).glob("*.txt"))[0]
    cases = [
        (dict(train=train_args(max_tokens=-5)), "--train.max_tokens must be positive, got -5"),
        # less than one optimizer step (2 x 32 tokens): it used to train 0 steps and write an untrained final/
        (dict(train=train_args(max_tokens=10)), "--train.max_tokens gives 10 tokens, less than one optimizer step"),
        (dict(train=train_args(max_tokens=None, epochs=0.0001)), "less than one optimizer step (2 sequences x 32"),
        # LitGPT asserted on every rank, after initial/ was written
        (dict(train=train_args(global_batch_size=1)), "--train.global_batch_size 1 is not a multiple of 1 process x"),
        (dict(train=train_args(max_seq_length=4096)), "longer than the reference's block_size 128"),
        (dict(data=DomainMixture(tmp_path / "no-mixture")), "--data.data_path"),
        (dict(data=type(data)(train_data_path=a_file, val_data_path=data.val_data_path)), "is a file; give the dir"),
    ]
    for i, (kwargs, expected) in enumerate(cases):
        out = tmp_path / f"run{i}"
        given = {"data": data, **kwargs}
        message = one_line_error(lambda: inheritune(tiny_reference, out, given.pop("data"), **given))
        assert expected in message, (expected, message)
        assert not out.exists() and not list(tmp_path.glob(f".run{i}*")), message  # not one byte written
    message = one_line_error(lambda: inheritune(broken, tmp_path / "yaml", data))
    assert "model_config.yaml' (line 3)" in message and "fix the file" in message
    assert not (tmp_path / "yaml").exists()


def test_batch_split_for_the_world_size():
    check_batches(train_args(global_batch_size=12, micro_batch_size=2), 3)  # 3 processes x 2 x 2 steps
    with pytest.raises(ValueError, match=r"4 is not a multiple of 3 processes x --train.micro_batch_size 2 = 6; give 6"):
        check_batches(train_args(global_batch_size=4, micro_batch_size=2), 3)
    with pytest.raises(ValueError, match="give 12 or 18"):
        check_batches(train_args(global_batch_size=16, micro_batch_size=2), 3)


def test_what_a_killed_save_left_is_removed_and_the_resume_says_from_where(tmp_path, tiny_reference, text_dirs,
                                                                            capsys):
    data = small_text(tmp_path, text_dirs, n_train=1)
    run = tmp_path / "run"
    inheritune(tiny_reference, run, data)  # steps 2 and 4 saved, then final/
    # What `kill -9` during the saves of steps 4 (rewritten later) and 6 leaves: Lightning's staging file in the
    # step dir (fsspec's mkstemp name), this package's .partial file; a step dir whose save never began.
    shutil.rmtree(run / "final")
    (run / "step-00000004" / "tmpk3x9_q2z").write_bytes(b"x" * 1000)
    (run / "step-00000006").mkdir()
    (run / "step-00000006" / ".lit_model.pth.partial").write_bytes(b"x" * 1000)
    (run / "step-00000006" / "tmpab12cd34").write_bytes(b"x" * 500)
    (run / "step-00000008").mkdir()
    capsys.readouterr()
    inheritune(tiny_reference, run, data, train=train_args(max_tokens=6 * 64), resume=True)
    out = capsys.readouterr().out
    assert "Removed what an interrupted save left" in out
    for name in ("tmpk3x9_q2z", ".lit_model.pth.partial", "tmpab12cd34", "step-00000008"):
        assert name in out, name
    assert f"Resuming from {run / 'step-00000004' / 'lit_model.pth'} (the newest complete step checkpoint" in out
    assert sorted(p.name for p in run.glob("step-*")) == ["step-00000002", "step-00000004", "step-00000006"]
    leftovers = [p for p in run.rglob("*") if p.name.startswith("tmp") or p.name.endswith(".partial")]
    assert leftovers == []
    assert torch.load(run / "step-00000006" / "lit_model.pth", weights_only=False)["iter_num"] == 6

    # Killed before its first save: the resume starts again from initial/ and says why.
    early = tmp_path / "early"
    early.mkdir()
    shutil.copytree(run / "initial", early / "initial")
    (early / "step-00000002").mkdir()
    capsys.readouterr()
    inheritune(tiny_reference, early, data, train=train_args(max_tokens=2 * 64), resume=True)
    out = capsys.readouterr().out
    assert "from initial/: it holds no complete step checkpoint (the run stopped before its first save" in out
    assert (early / "step-00000002" / "lit_model.pth").is_file() and (early / "final").is_dir()


def test_a_run_that_appears_while_a_child_is_written_is_not_told_to_overwrite(tmp_path):
    from litgpt_inheritune.checkpoint import atomic_dir
    from litgpt_inheritune.errors import InherituneError

    out = tmp_path / "initial"
    with pytest.raises(InherituneError) as info:
        with atomic_dir(out) as staging:
            (staging / "lit_model.pth").write_bytes(b"mine")
            out.mkdir()  # another run's
            (out / "lit_model.pth").write_bytes(b"theirs")
    assert "another run is writing there" in str(info.value) and "--overwrite" not in str(info.value)
    assert (out / "lit_model.pth").read_bytes() == b"theirs" and not list(tmp_path.glob(".initial*"))

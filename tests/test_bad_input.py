"""Every bad input of `litgpt inheritune` and `litgpt inheritune_init`: a one-line error naming the fix, raised before
any expensive work (LitGPT's pretraining loop is never entered), with nothing on disk lost or half-written."""

import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch

from litgpt.args import EvalArgs, TrainArgs
from litgpt.data import TextFiles

from litgpt_inheritune.commands import init
from litgpt_inheritune.commands import inheritune as train


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` with its bytes (empty when it does not exist)."""
    if not directory.exists():
        return {}
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line_error(call) -> str:
    with pytest.raises(SystemExit) as info:
        call()
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def wordlevel_tokenizer(directory: Path, size: int) -> Path:
    """A real HF ``tokenizers`` tokenizer of ``size`` words, saved as a LitGPT tokenizer dir."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"w{i}": i + 1 for i in range(size - 1)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    directory.mkdir(parents=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    return directory


@pytest.fixture
def broken_references(tmp_path, tiny_reference):
    """Copies of the tiny reference, each broken in one way."""
    made = {}
    for name, remove in (("no_weights", "lit_model.pth"), ("no_config", "model_config.yaml")):
        made[name] = shutil.copytree(tiny_reference, tmp_path / name)
        (made[name] / remove).unlink()
    made["wrong_weights"] = shutil.copytree(tiny_reference, tmp_path / "wrong_weights")
    state = torch.load(tiny_reference / "lit_model.pth", weights_only=True)
    state["transformer.h.0.mlp.fc_1.weight"] = state["transformer.h.0.mlp.fc_1.weight"][:-1]
    torch.save(state, made["wrong_weights"] / "lit_model.pth")
    made["missing"] = tmp_path / "does-not-exist"
    return made


CASES = {
    "n_layers 0": (dict(n_layers=0), "n_layers"),
    "n_layers beyond depth": (dict(n_layers=7), "6"),
    "duplicate layers": (dict(layers=[0, 1, 1]), "1"),
    "layer out of range": (dict(layers=[0, 6]), "6"),
    "negative layer": (dict(layers=[-1, 0]), "-1"),
    "both n_layers and layers": (dict(n_layers=2, layers=[0, 1]), "layers"),
    "neither n_layers nor layers": (dict(), "n_layers"),
    "unknown part": (dict(n_layers=2, parts=["ffn"]), "ffn"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["inheritune_init", "inheritune"])
def test_bad_layer_choice(case, command, tmp_path, tiny_reference, text_dirs):
    kwargs, named = CASES[case]
    out = tmp_path / "out"
    message = one_line_error(lambda: call(command, tiny_reference, out, text_dirs, **kwargs))
    assert named in message
    assert not out.exists()


@pytest.mark.parametrize("broken", ["missing", "no_weights", "no_config", "wrong_weights"])
@pytest.mark.parametrize("command", ["inheritune_init", "inheritune"])
def test_bad_reference_dir(broken, command, tmp_path, broken_references, text_dirs):
    out = tmp_path / "out"
    message = one_line_error(lambda: call(command, broken_references[broken], out, text_dirs, n_layers=2))
    expected = {"missing": "does not exist", "no_weights": "lit_model.pth", "no_config": "model_config.yaml",
                "wrong_weights": "transformer.h.0.mlp.fc_1.weight"}[broken]
    assert expected in message
    assert not out.exists()


@pytest.mark.parametrize("size, named", [(100, "vocabulary"), (60_000, "60000")])
@pytest.mark.parametrize("command", ["inheritune_init", "inheritune"])
def test_tokenizer_that_does_not_match_the_reference(size, named, command, tmp_path, tiny_reference, text_dirs):
    tokenizer_dir = wordlevel_tokenizer(tmp_path / "other-tokenizer", size)
    out = tmp_path / "out"
    message = one_line_error(
        lambda: call(command, tiny_reference, out, text_dirs, n_layers=2, tokenizer_dir=tokenizer_dir)
    )
    assert named in message and "tokenizer" in message
    assert not out.exists()


def test_the_reference_tokenizer_itself_is_accepted(tmp_path, tiny_reference):
    copy = shutil.copytree(tiny_reference, tmp_path / "tok", ignore=shutil.ignore_patterns("*.pth", "*.yaml"))
    init.setup(tiny_reference, n_layers=1, out_dir=tmp_path / "child", tokenizer_dir=copy)
    assert (tmp_path / "child" / "lit_model.pth").is_file()


@pytest.mark.parametrize(
    "train_kwargs, named",
    [(dict(epochs=2, max_tokens=1000), "not both"), (dict(epochs=None, max_tokens=None), "budget"),
     (dict(epochs=0), "positive"), (dict(max_norm=None), "max_norm")],
)
def test_bad_budget(train_kwargs, named, tmp_path, tiny_reference, text_dirs):
    out = tmp_path / "out"
    message = one_line_error(lambda: call("inheritune", tiny_reference, out, text_dirs, n_layers=2, **train_kwargs))
    assert named in message
    assert not out.exists()


def test_missing_data(tmp_path, tiny_reference):
    with mock.patch("litgpt.pretrain.setup", side_effect=AssertionError("pretrain must not start")):
        message = one_line_error(lambda: train.setup(tiny_reference, n_layers=2, out_dir=tmp_path / "out"))
    assert "--data" in message


@pytest.mark.parametrize("state", ["finished", "interrupted"])
def test_out_dir_with_a_run_is_left_untouched(state, tmp_path, tiny_reference, text_dirs):
    out = tmp_path / "out"
    init.setup(tiny_reference, n_layers=2, out_dir=out / "initial")
    if state == "finished":
        (out / "final").mkdir()
        (out / "final" / "lit_model.pth").write_bytes(b"trained weights")
    else:
        (out / "step-00000100").mkdir()
        (out / "step-00000100" / "lit_model.pth").write_bytes(b"half-way weights")
    before = snapshot(out)
    message = one_line_error(lambda: call("inheritune", tiny_reference, out, text_dirs, n_layers=2))
    assert f"{state} run" in message and "--resume" in message and "--overwrite" in message
    assert snapshot(out) == before


def test_init_out_dir_with_a_checkpoint_is_left_untouched(tmp_path, tiny_reference):
    out = tmp_path / "child"
    init.setup(tiny_reference, n_layers=3, out_dir=out)
    before = snapshot(out)
    message = one_line_error(lambda: init.setup(tiny_reference, n_layers=2, out_dir=out))
    assert "--overwrite" in message
    assert snapshot(out) == before


def test_resume_without_a_run(tmp_path, tiny_reference, text_dirs):
    message = one_line_error(lambda: call("inheritune", tiny_reference, tmp_path / "out", text_dirs, n_layers=2,
                                          resume=True))
    assert "--resume" in message


def call(command, reference, out, text_dirs, tokenizer_dir=None, resume=False, **kwargs):
    """Runs one command with ``kwargs``; for `inheritune`, LitGPT's loop must not be reached."""
    layer_kwargs = {k: kwargs.pop(k) for k in ("n_layers", "layers", "parts") if k in kwargs}
    if command == "inheritune_init":
        return init.setup(reference, out_dir=out, tokenizer_dir=tokenizer_dir, **layer_kwargs)
    train_dir, val_dir = text_dirs
    budget = dict(epochs=1, max_tokens=None, micro_batch_size=1, global_batch_size=1, max_seq_length=32,
                  lr_warmup_steps=1, max_norm=1.0, save_interval=None)
    budget.update(kwargs)
    with mock.patch("litgpt.pretrain.setup", side_effect=AssertionError("pretrain must not start")):
        return train.setup(
            reference, out_dir=out, tokenizer_dir=tokenizer_dir, resume=resume,
            data=TextFiles(train_data_path=train_dir, val_data_path=val_dir, num_workers=0),
            train=TrainArgs(**budget), eval=EvalArgs(max_iters=1), devices=1, precision="32-true",
            logger_name="csv", compile=False, **layer_kwargs,
        )


def test_optimizer_key_beside_init_args_is_refused(tmp_path, tiny_reference, text_dirs, litgpt_cli):
    """`--optimizer.lr X` on top of a --config that gives the optimizer lands beside init_args, where LitGPT ignores
    it: the run must stop instead of training with the YAML's learning rate."""
    config = Path(__file__).parents[1] / "config_hub" / "smollm2_shape.yaml"
    out = tmp_path / "out"
    code, _, err = litgpt_cli("inheritune", "--config", str(config), str(tiny_reference), "--n_layers", "2", "--out_dir", str(out),
        "--data.train_data_path", str(text_dirs[0]), "--data.val_data_path", str(text_dirs[1]), "--optimizer.lr", "3e-4")
    assert code != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: --optimizer has ['lr']") and "init_args" in last, err[-2000:]
    assert not out.exists()

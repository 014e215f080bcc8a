"""Evidence that can be trusted: one fixed, unshuffled validation set (every evaluation of the same weights gives the
same loss), the lowest-validation step kept whole in out_dir/best (and across a resume), and a held-out test split
that shares no document with train or val (the demo's text and `litgpt inheritune_data --test_tokens`)."""

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from litgpt.args import EvalArgs
from litgpt.data import TextFiles

from litgpt_inheritune import validation
from litgpt_inheritune.commands.inheritune import setup
from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.training import InherituneTrainArgs
from test_train import small_text, train_args

RUN = dict(n_layers=2, precision="32-true", devices=1, logger_name="csv", compile=False)
EVERY_STEP = EvalArgs(interval=1, max_iters=2, initial_validation=True, final_validation=True)


@pytest.fixture(scope="module")
def text(tmp_path_factory, text_dirs):
    """A fresh TextFiles module over one small text dir of this file's tests (tokenized once, then cached)."""
    data = small_text(tmp_path_factory.mktemp("evidence"), text_dirs)
    return lambda: TextFiles(train_data_path=data.train_data_path, val_data_path=data.val_data_path, num_workers=0)


def logged_val_losses(out_dir: Path) -> list[tuple[int, float]]:
    """(logged step, val_loss) of every evaluation in the run's metrics.csv files, in order."""
    rows = []
    for path in sorted(out_dir.rglob("metrics.csv")):
        with path.open() as stream:
            rows += [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(stream) if r.get("val_loss")]
    return rows


def test_the_same_weights_give_the_same_validation_loss_at_every_evaluation(tmp_path, tiny_reference, text):
    """With learning rate 0 the weights never move: the initial, every in-loop and the final evaluation, and a
    separate pass over final/ by validation.val_loss, measure the same windows and so give one number."""
    out = tmp_path / "run"
    train = InherituneTrainArgs(**{**vars(train_args(max_tokens=4 * 64, min_lr=0.0)), "keep_best": False})
    setup(tiny_reference, out_dir=out, data=text(), train=train, eval=EVERY_STEP,
          optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.0}}, **RUN)
    losses = [loss for _, loss in logged_val_losses(out)]
    assert len(losses) == 4 + 1  # one per step, and the final one (LitGPT prints the initial one only)
    assert max(losses) - min(losses) < 1e-6, losses
    again = validation.val_loss(out / "final", text(), 32, 2, 2, device="cpu")
    assert again == pytest.approx(losses[0], abs=1e-5)
    # --train.keep_best false: no best/, and the choice is in the run's hyperparameters
    assert not (out / "best").exists()
    assert yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())["train"]["keep_best"] is False


def test_best_holds_the_lowest_validation_step_and_survives_a_resume(tmp_path, tiny_reference, text, capsys):
    data = text()
    out = tmp_path / "run"
    eval_args = EvalArgs(interval=1, max_iters=2, initial_validation=False, final_validation=False)
    kwargs = dict(out_dir=out, data=data, eval=eval_args,
                  optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-2}}, **RUN)
    setup(tiny_reference, train=InherituneTrainArgs(**vars(train_args(max_tokens=4 * 64, save_interval=1))),
          **kwargs)
    logged = logged_val_losses(out)
    step, lowest = min(((s + 1, v) for s, v in logged), key=lambda sv: sv[1])  # logged at iter - 1
    record = json.loads((out / "best" / "best.json").read_text())
    assert record == {"step": step, "iter": step, "tokens": step * 2 * 32, "val_loss": pytest.approx(lowest)}
    assert f"new best val loss {lowest:.4f} at step {step}: {out / 'best'}" in capsys.readouterr().out
    # best/ is a complete checkpoint of that step's weights, loadable like final/
    best_weights = torch.load(out / "best" / "lit_model.pth", weights_only=True)  # the weights alone, as final/'s
    step_weights = torch.load(out / f"step-{step:08d}" / "lit_model.pth", weights_only=False)["model"]
    assert best_weights.keys() == step_weights.keys()
    assert all(torch.equal(best_weights[k], step_weights[k]) for k in best_weights)
    for name in ("model_config.yaml", "tokenizer.json", "config.json", "hyperparameters.yaml"):
        assert (out / "best" / name).is_file(), name
    assert validation.val_loss(out / "best", data, 32, 2, 2, device="cpu") == pytest.approx(lowest, abs=1e-5)

    # A resume reads the recorded best back: a record no later evaluation beats is left alone ...
    record["val_loss"] = -1.0
    (out / "best" / "best.json").write_text(json.dumps(record))
    setup(tiny_reference, train=InherituneTrainArgs(**vars(train_args(max_tokens=6 * 64, save_interval=1))),
          resume=True, **kwargs)
    assert json.loads((out / "best" / "best.json").read_text()) == record
    assert "new best val loss" not in capsys.readouterr().out
    # ... and one they beat is replaced by the lowest of the resumed evaluations.
    record["val_loss"] = 1e9
    (out / "best" / "best.json").write_text(json.dumps(record))
    setup(tiny_reference, train=InherituneTrainArgs(**vars(train_args(max_tokens=7 * 64, save_interval=1))),
          resume=True, **kwargs)
    resumed = [(s + 1, v) for s, v in logged_val_losses(out) if s + 1 == 7]
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 7
    assert json.loads((out / "best" / "best.json").read_text())["val_loss"] == pytest.approx(resumed[-1][1])


def test_best_is_replaced_whole_or_not_at_all(tmp_path, tiny_reference):
    """A failure while writing a new best/ leaves the old one as it was (and no staging); a kill between the two
    renames leaves the old one aside, whole, and the next resume puts it back."""
    import lightning as L
    from litgpt import GPT, Config

    from litgpt_inheritune.checkpoint import read_best, recover_best, save_best, staging_path

    fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true", loggers=[])
    model = GPT(Config.from_file(tiny_reference / "model_config.yaml"))
    out = tmp_path / "run"
    out.mkdir()
    write = lambda directory: (Path(directory) / "hyperparameters.yaml").write_text("n_layers: 2\n")  # noqa: E731
    save_best(fabric, model, out / "best", {"step": 3, "iter": 3, "tokens": 192, "val_loss": 2.5}, tiny_reference,
              write)
    assert read_best(out)["step"] == 3

    def full_disk(directory):
        raise OSError(28, "No space left on device", str(directory))

    with pytest.raises(InherituneError, match=r"no space left on the device; free some space") as info:
        save_best(fabric, model, out / "best", {"step": 5, "iter": 5, "tokens": 320, "val_loss": 2.0},
                  tiny_reference, full_disk)
    assert "\n" not in str(info.value)
    assert read_best(out)["step"] == 3 and sorted(p.name for p in out.iterdir()) == ["best"]

    os.replace(out / "best", staging_path(out / "best", "old"))  # killed after renaming the old one aside
    assert read_best(out) is None
    assert recover_best(out) == out / "best" and read_best(out)["step"] == 3


def test_demo_text_has_a_test_split_disjoint_from_train_and_val(tmp_path):
    from pydoc_data.topics import topics

    from litgpt_inheritune.demo.run import pydoc_test_dir, write_pydoc_text

    data_dir = tmp_path / "data"
    (data_dir / "train").mkdir(parents=True)
    stale = sorted(topics)[5]  # a test topic that a data dir written before the test split holds in train/
    (data_dir / "train" / f"{stale}.txt").write_text(topics[stale])
    train_dir, val_dir = write_pydoc_text(data_dir)
    test_dir = pydoc_test_dir(data_dir)
    assert test_dir == data_dir / "test"
    names = {d: {p.name for p in d.glob("*.txt")} for d in (train_dir, val_dir, test_dir)}
    assert all(names.values())
    assert not names[train_dir] & names[val_dir] and not names[train_dir] & names[test_dir]
    assert not names[val_dir] & names[test_dir]
    assert set.union(*names.values()) == {f"{n}.txt" for n in topics}
    assert f"{stale}.txt" in names[test_dir]
    assert write_pydoc_text(data_dir) == (train_dir, val_dir)  # again: the same dirs, nothing moves


def test_test_loss_measures_fixed_windows_of_text(tmp_path, tiny_reference, text_dirs):
    """The demo's held-out topics in name order, encoded as TextFiles does, cut into windows: the same number twice."""
    from litgpt import Tokenizer

    from litgpt_inheritune.demo.run import pydoc_test_dir

    test_dir = pydoc_test_dir(text_dirs[0].parent)
    files = sorted(test_dir.glob("*.txt"))
    tokenizer = Tokenizer(tiny_reference)
    windows = validation.text_windows(files, tokenizer, 33, 6)
    assert windows.shape == (6, 33) and int(windows[0, 0]) == tokenizer.bos_id
    assert files[0].read_text().strip().startswith(tokenizer.decode(windows[0, 1:]).strip())
    first = validation.test_loss(tiny_reference, test_dir, max_seq_length=32, batch_size=2, max_iters=3, device="cpu")
    assert math.isfinite(first) and first > 0
    assert first == validation.test_loss(tiny_reference, test_dir, max_seq_length=32, batch_size=2, max_iters=3,
                                         device="cpu")
    with pytest.raises(InherituneError, match="neither .txt files nor a litdata index.json"):
        validation.test_loss(tiny_reference, tmp_path)


@pytest.fixture
def records():
    from pydoc_data.topics import topics

    return [{"text": topics[name]} for name in sorted(topics)[:40]]


def test_inheritune_data_writes_a_disjoint_test_split(tmp_path, tiny_reference, records):
    from litgpt import Tokenizer

    from litgpt_inheritune.data.sampler import build_subset

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "subset"
    summary = build_subset(corpus, tiny_reference, out, tokens=3000, val_tokens=800, test_tokens=800, seed=3,
                           num_workers=1, progress=False)
    assert summary["test"]["tokens"] >= 800 and json.loads((out / "summary.json").read_text())["test"] == summary["test"]

    tokenizer = Tokenizer(tiny_reference)
    texts = {split: tokenizer.decode(torch.tensor(tokens(out / split))) for split in ("train", "val", "test")}
    found = {split: {i for i, r in enumerate(records) if r["text"][:300] in text} for split, text in texts.items()}
    assert len(found["test"]) == summary["test"]["documents"] and len(found["val"]) == summary["val"]["documents"]
    assert not found["test"] & found["train"] and not found["test"] & found["val"] and not found["val"] & found["train"]

    # The default writes no test split and leaves the other splits as they were.
    plain = build_subset(corpus, tiny_reference, tmp_path / "plain", tokens=3000, val_tokens=800, seed=3,
                         num_workers=1, progress=False)
    assert "test" not in plain and not (tmp_path / "plain" / "test").exists()
    assert plain["val"] == summary["val"]
    with pytest.raises(InherituneError, match="--test_tokens must be >= 0"):
        build_subset(corpus, tiny_reference, tmp_path / "bad", tokens=3000, test_tokens=-1)

    # test_loss reads the litdata split as it reads text
    loss = validation.test_loss(tiny_reference, out / "test", max_seq_length=32, batch_size=2, max_iters=2,
                                device="cpu")
    assert math.isfinite(loss) and loss > 0


def tokens(split_dir: Path) -> list[int]:
    """Every token of a litdata token dir, in stored order."""
    from litdata.streaming import StreamingDataset, TokensLoader

    dataset = StreamingDataset(input_dir=str(split_dir), item_loader=TokensLoader(block_size=1))
    return [int(dataset[i][0]) for i in range(len(dataset))]


def test_the_seed_orders_the_training_data_of_an_inherited_child(tmp_path, tiny_reference, text):
    """An inherited child has nothing random to initialise: its seed must still change the run (the order of the
    training stream), or runs over several seeds would repeat one run and report a spread of zero."""
    def final_weights(seed: int, name: str) -> dict:
        out = tmp_path / name
        setup(tiny_reference, out_dir=out, data=text(), seed=seed,
              train=InherituneTrainArgs(**{**vars(train_args(max_tokens=3 * 64)), "keep_best": False}),
              eval=EvalArgs(interval=1000, max_iters=1, initial_validation=False, final_validation=False),
              optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-2}}, **RUN)
        return torch.load(out / "final" / "lit_model.pth", weights_only=True)

    first, again, other = final_weights(0, "seed0"), final_weights(0, "seed0-again"), final_weights(1, "seed1")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)

"""`litgpt inheritune_grow` end to end on a tiny reference and real text: rounds, stopping, resuming, bad input."""

import json
import logging

import pytest
from litgpt.args import EvalArgs, TrainArgs

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.experiments.grow import grow, parse_target, round_depths

from test_train import small_text


def arguments(tmp_path, tiny_reference, text_dirs, **kw):
    if (tmp_path / "train_txt").is_dir():  # the same text again
        from litgpt.data import TextFiles

        data = TextFiles(train_data_path=tmp_path / "train_txt", val_data_path=tmp_path / "val_txt", num_workers=0)
    else:
        data = small_text(tmp_path, text_dirs)
    values = dict(
        reference_dir=tiny_reference, data=data, out_dir=tmp_path / "grow", steps=2,
        n_layers_start=2, grow_by=2, precision="32-true", devices=1, compile=False, logger_name="csv",
        train=TrainArgs(save_interval=1, log_interval=1, global_batch_size=2, micro_batch_size=2, lr_warmup_steps=1,
                        max_seq_length=32, max_norm=1.0, min_lr=1e-4),
        eval=EvalArgs(interval=1000, max_iters=2, initial_validation=False, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
    )
    values.update(kw)
    return values


def test_round_depths_and_targets():
    assert round_depths(30, 15, 2) == [15, 17, 19, 21, 23, 25, 27, 29, 30]
    assert round_depths(6, 2, 2) == [2, 4, 6]
    assert round_depths(6, 6, 2) == [6]
    assert parse_target("reference") == "reference" and parse_target("3.25") == 3.25
    for bad, call in [("--n_layers_start", lambda: round_depths(6, 7, 2)), ("--grow_by", lambda: round_depths(6, 2, 0)),
                      ("--target", lambda: parse_target("ref"))]:
        with pytest.raises(InherituneError, match=bad):
            call()


class RecompileLimit(logging.Handler):
    """Dynamo's warnings that a function hit its recompile limit (after which it runs eager, silently slower)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        if "recompile_limit" in record.getMessage():
            self.messages.append(record.getMessage())


def test_grows_until_the_reference_depth_when_the_target_is_out_of_reach(tmp_path, tiny_reference, text_dirs,
                                                                         monkeypatch):
    # compiled, as users run it: each round's model is compiled afresh. The limit is lowered from dynamo's 8 to 4 so that
    # 3 rounds would hit it if the rounds' graphs (a train and a no-grad one per depth) piled up in one cache.
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 4)
    warnings = RecompileLimit()
    logging.getLogger("torch._dynamo").addHandler(warnings)
    try:
        rows = grow(**arguments(tmp_path, tiny_reference, text_dirs, target=0.5, compile=True))
    finally:
        logging.getLogger("torch._dynamo").removeHandler(warnings)
    assert warnings.messages == []
    assert [r["n_layers"] for r in rows] == [2, 4, 6] and not any(r["matched"] for r in rows)
    out = tmp_path / "grow"
    assert json.loads((out / "rounds.json").read_text()) == rows
    assert "| 3 | 6 | 2 | 128 |" in (out / "rounds.md").read_text()  # 2 steps x 2 sequences x 32 tokens
    from litgpt import Config

    for n in (2, 4, 6):
        assert Config.from_file(out / f"n{n:03d}" / "final" / "model_config.yaml").n_layer == n
        assert json.loads((out / f"n{n:03d}" / "initial" / "inheritune.json").read_text())["layers"] == list(range(n))


def test_stops_at_the_first_round_that_matches_the_reference(tmp_path, tiny_reference, text_dirs):
    rows = grow(**arguments(tmp_path, tiny_reference, text_dirs, target="reference", tolerance=100.0))
    reference = json.loads((tmp_path / "grow" / "reference_loss.json").read_text())["val_loss"]
    assert len(rows) == 1 and rows[0]["matched"] and rows[0]["target_loss"] == reference
    assert not (tmp_path / "grow" / "n004").exists()


def test_an_interrupted_growth_run_resumes_at_its_round(tmp_path, tiny_reference, text_dirs):
    from litgpt_inheritune.training import run

    trained = []

    def interrupted(**kw):
        if kw["n_layers"] == 4:
            raise KeyboardInterrupt
        trained.append(kw["n_layers"])
        return run(**kw)

    with pytest.raises(KeyboardInterrupt):
        grow(**arguments(tmp_path, tiny_reference, text_dirs, target=0.5), _train_run=interrupted)
    assert [r["n_layers"] for r in json.loads((tmp_path / "grow" / "rounds.json").read_text())] == [2]

    def counted(**kw):
        trained.append(kw["n_layers"])
        return run(**kw)

    first = (tmp_path / "grow" / "n002" / "final" / "lit_model.pth").stat().st_mtime_ns
    rows = grow(**arguments(tmp_path, tiny_reference, text_dirs, target=0.5), _train_run=counted)
    assert trained == [2, 4, 6]  # round 1 was not trained again
    assert [r["n_layers"] for r in rows] == [2, 4, 6]
    assert (tmp_path / "grow" / "n002" / "final" / "lit_model.pth").stat().st_mtime_ns == first

    with pytest.raises(InherituneError, match="other settings \\(steps, tokens\\)"):
        grow(**arguments(tmp_path, tiny_reference, text_dirs, target=0.5, steps=3))

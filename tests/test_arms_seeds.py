"""`litgpt inheritune_arms` over seeds: aggregation and the lr rule on constructed numbers, and a small real run."""

import json
import math
import statistics

import pytest
import torch
from litgpt.args import EvalArgs, TrainArgs

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.experiments.arms import (aggregate, arms_table, base_lr, check_seeds_and_lrs, choose_lr,
                                                identical_seeds_note, run_arms, run_dir_of, with_lr)

from test_train import small_text


def runs(arm, best, test=None, lr=1e-3):
    return [{"arm": arm, "seed": seed, "lr": lr, "tokens": 100, "best_loss": b,
             "test_loss": None if test is None else test[seed], "start_loss": 9.0, "final_loss": b + 0.05,
             "curve": [(0, b + 1), (1, b)], "token_curve": [(0, 9.0), (50, b + 1), (100, b)]}
            for seed, b in enumerate(best)]


def test_seeds_aggregate_to_mean_sample_std_and_a_noise_mark_both_ways():
    rows = {r["arm"]: r for r in aggregate(
        runs("random", [5.0, 5.1, 5.2], [5.5, 5.6, 5.7]) + runs("inherit", [4.0, 4.2, 4.4], [4.1, 4.3, 4.5])
        + runs("random_2x", [4.1, 4.3, 4.5], [4.0, 4.2, 4.4]))}
    inherit, random, random_2x = rows["inherit"], rows["random"], rows["random_2x"]
    assert list(rows) == ["random", "inherit", "random_2x"]  # in the order the arms first appear
    assert inherit["n"] == 3 and inherit["seeds"] == [0, 1, 2]
    assert inherit["best_loss"] == pytest.approx(4.2) and inherit["best_loss_std"] == pytest.approx(0.2)  # n - 1
    assert random["best_loss"] == pytest.approx(5.1) and random["best_loss_std"] == pytest.approx(0.1)
    assert random["test_loss"] == pytest.approx(5.6) and random["test_loss_std"] == pytest.approx(0.1)
    assert inherit["best_vs_inherit"] is None
    # random: +0.9, SE sqrt(0.1^2/3 + 0.2^2/3) = 0.129: beyond noise
    far = random["best_vs_inherit"]
    assert far["diff"] == pytest.approx(0.9) and far["se"] == pytest.approx(math.sqrt(0.01 / 3 + 0.04 / 3))
    assert far["within_noise"] is False
    # random_2x: +0.1 in best val loss, -0.1 in test loss, SE sqrt(0.04/3 + 0.04/3) = 0.163: both within noise
    near = random_2x["best_vs_inherit"]
    assert near["diff"] == pytest.approx(0.1) and near["se"] == pytest.approx(math.sqrt(0.08 / 3))
    assert near["within_noise"] is True
    assert random_2x["test_vs_inherit"]["diff"] == pytest.approx(-0.1) and random_2x["test_vs_inherit"]["within_noise"]
    assert random["curve"] == [(0, pytest.approx(6.1)), (1, pytest.approx(5.1))]  # mean curve over seeds
    assert random["band"][-1] == (100, pytest.approx(5.1), pytest.approx(0.1))  # (tokens, mean, std)

    table = arms_table(rows.values())
    line = {arm: next(l for l in table.splitlines() if l.startswith(f"| {arm} |")) for arm in rows}
    assert "4.2000 ± 0.2000" in line["inherit"] and "| baseline |" in line["inherit"]
    assert "+0.9000 (2 SE 0.2582): beyond noise" in line["random"]
    assert "+0.1000 (2 SE 0.3266): within noise" in line["random_2x"]
    assert "-0.1000 (2 SE 0.3266): within noise" in line["random_2x"]
    assert "| 0.001 |" in line["inherit"] and "0: 4.0000 / 4.1000; 1: 4.2000 / 4.3000" in line["inherit"]
    assert table.splitlines()[2].startswith("| inherit |")  # lowest best val loss first


def test_one_seed_has_no_noise_estimate_and_no_test_split_is_said():
    rows = aggregate(runs("inherit", [4.0]) + runs("random", [5.0]))
    assert rows[1]["best_vs_inherit"] == {"diff": pytest.approx(1.0), "se": None, "within_noise": None}
    assert rows[0]["best_loss_std"] is None and rows[0]["test_loss"] is None
    table = arms_table(rows)
    assert "no noise estimate" in table and table.count("no test split") == 2
    # Seeds that change nothing are said so (their std is 0, not a measured spread).
    assert "identical losses for inherit:" in identical_seeds_note(aggregate(runs("inherit", [4.0, 4.0])))
    assert identical_seeds_note(aggregate(runs("inherit", [4.0, 4.1]))) == ""
    # Without an inherit arm there is nothing to compare with.
    assert aggregate(runs("random", [5.0, 5.1]))[0]["best_vs_inherit"] is None
    assert statistics.stdev([5.0, 5.1]) == pytest.approx(aggregate(runs("random", [5.0, 5.1]))[0]["best_loss_std"])


def test_lr_rule_picks_the_lowest_validation_loss_never_the_test_loss():
    sweep = [{"lr": 3e-4, "best_loss": 4.0, "test_loss": 9.0}, {"lr": 1e-3, "best_loss": 4.5, "test_loss": 1.0}]
    assert choose_lr(sweep) == 3e-4
    sweep = [{"lr": 3e-4, "best_loss": 4.5, "test_loss": 1.0}, {"lr": 1e-3, "best_loss": 4.0, "test_loss": 9.0}]
    assert choose_lr(sweep) == 1e-3
    assert choose_lr([{"lr": 1e-3, "best_loss": 4.0}, {"lr": 3e-4, "best_loss": 4.0}]) == 3e-4  # a tie: the smaller
    assert choose_lr([{"lr": 1e-3, "best_loss": 4.0}]) == 1e-3


def test_lr_plumbing_and_run_dirs(tmp_path):
    adamw = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4, "weight_decay": 0.01}}
    assert base_lr(adamw) == 3e-4 and base_lr("SGD") == 1e-3 and base_lr("torch.optim.AdamW") == 1e-3
    assert with_lr(adamw, 1e-3) == {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": 0.01}}
    assert adamw["init_args"]["lr"] == 3e-4  # the argument itself is left alone
    assert with_lr("SGD", 0.1) == {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}
    assert run_dir_of(tmp_path, "inherit", 42, 1e-3, False, False) == tmp_path / "inherit"
    assert run_dir_of(tmp_path, "inherit", 1, 1e-3, True, False) == tmp_path / "inherit" / "seed1"
    assert run_dir_of(tmp_path, "inherit", 0, 3e-4, True, True) == tmp_path / "inherit" / "lr0.0003" / "seed0"


def test_bad_seeds_lrs_and_test_split_are_one_line_errors(tmp_path):
    with pytest.raises(InherituneError, match="--seeds"):
        check_seeds_and_lrs([0, 0], None, None)
    with pytest.raises(InherituneError, match="--lrs"):
        check_seeds_and_lrs(None, [1e-3, -1.0], None)
    with pytest.raises(InherituneError, match="no .txt files"):
        check_seeds_and_lrs([0], [1e-3], tmp_path)


def iters(run_dir):
    return json.loads((run_dir / "final" / "final.json").read_text())["iter"]


def test_two_seeds_two_arms_real_run_with_test_split_and_a_rerun_that_skips(tmp_path, tiny_reference, text_dirs):
    test_dir = tmp_path / "test_txt"
    test_dir.mkdir()
    held_out = sorted(text_dirs[1].glob("*.txt"))[1]  # small_text validates on the first
    (test_dir / held_out.name).write_text(held_out.read_text())
    out = tmp_path / "arms"
    arguments = dict(
        reference_dir=tiny_reference, n_layers=2, data=small_text(tmp_path, text_dirs), out_dir=out,
        arms=["inherit", "random_2x"], seeds=[0, 1], test_data=test_dir, precision="32-true", devices=1,
        compile=False,
        train=TrainArgs(save_interval=None, log_interval=1, global_batch_size=2, micro_batch_size=2, lr_warmup_steps=1,
                        max_tokens=2 * 2 * 32, max_seq_length=32, max_norm=1.0, min_lr=1e-4),
        eval=EvalArgs(interval=1, max_iters=2, initial_validation=False, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}},
    )
    rows = {r["arm"]: r for r in run_arms(**arguments)}
    for arm, steps in (("inherit", 2), ("random_2x", 4)):  # random_2x trains on twice the tokens
        for seed in (0, 1):
            assert iters(out / arm / f"seed{seed}") == steps
        assert [r["seed"] for r in rows[arm]["runs"]] == [0, 1]
        assert rows[arm]["tokens"] == steps * 2 * 32 and rows[arm]["runs"][0]["tokens_seen"] == steps * 2 * 32
        assert rows[arm]["lr"] == 1e-3 and rows[arm]["test_loss_std"] is not None
        assert rows[arm]["band"][-1][0] == steps * 2 * 32  # the curve's x axis: tokens seen
    first = rows["inherit"]["runs"][0]
    assert first["best_from"] == "best/best.json" and first["test_from"] == "best"  # the lowest-validation checkpoint
    assert rows["random_2x"]["runs"][0]["start_loss"] != pytest.approx(rows["random_2x"]["runs"][1]["start_loss"])
    assert rows["random_2x"]["test_vs_inherit"]["se"] > 0
    table = (out / "arms.md").read_text()
    line = next(l for l in table.splitlines() if l.startswith("| random_2x |"))
    assert line.count(" ± ") >= 4 and "| 0.001 |" in line and "| 256 |" in line and "noise" in line
    assert "no test split" not in table and "one lr for every arm, 0.001 (no sweep)" in table
    if len({r["best_loss"] for r in rows["inherit"]["runs"]}) == 1:  # CPU: a seed changes no inherited weight
        assert "Seeds gave identical losses for inherit:" in table
    saved = json.loads((out / "arms.json").read_text())
    assert [r["arm"] for r in saved] == ["inherit", "random_2x"] and saved[0]["lr_rule"].startswith("one lr")
    assert (out / "curves.png").stat().st_size > 10_000
    # A rerun skips the finished runs and reuses their measurements.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("final/lit_model.pth")}
    assert len(before) == 4
    measured = (out / "inherit" / "seed1" / "measured.json").stat().st_mtime_ns
    again = {r["arm"]: r for r in run_arms(**arguments)}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("final/lit_model.pth")} == before
    assert (out / "inherit" / "seed1" / "measured.json").stat().st_mtime_ns == measured
    assert again["random_2x"]["test_loss"] == pytest.approx(rows["random_2x"]["test_loss"])

"""Baselines and ablations next to Inheritune: the distillation loss, and `litgpt inheritune_arms` end to end."""

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from litgpt.args import EvalArgs, TrainArgs

from litgpt_inheritune.experiments.arms import check_arms, run_arms
from litgpt_inheritune.distill import kd_loss
from litgpt_inheritune.errors import InherituneError

from test_train import small_text


def test_kd_loss_against_hand_computed_terms():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    y = torch.randint(0, 11, (2, 5))
    ce = F.cross_entropy(s.view(-1, 11), y.view(-1))
    assert kd_loss(s, t, y, temperature=2.0, alpha=1.0) == pytest.approx(ce.item())
    assert kd_loss(s, s, y, temperature=2.0, alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)
    p_t = torch.softmax(t.view(-1, 11) / 3.0, -1)
    p_s = torch.softmax(s.view(-1, 11) / 3.0, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    expected = 0.25 * ce + 0.75 * 9.0 * kl
    assert kd_loss(s, t, y, temperature=3.0, alpha=0.25).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_arms_are_one_line_errors():
    with pytest.raises(InherituneError, match=r"unknown arm\(s\) \['scratch'\]"):
        check_arms(["inherit", "scratch"], None)
    with pytest.raises(InherituneError, match="need --analysis"):
        check_arms(["block_influence"], None)
    with pytest.raises(InherituneError, match="listed twice"):
        check_arms(["random", "random"], None)


def first_loss(run_dir):
    path = next(run_dir.rglob("metrics.csv"))
    rows = [r for r in csv.DictReader(path.open()) if r.get("loss")]
    return float(rows[0]["loss"])


def test_arms_share_data_and_budget_and_differ_only_in_start_and_loss(tmp_path, tiny_reference, text_dirs):
    out = tmp_path / "arms"
    arguments = dict(
        reference_dir=tiny_reference, n_layers=2, data=small_text(tmp_path, text_dirs), out_dir=out,
        arms=["inherit", "random", "attention_norms", "kd"], precision="32-true", devices=1, compile=False,
        train=TrainArgs(save_interval=None, log_interval=1, global_batch_size=2, micro_batch_size=2, lr_warmup_steps=1,
                        max_tokens=3 * 2 * 32, max_seq_length=32, max_norm=1.0, min_lr=1e-4),
        eval=EvalArgs(interval=1, max_iters=2, initial_validation=False, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}, kd_alpha=0.5, kd_temperature=2.0,
    )
    rows = {r["arm"]: r for r in run_arms(**arguments)}
    assert set(rows) == {"inherit", "random", "attention_norms", "kd"}
    assert all(len(r["curve"]) == 3 for r in rows.values())  # evaluated after each of the 3 steps
    # Same start for the inherited arms, another for random init and for the MLP-less ablation.
    assert rows["kd"]["start_loss"] == pytest.approx(rows["inherit"]["start_loss"])
    assert rows["random"]["start_loss"] != pytest.approx(rows["inherit"]["start_loss"])
    assert rows["attention_norms"]["start_loss"] != pytest.approx(rows["inherit"]["start_loss"])
    # Same model, same first batch: only the distillation term changes the first training loss.
    assert first_loss(out / "kd") != pytest.approx(first_loss(out / "inherit"), rel=1e-4)
    table = (out / "arms.md").read_text()
    assert all(f"| {arm} |" in table for arm in rows)
    assert (out / "curves.png").stat().st_size > 10_000
    assert json.loads((out / "arms.json").read_text())[0]["arm"] == "inherit"
    # A rerun skips the finished arms (their checkpoints stay as they were).
    before = (out / "random" / "final" / "lit_model.pth").stat().st_mtime_ns
    run_arms(**{**arguments, "arms": ["random"]})
    assert (out / "random" / "final" / "lit_model.pth").stat().st_mtime_ns == before
    assert all(f"| {arm} |" in (out / "arms.md").read_text() for arm in rows)  # earlier arms stay in the table

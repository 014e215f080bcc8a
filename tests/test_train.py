"""`litgpt inheritune` end to end through LitGPT's real pretraining loop, on a tiny reference and real text."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from litgpt.args import EvalArgs, TrainArgs
from litgpt.data import TextFiles

from litgpt_inheritune.commands.inheritune import setup


def small_text(tmp_path: Path, text_dirs, n_train: int = 3) -> TextFiles:
    train_src, val_src = text_dirs
    train, val = tmp_path / "train_txt", tmp_path / "val_txt"
    train.mkdir()
    val.mkdir()
    for f in sorted(train_src.glob("*.txt"))[:n_train]:
        (train / f.name).write_text(f.read_text())
    f = sorted(val_src.glob("*.txt"))[0]
    (val / f.name).write_text(f.read_text())
    return TextFiles(train_data_path=train, val_data_path=val, num_workers=0)


def train_args(**kw) -> TrainArgs:
    values = dict(save_interval=None, log_interval=1, global_batch_size=2, micro_batch_size=2, lr_warmup_steps=1,
                  epochs=None, max_tokens=None, max_seq_length=32, max_norm=1.0, min_lr=1e-4)
    values.update(kw)
    return TrainArgs(**values)


QUIET_EVAL = EvalArgs(interval=1000, max_iters=2, initial_validation=False, final_validation=False)


def test_epochs_become_token_budget_and_final_checkpoint_is_standard(tmp_path, tiny_reference, text_dirs):
    from litgpt import GPT, Config, Tokenizer

    data = small_text(tmp_path, text_dirs)
    out = tmp_path / "run"
    setup(tiny_reference, n_layers=2, out_dir=out, data=data, train=train_args(epochs=2), eval=QUIET_EVAL,
          precision="32-true", devices=1, logger_name="csv", compile=False)

    # The budget is 2 passes over the train set: one sample is max_seq_length tokens in pretrain's count.
    samples = len(data.train_dataloader().dataset)
    final = out / "final"
    assert json.loads((final / "final.json").read_text()) == {"step": 2 * samples // 2, "iter": 2 * samples // 2}
    # LitGPT's checkpoint format: the weights alone (merge_lora reads nothing else; runs resume from step-*)
    state = {"model": torch.load(final / "lit_model.pth", weights_only=True)}

    config = Config.from_file(final / "model_config.yaml")
    assert config.n_layer == 2
    model = GPT(config)
    model.load_state_dict(state["model"])
    # The HF config next to the child describes the child, not the 6-block reference.
    assert json.loads((final / "config.json").read_text())["num_hidden_layers"] == 2
    assert Tokenizer(final).vocab_size == Tokenizer(tiny_reference).vocab_size
    hp = yaml.safe_load((final / "hyperparameters.yaml").read_text())
    assert hp["n_layers"] == 2 and hp["reference_dir"] == str(tiny_reference)
    assert hp["train"]["epochs"] == 2
    assert hp["data"]["class_path"] == "litgpt.data.text_files.TextFiles"
    # The child was trained: its weights moved away from the inherited ones.
    initial = torch.load(out / "initial" / "lit_model.pth")
    assert not torch.equal(initial["transformer.h.0.attn.qkv.weight"], state["model"]["transformer.h.0.attn.qkv.weight"])
    # Tied like the reference.
    assert torch.equal(state["model"]["lm_head.weight"], state["model"]["transformer.wte.weight"])


def test_inherited_initial_child_is_reference_prefix(tmp_path, tiny_reference, text_dirs):
    data = small_text(tmp_path, text_dirs)
    out = tmp_path / "run"
    setup(tiny_reference, layers=[0, 1, 5], out_dir=out, data=data, train=train_args(max_tokens=64),
          eval=QUIET_EVAL, precision="32-true", devices=1, logger_name="csv", compile=False)
    ref = torch.load(tiny_reference / "lit_model.pth")
    child = torch.load(out / "initial" / "lit_model.pth")
    assert torch.equal(child["transformer.h.2.mlp.fc_1.weight"], ref["transformer.h.5.mlp.fc_1.weight"])
    assert torch.equal(child["transformer.ln_f.weight"], ref["transformer.ln_f.weight"])


def test_resume_continues_without_inheriting_again(tmp_path, tiny_reference, text_dirs):
    data = small_text(tmp_path, text_dirs)
    out = tmp_path / "run"
    kwargs = dict(n_layers=2, out_dir=out, eval=QUIET_EVAL, precision="32-true", devices=1, logger_name="csv",
                  compile=False)
    setup(tiny_reference, data=data, train=train_args(max_tokens=4 * 64, save_interval=2), **kwargs)
    initial_mtime = (out / "initial" / "lit_model.pth").stat().st_mtime_ns

    # A finished run is not overwritten by accident ...
    with pytest.raises(SystemExit, match="holds a finished run"):
        setup(tiny_reference, data=data,
              train=train_args(max_tokens=8 * 64, save_interval=2), **kwargs)
    # ... but continues with --resume, from the last step checkpoint, to the larger budget.
    setup(tiny_reference, data=data, train=train_args(max_tokens=8 * 64, save_interval=2), resume=True, **kwargs)
    assert (out / "initial" / "lit_model.pth").stat().st_mtime_ns == initial_mtime
    assert json.loads((out / "final" / "final.json").read_text())["iter"] == 8
    assert (out / "step-00000008" / "lit_model.pth").is_file()


def test_random_init_arm_shares_nothing_with_reference(tmp_path, tiny_reference, text_dirs):
    data = small_text(tmp_path, text_dirs)
    out = tmp_path / "run"
    setup(tiny_reference, n_layers=2, parts=[], out_dir=out, data=data, train=train_args(max_tokens=64),
          eval=QUIET_EVAL, precision="32-true", devices=1, logger_name="csv", compile=False)
    ref = torch.load(tiny_reference / "lit_model.pth")
    child = torch.load(out / "initial" / "lit_model.pth")
    for key in ("transformer.wte.weight", "transformer.h.0.attn.qkv.weight", "transformer.h.1.mlp.fc_2.weight"):
        assert not torch.equal(child[key], ref[key])


def test_speed_options_train_the_same_model(tmp_path, tiny_reference, text_dirs):
    """The fused LM head + loss and activation checkpointing inside `litgpt inheritune` give the stock run's weights."""
    data = small_text(tmp_path, text_dirs)
    finals = {}
    for speed in ("none", "fused_ce,checkpoint"):
        out = tmp_path / speed.replace(",", "_")
        setup(tiny_reference, n_layers=2, out_dir=out, data=data, train=train_args(max_tokens=3 * 64),
              eval=QUIET_EVAL, precision="32-true", devices=1, logger_name="csv", compile=False, speed=speed)
        finals[speed] = torch.load(out / "final" / "lit_model.pth", weights_only=True)
        assert yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())["speed"] == speed
    for key, value in finals["none"].items():
        torch.testing.assert_close(finals["fused_ce,checkpoint"][key], value, atol=1e-5, rtol=1e-4)
    with pytest.raises(SystemExit, match="unknown speed option 'flash'"):
        setup(tiny_reference, n_layers=2, out_dir=tmp_path / "bad", data=data, train=train_args(max_tokens=64),
              speed="flash")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_bf16_training_runs_for_real_on_cpu(tmp_path, tiny_reference, text_dirs, precision):
    """The GPU's precisions run on this CPU too (nothing swapped for float32): bf16-true trains and saves bf16 weights,
    bf16-mixed keeps float32 master weights; both with the default fused head."""
    import csv
    import math

    data = small_text(tmp_path, text_dirs, n_train=1)
    out = tmp_path / precision
    setup(tiny_reference, n_layers=2, out_dir=out, data=data, train=train_args(max_tokens=3 * 64), eval=QUIET_EVAL,
          precision=precision, devices=1, logger_name="csv", compile=False)
    state = torch.load(out / "final" / "lit_model.pth", weights_only=True)
    initial = torch.load(out / "initial" / "lit_model.pth")
    expected = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {expected}
    key = "transformer.h.1.mlp.fc_2.weight"
    assert not torch.equal(state[key].float(), initial[key].float())  # trained (lr 1e-3 moves bf16 weights too)
    (metrics,) = out.glob("logs/**/metrics.csv")
    losses = [float(row["loss"]) for row in csv.DictReader(metrics.open()) if row.get("loss")]
    # finite, and falling: the random tiny reference starts near 31 (its tied N(0, 1) embedding makes large logits)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())["precision"] == precision


def test_a_tied_reference_gives_embedding_and_head_together_or_an_untied_child(tmp_path, tiny_reference, text_dirs):
    """tiny_reference ties its head to its embedding, as SmolLM2 does. Inheriting one of them into a tied child is
    refused before any work (the tie used to hand the head the inherited embedding, or drop the inherited head);
    untied, the child gets exactly the part asked for."""
    data = small_text(tmp_path, text_dirs, n_train=1)
    reference = torch.load(tiny_reference / "lit_model.pth")
    blocks = ["attention", "mlp", "norms", "final_norm"]
    for given in ("embedding", "head"):
        out = tmp_path / f"tied-{given}"
        with pytest.raises(SystemExit, match=f"cannot inherit the {given} without the"):
            setup(tiny_reference, n_layers=2, parts=[*blocks, given], out_dir=out, data=data,
                  train=train_args(max_tokens=64), eval=QUIET_EVAL, precision="32-true", devices=1, compile=False)
        assert not out.exists()
        out = tmp_path / f"untied-{given}"
        setup(tiny_reference, n_layers=2, parts=[*blocks, given], out_dir=out, data=data,
              train=train_args(max_tokens=64, tie_embeddings=False), eval=QUIET_EVAL, precision="32-true", devices=1,
              logger_name="csv", compile=False)
        initial = torch.load(out / "initial" / "lit_model.pth")
        inherited, fresh = ("transformer.wte.weight", "lm_head.weight")[:: 1 if given == "embedding" else -1]
        assert torch.equal(initial[inherited], reference[inherited])
        assert not torch.equal(initial[fresh], reference[fresh])
        final = torch.load(out / "final" / "lit_model.pth", weights_only=True)
        assert not torch.equal(final["lm_head.weight"], final["transformer.wte.weight"])  # trained untied

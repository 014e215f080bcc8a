"""Several processes, for real: the `litgpt` CLI in a subprocess with `--devices 2 --strategy ddp` on CPU (gloo),
started by Lightning's own subprocess launcher or by torchrun, on a 2-block child of the tiny reference.

The train text holds exactly 8 samples and a step's global batch is 8, so every step sees the whole set whatever
the number of processes: one process and two must then train the same weights (sharding without overlap,
accumulation, gradient averaging), and a killed run resumed must end where an uninterrupted one ends.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_data_mixture import write_stream

REPO = Path(__file__).resolve().parents[1]
STEPS = 16
COMMON = [
    "--n_layers", "2", "--data", "TextFiles", "--data.num_workers", "0",
    "--train.epochs", "null", "--train.max_tokens", str(STEPS * 8 * 32), "--train.global_batch_size", "8",
    "--train.micro_batch_size", "4", "--train.max_seq_length", "32", "--train.save_interval", "4",
    # a constant learning rate: LitGPT's schedule counts micro-batches, which differ between 1 and 2 processes
    "--train.lr_warmup_steps", "0", "--train.min_lr", "0.0003",
    "--eval.interval", "1000", "--eval.max_iters", "2", "--eval.initial_validation", "false",
    "--eval.final_validation", "false", "--precision", "32-true", "--compile", "false", "--logger_name", "csv",
]


def environment(tmp_path: Path) -> dict:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),  # the tree under test
        "DATA_OPTIMIZER_CACHE_FOLDER": str(scratch / "chunks"),  # litdata's staging, private to this test
        "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(scratch / "data"),
        "TMPDIR": str(scratch),  # fabric.save's temp file on the run's filesystem: its move is a rename
        "INHERITUNE_RANK_TIMEOUT": "300",
    }


def litgpt(args: list, env: dict, cwd: Path, launcher: list | None = None) -> str:
    command = (launcher or [shutil.which("litgpt")]) + [str(a) for a in args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def torchrun() -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            shutil.which("litgpt")]


def weights(run_dir: Path, name: str = "final") -> dict:
    """A finished checkpoint as ``{"model", "iter_num", "step_count"}``: final/ and best/ hold the weights alone
    (LitGPT's format, which merge_lora reads), their step and iter in final.json / best.json beside them."""
    model = torch.load(run_dir / name / "lit_model.pth", weights_only=True)
    assert "model" not in model and "optimizer" not in model
    record = json.loads((run_dir / name / f"{name}.json").read_text())
    return {"model": model, "iter_num": record["iter"], "step_count": record["step"]}


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol)


@pytest.fixture
def eight_samples(tmp_path, tiny_reference, text_dirs) -> tuple[Path, Path]:
    """A train dir whose one text tokenizes to exactly 8 samples of 33 tokens (TextFiles' item), and a val dir."""
    from litgpt import Tokenizer

    tokenizer = Tokenizer(tiny_reference)
    words = sorted(text_dirs[0].glob("*.txt"))[0].read_text().split()
    for n in range(1, len(words)):
        if len(tokenizer.encode(" ".join(words[:n]), bos=True)) >= 8 * 33:
            break
    text = " ".join(words[:n])
    assert 8 * 33 <= len(tokenizer.encode(text, bos=True)) < 9 * 33
    train, val = tmp_path / "train", tmp_path / "val"
    train.mkdir(), val.mkdir()
    (train / "one.txt").write_text(text)
    for path in sorted(text_dirs[1].glob("*.txt")):
        (val / path.name).write_text(path.read_text())
    return train, val


def test_two_processes_train_as_one_resume_after_kill_and_overwrite(tmp_path, tiny_reference, eight_samples):
    """ddp on two processes trains what one process trains; fsdp2 what ddp trains; a killed fsdp2 run resumed ends
    where the uninterrupted one ended."""
    env = environment(tmp_path)
    data = ["--data.train_data_path", eight_samples[0], "--data.val_data_path", eight_samples[1]]
    args = ["inheritune", tiny_reference, *COMMON, *data]
    run = tmp_path / "run"

    # A fresh run: rank 1 is a re-execution of the whole command after rank 0 wrote out_dir/initial; it joins.
    output = litgpt(args + ["--devices", 2, "--strategy", "ddp", "--out_dir", run], env, tmp_path)
    assert "MEMBER: 2/2" in output and "interrupted run" not in output
    two = weights(run)
    assert two["iter_num"] == STEPS and two["step_count"] == STEPS

    # One process with the same global batch (two micro-batches accumulated) trains the same weights.
    litgpt(args + ["--devices", 1, "--out_dir", tmp_path / "one"], env, tmp_path)
    one = weights(tmp_path / "one")
    assert_same_weights(one["model"], two["model"], atol=1e-5)
    moved = max((two["model"][k] - v).abs().max() for k, v in torch.load(run / "initial" / "lit_model.pth").items())
    assert moved > 100 * 1e-5  # the comparison is far finer than what training changed

    # fsdp2 (the child sharded over the two processes) trains what ddp trains, to float tolerance: 1e-5 of each
    # tensor's largest value (measured 3e-6 on a 2-block SmolLM2 child; sharded reductions sum in another order).
    ddp_run, run = run, tmp_path / "sharded"
    output = litgpt(args + ["--devices", 2, "--strategy", "fsdp2", "--speed", "checkpoint", "--out_dir", run], env,
                    tmp_path)  # activation checkpointing per block inside the sharded blocks
    sharded = weights(run)
    assert sharded["iter_num"] == STEPS
    for key, value in two["model"].items():
        assert (sharded["model"][key] - value).abs().max() <= 1e-5 * value.abs().max(), key
    assert not any(hasattr(v, "to_local") for v in sharded["model"].values())  # whole tensors, LitGPT's format
    two = sharded

    # --overwrite true on the finished fsdp2 run, killed (the whole process group, kill -9) in the middle.
    initial_before = (run / "initial" / "lit_model.pth").stat().st_mtime_ns
    process = subprocess.Popen([shutil.which("litgpt"), *map(str, args), "--devices", "2", "--strategy", "fsdp2",
                                "--out_dir", str(run), "--overwrite", "true"], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not ((run / "step-00000004" / "lit_model.pth").is_file() and not (run / "final").exists()):
        assert process.poll() is None and time.monotonic() < deadline, "the overwriting run ended before the kill"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.5)  # let the killed ranks' files settle
    assert not (run / "final").exists(), "killed too late: the run had finished"
    assert (run / "initial" / "lit_model.pth").stat().st_mtime_ns != initial_before  # rebuilt by --overwrite
    initial_after = (run / "initial" / "lit_model.pth").stat().st_mtime_ns

    # --resume true, this time launched by torchrun (every rank starts at once): the sharded model and optimizer are
    # read back from LitGPT's single-file checkpoint, and the run ends with the uninterrupted weights.
    output = litgpt(args + ["--devices", 2, "--strategy", "fsdp2", "--out_dir", run, "--resume", "true"], env,
                    tmp_path, launcher=torchrun())
    assert "interrupted run" not in output
    resumed = weights(run)
    assert resumed["iter_num"] == STEPS
    assert_same_weights(resumed["model"], two["model"], atol=1e-6)
    assert (run / "initial" / "lit_model.pth").stat().st_mtime_ns == initial_after  # nothing inherited again
    for directory in (ddp_run, run):  # no staging or claim debris
        assert not list(directory.parent.glob(f".{directory.name}.*")) and not list(directory.glob("**/.*.tmp*"))
    assert [p.name for p in eight_samples[0].iterdir()] == ["one.txt"]  # the user's text folder was only read


def test_domain_weights_are_one_mixture_on_every_rank(tmp_path, tiny_reference, smollm2_tokenizer):
    """Dynamic batch loading under two processes: the reference's losses measured as the child's are (each rank its
    own windows, reduced, in the run's precision), per-domain losses reduced over ranks, and after every evaluation
    both ranks draw with the same weights."""
    from litgpt import Tokenizer
    from pydoc_data.topics import topics

    tokenizer = Tokenizer(smollm2_tokenizer)
    names = sorted(topics)
    root = tmp_path / "mixture"
    for domain, texts in (("early", [topics[n] for n in names[:24]]), ("late", [topics[n] for n in names[-24:]])):
        docs = [tokenizer.encode(t, bos=False, eos=True).to(torch.int32) for t in texts]
        write_stream(root / "train" / domain, docs[4:])
        write_stream(root / "val" / domain, docs[:4])
    env = environment(tmp_path)
    out = tmp_path / "run"
    # the whole reference as the child: at step 0 it must measure exactly the reference's losses
    args = ["inheritune", tiny_reference, "--n_layers", "6", "--data", "litgpt_inheritune.data.mixture.DomainMixture",
            "--data.data_path", root, "--data.dynamic", "true", "--data.num_workers", "0",
            "--train.epochs", "null", "--train.max_tokens", 8 * 4 * 32, "--train.global_batch_size", "4",
            "--train.micro_batch_size", "2", "--train.max_seq_length", "32", "--train.save_interval", "1000",
            "--train.lr_warmup_steps", "1", "--eval.interval", "2", "--eval.max_iters", "2",
            "--eval.initial_validation", "true", "--precision", "bf16-mixed", "--compile", "false",
            "--logger_name", "csv", "--devices", "2", "--strategy", "fsdp2", "--out_dir", out]
    output = litgpt(args, env, tmp_path)
    assert output.count("Reference losses per domain") == 1  # printed once
    rows = [json.loads(line) for line in (out / "domain_weights.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [0, 2, 4, 6, 8, 8]  # one writer: every evaluation once
    import yaml

    references = yaml.safe_load((out / "final" / "hyperparameters.yaml").read_text())["data"]["init_args"]
    # same windows, same precision, same weights: the same numbers (a whole-set, float32, rank-0 measurement was off)
    assert rows[0]["losses"] == pytest.approx(references["reference_losses"], rel=1e-6)
    for row in rows:
        assert len(row["weights_by_rank"]) == 2
        assert row["weights_by_rank"][0] == row["weights_by_rank"][1] == [row["weights"][d] for d in row["weights"]]
    assert len({tuple(r["weights"].values()) for r in rows}) > 1  # the weights did move


def test_grow_and_arms_write_one_set_of_outputs(tmp_path, tiny_reference, eight_samples):
    env = environment(tmp_path)
    data = ["--data", "TextFiles", "--data.train_data_path", eight_samples[0], "--data.val_data_path",
            eight_samples[1], "--data.num_workers", "0"]
    shared = ["--train.global_batch_size", "8", "--train.micro_batch_size", "4", "--train.max_seq_length", "32",
              "--train.lr_warmup_steps", "1", "--train.save_interval", "2", "--eval.interval", "2",
              "--eval.max_iters", "2", "--eval.initial_validation", "false", "--precision", "32-true",
              "--compile", "false", "--devices", "2", "--strategy", "fsdp2"]

    # A growth run over an earlier one, with --overwrite: rank 0 alone removes it, before the first round.
    grow = tmp_path / "grow"
    grow.mkdir()
    (grow / "grow.json").write_text(json.dumps({"steps": 99}))
    (grow / "earlier.txt").write_text("an earlier growth run")
    output = litgpt(["inheritune_grow", tiny_reference, *data, *shared, "--steps", "3", "--n_layers_start", "4",
                     "--grow_by", "2", "--tolerance", "-100", "--overwrite", "true", "--out_dir", grow], env, tmp_path)
    # printed once, by rank 0: the table after each of the two rounds, the verdict at the end
    assert output.count("| 1 | 4 |") == 2 and output.count("-block child does not match the target") == 1
    assert not (grow / "earlier.txt").exists()
    rows = json.loads((grow / "rounds.json").read_text())
    assert [r["n_layers"] for r in rows] == [4, 6]
    for r in rows:
        assert weights(grow / f"n{r['n_layers']:03d}")["iter_num"] == 3
    assert (grow / "rounds.md").read_text().count("| 1 | 4 |") == 1
    assert json.loads((grow / "reference_loss.json").read_text())["val_loss"] == rows[0]["target_loss"]

    arms = tmp_path / "arms"
    output = litgpt(["inheritune_arms", tiny_reference, "--n_layers", "2", "--arms", "[inherit, kd]", *data,
                     *shared, "--train.epochs", "3", "--out_dir", arms], env, tmp_path)
    assert output.count("| inherit |") == 1 and output.count("Arm kd, seed") == 1  # printed by rank 0 only
    table = json.loads((arms / "arms.json").read_text())
    assert sorted(r["arm"] for r in table) == ["inherit", "kd"]
    assert (arms / "curves.png").stat().st_size > 0 and (arms / "arms.md").read_text().count("| inherit |") == 1
    for arm in ("inherit", "kd"):
        assert weights(arms / arm)["iter_num"] == 3
        # best/ of a sharded run: gathered whole, and the row's best loss is read from it
        assert set(weights(arms / arm, "best")["model"]) == set(weights(arms / arm)["model"])
        assert json.loads((arms / arm / "best" / "best.json").read_text())["step"] in (2, 3)
    assert all(run["best_from"] == "best/best.json" for r in table for run in r["runs"])
    # the distilled student (teacher whole on each rank, student sharded) trained otherwise than plain inheritance
    assert any(not torch.equal(v, weights(arms / "kd")["model"][k]) for k, v in weights(arms / "inherit")["model"].items())
    for directory in (grow, arms):
        assert not [p for p in directory.rglob("*") if ".tmp" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_prune_ranks_hold_one_model_and_the_extracted_child_is_rank_zeros(strategy, tmp_path, tiny_reference,
                                                                          eight_samples):
    """Two processes prune one model: under ddp both hold it whole (their digests agree); under fsdp2 each holds a
    shard (masks and multipliers included), clipping, the clamp and the Lagrangian run on shards, and the saved state
    is the whole model. Either way the extracted child is exactly what rank 0's saved state gives."""
    from litgpt import GPT, Config

    from litgpt_inheritune.pruning.masks import PrunableGPT, PruningMasks, extraction
    from litgpt_inheritune.pruning.training import state_digest
    from litgpt_inheritune.pruning.shapes import prune_state_dict

    env = environment(tmp_path)
    out = tmp_path / "prune"
    target = {"n_layer": 4, "n_embd": 24, "n_head": 2, "n_query_groups": 1, "intermediate_size": 40}
    output = litgpt(["inheritune_prune", tiny_reference, "--target", json.dumps(target), "--data", "TextFiles",
            "--data.train_data_path", eight_samples[0], "--data.val_data_path", eight_samples[1],
            "--data.num_workers", "0", "--steps", "4", "--lagrangian_warmup_steps", "2", "--train.global_batch_size",
            "8", "--train.micro_batch_size", "4", "--train.max_seq_length", "32", "--train.lr_warmup_steps", "1",
            "--train.save_interval", "2", "--eval.interval", "2", "--eval.max_iters", "2", "--lr", "0.001",
            "--mask_lr", "0.5", "--lambda_lr", "0.5", "--precision", "32-true", "--devices", "2",
            "--strategy", strategy, "--out_dir", out], env, tmp_path)
    assert output.count("Wrote the pruned child") == 1  # printed by rank 0 only
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] + ([4] if strategy == "ddp" else [])  # one writer
    saved = torch.load(out / "prune_state.pth", weights_only=False)["model"]
    if strategy == "ddp":
        digests = metrics[-1]["rank_digests"]
        assert len(digests) == 2 and digests[0] == digests[1] == state_digest(saved)
    else:  # one model in shards: the saved state is whole
        assert "rank_digests" not in metrics[-1]
        assert all(not hasattr(v, "to_local") for v in saved.values())

    config = Config.from_file(tiny_reference / "model_config.yaml")
    masks = PruningMasks(config, target)
    masks.load_state_dict({k[len("masks."):]: v for k, v in saved.items() if k.startswith("masks.")})
    keep, scales = extraction(masks, config)
    _, expected = prune_state_dict(config, {k[len("gpt."):]: v for k, v in saved.items() if k.startswith("gpt.")},
                                   keep, scales)
    assert_same_weights(torch.load(out / "final" / "lit_model.pth"), expected, atol=0)
    masked = PrunableGPT(GPT(config), target)
    masked.load_state_dict(saved)
    assert (masked.masks.gates["hidden"].log_alpha - 5.0).abs().max() > 0.1  # the masks did train (init ~N(5, 0.01))


SHARDS_SCRIPT = """
import json, sys
import torch
from litgpt import GPT, Config
from litgpt_inheritune import rundir

fabric = rundir.launch(2, 1, "fsdp2", "32-true")  # the strategy every training command builds for --strategy fsdp2
config = Config.from_file(sys.argv[1])
with fabric.init_module(empty_init=True):
    model = GPT(config)
model = fabric.setup(model)
optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-3))
x = torch.randint(0, config.vocab_size, (2, 16))
fabric.backward(model(x).float().logsumexp(-1).mean())
optimizer.step()
params = {n: [p.numel(), p.to_local().numel()] for n, p in model.named_parameters()}
state = {n: optimizer.state[p]["exp_avg"].to_local().numel() for n, p in model.named_parameters()}
print("SHARDS " + json.dumps({"rank": fabric.global_rank, "params": params, "exp_avg": state}), flush=True)
"""


def test_fsdp2_ranks_hold_half_of_every_parameter_and_of_the_optimizer_state(tmp_path, tiny_reference):
    script = tmp_path / "shards.py"
    script.write_text(SHARDS_SCRIPT)
    output = litgpt([script, tiny_reference / "model_config.yaml"], environment(tmp_path), tmp_path,
                    launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"])
    reports = sorted((json.loads(line[len("SHARDS "):]) for line in output.splitlines() if line.startswith("SHARDS ")),
                     key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1]
    total = sum(full for full, _ in reports[0]["params"].values())
    for name, (full, _) in reports[0]["params"].items():
        locals_ = [r["params"][name][1] for r in reports]
        assert sum(locals_) == full and max(locals_) <= -(-full // 2), name  # split along dim 0, none duplicated
        assert [r["exp_avg"][name] for r in reports] == locals_, name  # AdamW's state is sharded alike
    for report in reports:
        held = sum(local for _, local in report["params"].values())
        assert 0.45 * total <= held <= 0.55 * total

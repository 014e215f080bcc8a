"""The run-directory rules at unit level: ranks and launch ids from simulated launcher environments (Lightning's
subprocess launcher, torchrun, SLURM), the record hand-over between ranks, refuse / resume / overwrite, strategies."""

import json
import os
import threading
import time
from unittest import mock

import pytest

from litgpt_inheritune import rundir, strategy
from litgpt_inheritune.errors import InherituneError


@pytest.mark.parametrize("env, rank", [
    ({}, 0),
    ({"LOCAL_RANK": "1"}, 1),  # Lightning's launcher, a re-executed rank
    ({"LOCAL_RANK": "0", "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, 4),  # first process of the second node
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),  # node > 0 is never rank 0, even without the node size
    ({"LOCAL_RANK": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "1"}, 0),  # SLURM allocation, Lightning's processes
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "77"}, 3),  # srun started every rank
    ({"RANK": "2", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "none"}, 2),  # torchrun, second node
    ({"JSM_NAMESPACE_RANK": "5"}, 5),  # LSF
])
def test_global_rank_from_the_launchers_environment(env, rank):
    assert rundir.global_rank(env) == rank
    assert rundir.is_rank_zero(env) == (rank == 0)


def test_launch_ids_agree_within_a_launch_and_differ_between_launches():
    # srun: every task of one job step computes the same id, without talking to each other.
    slurm = [{"SLURM_PROCID": str(r), "SLURM_NTASKS": "2", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"} for r in (0, 1)]
    ids = {rundir.launch_id(env) for env in slurm}
    assert len(ids) == 1 and ids.pop().startswith("slurm-77.0")
    assert rundir.launch_id({**slurm[0], "SLURM_STEP_ID": "1"}) != rundir.launch_id(dict(slurm[0]))
    # torchrun with its default run id: the agent (every worker's parent), address, port and restart count.
    torchrun = [{"RANK": str(r), "LOCAL_RANK": str(r), "TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29500", "TORCHELASTIC_RESTART_COUNT": "0"} for r in (0, 1)]
    assert rundir.launch_id(dict(torchrun[0])) == rundir.launch_id(dict(torchrun[1]))
    assert rundir.launch_id({**torchrun[0], "TORCHELASTIC_RESTART_COUNT": "1"}) != rundir.launch_id(dict(torchrun[0]))
    # Lightning's launcher: rank 0 makes a fresh id and leaves it in the environment its ranks are started with.
    first, second = {}, {}
    a, b = rundir.launch_id(first), rundir.launch_id(second)
    assert a != b and first[rundir.LAUNCH_ENV] == a
    assert rundir.launch_id({"LOCAL_RANK": "1", rundir.LAUNCH_ENV: a}) == a
    # a rank nobody can place in a launch is refused in one line
    with pytest.raises(InherituneError, match=rundir.LAUNCH_ENV):
        rundir.launch_id({"RANK": "1"})


def test_other_ranks_wait_for_rank_zeros_record_of_this_launch(tmp_path):
    computed = []

    def compute():
        computed.append(1)
        return {"answer": 42}

    launch = rundir.launch_id()
    # A record of an earlier launch is never taken; rank 0's record of this one is, and compute runs on rank 0 only.
    rundir._write_record(tmp_path / rundir.RECORDS / "step.json", {"launch": "earlier", "value": {"answer": 0}})
    got = {}
    with mock.patch.dict(os.environ, {"LOCAL_RANK": "1", "INHERITUNE_RANK_TIMEOUT": "30"}):
        waiter = threading.Thread(target=lambda: got.update(v=rundir.rank_zero_value(tmp_path, "step", compute)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not computed
    assert rundir.rank_zero_value(tmp_path, "step", compute) == {"answer": 42}  # rank 0 (no rank variables)
    waiter.join(10)
    assert got["v"] == {"answer": 42} and computed == [1]
    assert json.loads((tmp_path / rundir.RECORDS / "step.json").read_text())["launch"] == launch

    # A rank that waits too long says so in one line, naming what it waited for.
    with mock.patch.dict(os.environ, {"LOCAL_RANK": "1", "INHERITUNE_RANK_TIMEOUT": "0.3"}):
        with pytest.raises(InherituneError, match="waited 0 s for rank 0 to finish the budget"):
            rundir.rank_zero_value(tmp_path, "other", compute, what="the budget")


def test_rank_zeros_error_reaches_ranks_started_together(tmp_path):
    def refuse():
        raise InherituneError("out_dir holds a finished run")

    srun = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0"}
    with mock.patch.dict(os.environ, srun), mock.patch.object(rundir, "_launch", None):
        with pytest.raises(InherituneError, match="finished run"):
            rundir.rank_zero_value(tmp_path, "start", refuse)
    with mock.patch.dict(os.environ, {**srun, "SLURM_PROCID": "1"}), mock.patch.object(rundir, "_launch", None):
        with pytest.raises(InherituneError, match="rank 0 stopped: out_dir holds a finished run"):
            rundir.rank_zero_value(tmp_path, "start", refuse)
    # Lightning's launcher starts the other ranks only later: a refusal leaves nothing behind
    with mock.patch.object(rundir, "_launch", None), pytest.raises(InherituneError):
        rundir.rank_zero_value(tmp_path / "fresh", "start", refuse)
    assert not (tmp_path / "fresh").exists()


def test_refuse_resume_overwrite_mean_the_same_everywhere(tmp_path):
    out = tmp_path / "run"
    assert rundir.decide(out, False, False, False, False) == "fresh"
    assert rundir.decide(out, False, False, "auto", False) == "fresh"
    assert rundir.decide(out, True, False, "auto", False) == "resume"
    assert rundir.decide(out, True, False, True, False) == "resume"
    with pytest.raises(InherituneError, match="holds an interrupted run; pass --resume true .* --overwrite true"):
        rundir.decide(out, True, False, False, False)
    with pytest.raises(InherituneError, match="holds a finished growth run"):
        rundir.decide(out, True, True, False, False, what="growth run")
    with pytest.raises(InherituneError, match="holds no run to resume"):
        rundir.decide(out, False, False, True, False)
    with pytest.raises(InherituneError, match="contradict"):
        rundir.decide(out, True, False, True, True)
    assert rundir.decide(out, True, True, False, True) == "fresh"  # nothing there to delete
    out.mkdir()
    (out / "old").write_text("x")
    assert rundir.decide(out, True, True, "auto", True) == "overwrite"
    rundir.remove_run(out)
    assert not out.exists() and not list(tmp_path.iterdir())
    out.write_text("a user's file")
    for overwrite in (False, True):
        with pytest.raises(InherituneError, match="is a file"):
            rundir.decide(out, False, False, False, overwrite)
    assert out.read_text() == "a user's file"


def test_strategy_choice_before_any_work():
    with mock.patch.object(strategy, "_cuda", return_value=False):
        assert strategy.resolve("auto", 2, 1) == "ddp"  # Lightning runs FSDP on GPUs only
        assert strategy.resolve("auto", 1, 1) == "single"
        assert strategy.resolve("ddp", 1, 2) == "ddp"
        with pytest.raises(InherituneError, match="--strategy fsdp needs GPUs"):
            strategy.resolve("fsdp", 2, 1)
    with mock.patch.object(strategy, "_cuda", return_value=True), mock.patch("torch.cuda.device_count", return_value=8):
        assert strategy.resolve("auto", 2, 1) == "fsdp"  # LitGPT's own choice
        assert strategy.resolve("auto", "auto", 1) == "fsdp"
        assert strategy.resolve("ddp", 8, 1) == "ddp"
    with pytest.raises(InherituneError, match="auto, ddp or fsdp"):
        strategy.resolve("deepspeed", 2, 1)


def test_the_ddp_stand_in_keeps_litgpts_non_fsdp_init_path():
    import litgpt.pretrain as pretrain
    from lightning.fabric.strategies import DDPStrategy, FSDPStrategy

    with strategy.use_strategy(pretrain, "ddp"):
        built = pretrain.FSDPStrategy(auto_wrap_policy=set(), state_dict_type="full", sharding_strategy="HYBRID_SHARD")
        assert isinstance(built, DDPStrategy)
        assert not isinstance(built, pretrain.FSDPStrategy)  # LitGPT then resets parameters itself, as for one device
    assert pretrain.FSDPStrategy is FSDPStrategy
    with strategy.use_strategy(pretrain, "fsdp"):
        assert pretrain.FSDPStrategy is FSDPStrategy


def test_one_process_commands_do_nothing_on_other_ranks(tmp_path, tiny_reference, capsys):
    from litgpt_inheritune.commands import analyze, init

    with mock.patch.dict(os.environ, {"LOCAL_RANK": "1"}):
        init.setup(tiny_reference, n_layers=2, out_dir=tmp_path / "child")
        analyze.setup(tiny_reference, data=tmp_path / "nothing", out_dir=tmp_path / "analysis")
    assert not list(tmp_path.iterdir())
    assert "global rank 0 writes its output" in capsys.readouterr().out
    init.setup(tiny_reference, n_layers=2, out_dir=tmp_path / "child")  # rank 0 does the work
    assert (tmp_path / "child" / "lit_model.pth").is_file()

"""The run-directory rules at unit level: ranks and worlds from simulated launcher environments (Lightning's
subprocess launcher, torchrun, SLURM), one live run per out_dir, refuse / resume / overwrite, strategies. The same
rules with real processes: tests/test_multiprocess.py."""

import os
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


@pytest.mark.parametrize("env, world", [
    ({}, None),  # a plain process, or Lightning's own launcher (it starts the others itself)
    ({"TORCHELASTIC_RUN_ID": "none", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
      "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, ("torchrun", 2)),
    ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
      "SLURM_NODEID": "0", "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "127.0.0.1", "SLURM_JOB_ID": "7"}, ("SLURM", 4)),
    ({"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "bash"}, None),  # an interactive allocation: Lightning launches
])
def test_the_launchers_world_is_read_as_fabric_reads_it(env, world):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC", "LSB_", "JSM_"))}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        assert rundir.launcher_world() == world


def test_a_world_that_differs_from_the_request_is_one_line():
    torchrun = {"TORCHELASTIC_RUN_ID": "none", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with mock.patch.dict(os.environ, torchrun):
        assert rundir.check_world(2, 1) == 2
        # torchrun --nproc_per_node 2 without --devices 2 would train two independent runs into one out_dir
        with pytest.raises(InherituneError, match=r"torchrun started 2 processes but --devices 1 x --num_nodes 1 "
                                                  r"asks for 1; pass --devices 2 --num_nodes 1"):
            rundir.check_world(1, 1)
        with pytest.raises(InherituneError, match="asks for 4"):
            rundir.check_world(2, 2)
    with pytest.raises(InherituneError, match="--num_nodes must be a positive"):
        rundir.check_world(1, 0)
    assert rundir.check_world(1, 1) == 1  # no launcher: the request is the world


def test_agree_on_one_process_is_the_computation_itself():
    class One:
        world_size, global_rank = 1, 0

    assert rundir.agree(One(), lambda: {"answer": 42}, "testing") == {"answer": 42}
    with pytest.raises(InherituneError, match="^refused$"):
        rundir.agree(One(), lambda: (_ for _ in ()).throw(InherituneError("refused")), "testing")


def test_peer_failures_become_one_line():
    class Rank:
        world_size, global_rank = 2, 1

    lost = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1")
    assert rundir.peer_failure(lost) and not rundir.peer_failure(RuntimeError("shape mismatch"))
    assert not rundir.peer_failure(RuntimeError("ProcessGroupGloo does not support reduce_scatter of int8"))
    assert str(rundir.peers_lost(Rank(), lost)) == "rank 1 lost its peers (another rank ended or was killed; see its output)"
    timeout = RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 5000ms")
    message = str(rundir.peers_lost(Rank(), timeout, waiting_for="preparing the run"))
    assert "rank 1 waited" in message and "preparing the run" in message and rundir.TIMEOUT_ENV in message
    with pytest.raises(InherituneError, match="lost its peers"):
        with rundir.one_line_peer_errors(Rank()):
            raise lost
    with pytest.raises(RuntimeError, match="shape mismatch"):  # a bug stays a traceback
        with rundir.one_line_peer_errors(Rank()):
            raise RuntimeError("shape mismatch")


def test_one_live_run_per_out_dir(tmp_path):
    """The claim is a kernel lock: a second claim of a live run dir is refused in one line naming the holder, even in
    the same process; a process killed with kill -9 leaves its file but not its lock, and the next run takes over."""
    import subprocess
    import sys

    out = tmp_path / "run"
    with rundir.Claim(out).take():
        with pytest.raises(InherituneError, match=r"'.*run' is in use by a live run \(pid \d+ on .*\); two runs cannot"):
            rundir.Claim(out).take()
        assert rundir.claim_path(out).is_file() and not out.exists()  # beside out_dir, which it does not create
    assert not rundir.claim_path(out).exists()  # released and removed
    rundir.Claim(out).take().release()

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from litgpt_inheritune import rundir; "
         "rundir.Claim(sys.argv[1]).take(); print('held', flush=True); time.sleep(600)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InherituneError, match=f"pid {holder.pid} on"):
            rundir.Claim(out).take()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs
        holder.wait()
    assert rundir.claim_path(out).is_file()  # left behind, unlocked
    claim = rundir.Claim(out).take()  # taken over
    assert str(os.getpid()) in rundir.claim_path(out).read_text()
    claim.release()


def test_a_resume_needs_the_world_that_trained_the_run(tmp_path):
    step = tmp_path / "step-00000004"
    step.mkdir()
    (step / "hyperparameters.yaml").write_text("devices: 2\nnum_nodes: 1\n")
    rundir.check_same_world(step, 2)
    with pytest.raises(InherituneError, match="trained by 2 processes and this launch has 1; resume with "
                                              "--devices x --num_nodes = 2"):
        rundir.check_same_world(step, 1)
    (step / "hyperparameters.yaml").write_text("devices: auto\nnum_nodes: 1\n")  # an older run: not recorded
    rundir.check_same_world(step, 1)


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
        assert strategy.resolve("auto", 2, 1) == "ddp"  # Lightning runs FSDP1 on GPUs only
        assert strategy.resolve("auto", 1, 1) == "single"
        assert strategy.resolve("ddp", 1, 2) == "ddp"
        assert strategy.resolve("fsdp2", 2, 1) == "fsdp2"  # torch's fully_shard runs on CPU (gloo)
        assert strategy.resolve("fsdp2", 1, 1) == "fsdp2"  # asked for by name: sharded over one process
        with pytest.raises(InherituneError, match="--strategy fsdp needs GPUs"):
            strategy.resolve("fsdp", 2, 1)
    with mock.patch.object(strategy, "_cuda", return_value=True), mock.patch("torch.cuda.device_count", return_value=8):
        assert strategy.resolve("auto", 2, 1) == "fsdp2"  # the sharded path that is tested on CPU
        assert strategy.resolve("auto", "auto", 1) == "fsdp2"
        assert strategy.resolve("fsdp", 8, 1) == "fsdp"  # LitGPT's own FSDP1, for parity
        assert strategy.resolve("ddp", 8, 1) == "ddp"
        assert strategy.resolve("auto", 1, 1) == "single"
    from lightning.fabric.strategies import DDPStrategy, ModelParallelStrategy

    built = strategy.fabric_strategy("fsdp2", 60, 4)
    assert isinstance(built, ModelParallelStrategy) and built._save_distributed_checkpoint is False
    assert isinstance(strategy.fabric_strategy("ddp", 60, 4), DDPStrategy)
    assert strategy.fabric_strategy("single", 60) == "auto"
    with pytest.raises(InherituneError, match="auto, ddp, fsdp or fsdp2"):
        strategy.resolve("deepspeed", 2, 1)


def test_one_process_commands_do_nothing_on_other_ranks(tmp_path, tiny_reference, capsys):
    from litgpt_inheritune.commands import analyze, init

    with mock.patch.dict(os.environ, {"LOCAL_RANK": "1"}):
        init.setup(tiny_reference, n_layers=2, out_dir=tmp_path / "child")
        analyze.setup(tiny_reference, data=tmp_path / "nothing", out_dir=tmp_path / "analysis")
    assert not list(tmp_path.iterdir())
    assert "global rank 0 writes its output" in capsys.readouterr().out
    init.setup(tiny_reference, n_layers=2, out_dir=tmp_path / "child")  # rank 0 does the work
    assert (tmp_path / "child" / "lit_model.pth").is_file()

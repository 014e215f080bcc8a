"""Several nodes, simulated on this machine with real processes (gloo on CPU): two "nodes" of one process each,
started the three ways a cluster starts them, on a 2-block child of the tiny reference and 8 samples a step (as in
tests/test_multiprocess.py, so every run of the same world ends with the same weights).

- Lightning's own launcher: the same command on each node with NODE_RANK 0|1, MASTER_ADDR 127.0.0.1 (README's
  "Several devices").
- torchrun --nnodes 2 --node_rank 0|1 with its default static rendezvous.
- srun: the environment SLURM gives each task (SLURM_PROCID, SLURM_NODEID, ...), then a requeue of the same job
  (SLURM_RESTART_COUNT 1).

Each node has a ~/.cache of its own (XDG_CACHE_HOME), as on a cluster without a shared home: the text is prepared
once, beside the run directory, and read by both.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from test_multiprocess import COMMON, STEPS, assert_same_weights, eight_samples, environment, weights  # noqa: F401

LITGPT = shutil.which("litgpt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_env(base: dict, tmp_path: Path, node: int, port: int, extra: dict | None = None) -> dict:
    env = {k: v for k, v in base.items()
           if k != "INHERITUNE_CACHE" and not k.startswith(("SLURM_", "TORCHELASTIC", "LOCAL_RANK", "NODE_RANK"))}
    env.update({"XDG_CACHE_HOME": str(tmp_path / f"home{node}" / ".cache"), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port)})
    env.update(extra or {})
    return env


def start(command: list, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(c) for c in command], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(processes: list, expect: int = 0) -> list[str]:
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=600)
        outputs.append(out)
    for process, out in zip(processes, outputs):
        assert process.returncode == expect, out[-4000:]
    return outputs


def kill_at_step_4(processes: list, run: Path) -> None:
    """kill -9 of every node's processes once step 4 is saved and before the end."""
    deadline = time.monotonic() + 600
    while not ((run / "step-00000004" / "lit_model.pth").is_file() and not (run / "final").exists()):
        assert all(p.poll() is None for p in processes) and time.monotonic() < deadline, "ended before the kill"
        time.sleep(0.02)
    for p in processes:
        os.killpg(p.pid, signal.SIGKILL)
    for p in processes:
        p.communicate()
    time.sleep(0.5)
    assert not (run / "final").exists(), "killed too late: the run had finished"


def lightning_nodes(args: list, env: dict, tmp_path: Path, port: int) -> list:
    """`litgpt inheritune ... --num_nodes 2 --devices 1` on two nodes, as README's two-node example."""
    return [start([LITGPT, *args, "--num_nodes", 2, "--devices", 1, "--strategy", "ddp"],
                  node_env(env, tmp_path, node, port, {"NODE_RANK": str(node)}), tmp_path) for node in (0, 1)]


def torchrun_nodes(args: list, env: dict, tmp_path: Path, port: int) -> list:
    return [start([sys.executable, "-m", "torch.distributed.run", "--nnodes", 2, "--node_rank", node,
                   "--nproc_per_node", 1, "--master_addr", "127.0.0.1", "--master_port", port, LITGPT, *args,
                   "--num_nodes", 2, "--devices", 1, "--strategy", "ddp"],
                  node_env(env, tmp_path, node, port), tmp_path) for node in (0, 1)]


def srun_tasks(args: list, env: dict, tmp_path: Path, port: int, restart: int) -> list:
    """What `srun` starts for `sbatch --nodes 2 --ntasks-per-node 1`: one task per node with SLURM's variables."""
    tasks = []
    for node in (0, 1):
        slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "inheritune", "SLURM_NTASKS": "2",
                 "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_NODELIST": "127.0.0.1",
                 "SLURM_PROCID": str(node), "SLURM_LOCALID": "0", "SLURM_NODEID": str(node),
                 "SLURM_STEP_ID": "0", "SLURM_RESTART_COUNT": str(restart)}
        tasks.append(start([LITGPT, *args, "--num_nodes", 2, "--devices", 1, "--strategy", "ddp"],
                           node_env(env, tmp_path, node, port, slurm), tmp_path))
    return tasks


def test_two_nodes_every_launcher(tmp_path, tiny_reference, eight_samples, litgpt_cli):
    env = environment(tmp_path)
    data = ["--data.train_data_path", eight_samples[0], "--data.val_data_path", eight_samples[1]]
    args = ["inheritune", tiny_reference, *COMMON, *data]

    # Lightning's launcher on two nodes: a fresh run. Only global rank 0 (node 0) writes, and the text is prepared
    # once, beside the run directory, where node 1 (whose ~/.cache is its own) reads it.
    a = tmp_path / "a"
    outputs = finish(lightning_nodes(args + ["--out_dir", a], env, tmp_path, free_port()))
    assert "Inherited blocks" in outputs[0] and "Inherited blocks" not in outputs[1]
    assert "Traceback" not in "".join(outputs)
    uninterrupted = weights(a)
    assert uninterrupted["iter_num"] == STEPS  # each process reads 4 of a step's 8 samples
    assert (tmp_path / ".inheritune-cache" / "text").is_dir()
    assert not (tmp_path / "home1" / ".cache" / "litgpt-inheritune").exists()
    assert not (tmp_path / "home0" / ".cache" / "litgpt-inheritune").exists()

    # torchrun --nnodes 2, static rendezvous: the same run, the same weights.
    b = tmp_path / "b"
    finish(torchrun_nodes(args + ["--out_dir", b], env, tmp_path, free_port()))
    assert_same_weights(weights(b)["model"], uninterrupted["model"], atol=1e-6)

    # --overwrite true over the finished run: a second writer into it is refused while it lives; one node is then
    # killed (kill -9) and the other ends by itself, in one line, within a minute.
    nodes = lightning_nodes(args + ["--out_dir", a, "--overwrite", "true"], env, tmp_path, free_port())
    deadline = time.monotonic() + 600
    while not (a / "step-00000004" / "lit_model.pth").is_file() or (a / "final").exists():
        assert all(p.poll() is None for p in nodes) and time.monotonic() < deadline, "ended before the kill"
        time.sleep(0.02)
    code, _, err = litgpt_cli(*args, "--out_dir", a, "--resume", "true")  # in this process: a start-up saved
    assert code == 1 and "is in use by a live run" in err, err[-2000:]
    assert f"pid {nodes[0].pid} on" in err  # names the live run (node 0's rank 0 holds the claim)
    os.killpg(nodes[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    out, _ = nodes[0].communicate(timeout=120)
    assert time.monotonic() - killed_at < 60 and nodes[0].returncode == 1
    assert out.strip().splitlines()[-1] == "error: rank 0 lost its peers (another rank ended or was killed; see its output)"
    assert "Traceback" not in out
    nodes[1].communicate()
    assert not (a / "final").exists()

    # Resuming with another world size is refused before any work; with the same one it ends where the
    # uninterrupted run ended.
    code, _, err = litgpt_cli(*args, "--out_dir", a, "--resume", "true")
    assert code == 1 and "trained by 2 processes and this launch has 1" in err, err[-2000:]
    outputs = finish(lightning_nodes(args + ["--out_dir", a, "--resume", "true"], env, tmp_path, free_port()))
    resumed = weights(a)
    assert resumed["iter_num"] == STEPS
    assert_same_weights(resumed["model"], uninterrupted["model"], atol=1e-6)

    # srun: a fresh job killed (every task, kill -9), then the same job requeued: every rank resumes from the same
    # step (LitGPT's loop would otherwise hang or diverge) and ends with the uninterrupted weights.
    c = tmp_path / "c"
    kill_at_step_4(srun_tasks(args + ["--out_dir", c], env, tmp_path, free_port(), restart=0), c)
    outputs = finish(srun_tasks(args + ["--out_dir", c, "--resume", "true"], env, tmp_path, free_port(), restart=1))
    assert "Resuming training from" in outputs[0] and "Taking over" in outputs[0]
    requeued = weights(c)
    assert requeued["iter_num"] == STEPS
    assert_same_weights(requeued["model"], uninterrupted["model"], atol=1e-6)
    for run in (a, b, c):
        assert not list(run.parent.glob(f".{run.name}.*")), "claim or staging debris beside the run"


def test_a_launch_of_another_world_than_asked_is_one_line(tmp_path, tiny_reference, eight_samples):
    """torchrun --nproc_per_node 2 without --devices 2 would train two independent runs into one out_dir."""
    env = environment(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", LITGPT, "inheritune",
         str(tiny_reference), *map(str, COMMON), "--data.train_data_path", str(eight_samples[0]),
         "--data.val_data_path", str(eight_samples[1]), "--out_dir", str(tmp_path / "run")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: torchrun started 2 processes but --devices auto x --num_nodes 1 asks for 1; pass "
                     "--devices 2 --num_nodes 1, or start 1 process"] * 2, result.stderr[-3000:]
    assert not (tmp_path / "run").exists()


def test_readmes_cluster_commands_are_the_ones_tested():
    """README's two-node torchrun command and SLURM script use the flags these tests launch with."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    torchrun = next(line for line in readme.splitlines() if line.startswith("torchrun --nnodes 2"))
    for flag in ("--nnodes 2", "--node_rank 0", "--nproc_per_node 8", "--master_addr", "--master_port"):
        assert flag in torchrun
    script = readme[readme.index("#!/bin/bash\n#SBATCH"):]
    script = script[:script.index("```")]
    assert "#SBATCH --nodes 2" in script and "#SBATCH --ntasks-per-node 8" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun litgpt inheritune"))
    assert "--devices 8 --num_nodes 2" in srun and "--resume auto" in srun
    assert "--devices 8 --num_nodes 2" in readme[readme.index(torchrun):readme.index(torchrun) + 400]

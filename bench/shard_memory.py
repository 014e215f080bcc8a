"""Memory per process of a ~300M-parameter child trained by two processes on CPU: ``--strategy ddp`` (every process
holds the whole model, its gradients and AdamW's state) against ``--strategy fsdp2`` (each holds a shard).

    python bench/shard_memory.py                 # both strategies, 2 processes each, a table on stdout

Each strategy runs as ``torchrun --nproc_per_node 2`` of this file in ``--worker`` mode: the Fabric is the one every
training command builds (``rundir.launch``), the model LitGPT's ``GPT`` created as ``litgpt.pretrain.main`` creates
it (``fabric.init_module(empty_init=True)``, then ``fabric.setup``), AdamW set up by Fabric, and ``--steps``
optimizer steps of one sequence each. Per process it reports the peak resident memory (``ru_maxrss``) and the bytes
of parameters, gradients and optimizer state it holds (the local shard of a DTensor). The child: SmolLM2-360M's
shape cut to 26 blocks (350M parameters: LitGPT's ``GPT`` keeps its own head beside the
embedding), float32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def held_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def worker(args) -> None:
    import torch
    from litgpt import GPT, Config

    from litgpt_inheritune import rundir

    fabric = rundir.launch(2, 1, args.strategy, "32-true")
    config = Config.from_name("SmolLM2-360M", n_layer=args.n_layer)
    fabric.seed_everything(0)
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    model.max_seq_length = args.seq
    model = fabric.setup(model)
    optimizer = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-4))
    t0 = time.perf_counter()
    for _ in range(args.steps):
        x = torch.randint(0, config.vocab_size, (1, args.seq + 1))
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        fabric.backward(loss)
        optimizer.step()
        grads = held_bytes(p.grad for p in model.parameters())  # measured before they are freed
        optimizer.zero_grad()
    seconds = (time.perf_counter() - t0) / args.steps
    params = held_bytes(model.parameters())
    state = held_bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())
    total = sum(p.numel() for p in model.parameters())
    report = {"rank": fabric.global_rank, "strategy": args.strategy, "parameters": total,
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "params_gib": params / 2**30, "grads_gib": grads / 2**30, "optimizer_gib": state / 2**30,
              "step_s": seconds}
    print("REPORT " + json.dumps(report), flush=True)


def run(strategy: str, args) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", __file__,
               "--worker", "--strategy", strategy, "--n_layer", str(args.n_layer), "--seq", str(args.seq),
               "--steps", str(args.steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"error: {strategy} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    reports = [json.loads(line[len("REPORT "):]) for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    return sorted(reports, key=lambda r: r["rank"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--n_layer", type=int, default=26)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = {s: run(s, args) for s in ("ddp", "fsdp2")}
    n = rows["ddp"][0]["parameters"]
    print(f"{n / 1e6:.0f}M parameters (SmolLM2-360M shape, {args.n_layer} blocks), float32, AdamW, 2 CPU processes, "
          f"{args.steps} steps of 1 x {args.seq} tokens")
    print("| strategy | rank | peak RSS (GiB) | parameters held (GiB) | gradients held (GiB) | AdamW state held (GiB) "
          "| s/step |")
    print("|---|---|---|---|---|---|---|")
    for strategy, reports in rows.items():
        for r in reports:
            print(f"| {strategy} | {r['rank']} | {r['peak_rss_gib']:.2f} | {r['params_gib']:.2f} | {r['grads_gib']:.2f} | "
                  f"{r['optimizer_gib']:.2f} | {r['step_s']:.1f} |")
    ddp, fsdp2 = (max(r["peak_rss_gib"] for r in rows[s]) for s in ("ddp", "fsdp2"))
    print(f"peak RSS per process, fsdp2 / ddp: {fsdp2 / ddp:.2f}")


if __name__ == "__main__":
    main()

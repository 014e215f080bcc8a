"""Peak memory and time of the distillation loss, forward and backward, on CPU: the loss as first written (whole
float32 copies of the logits, boolean indexing of the kept tokens) against ``distill.kd_loss`` (chunks of tokens,
its gradient made in the forward pass).

    python bench/kd_memory.py                                # 4x512 tokens, 49,152-word vocabulary (SmolLM2's padded)
    python bench/kd_memory.py --rows 2048 --vocab 32000 --dtypes float32

Each variant and dtype runs in a fresh process (``--worker``): it makes the student's logits (``--dtype``, needing a
gradient), the teacher's (float32, as a CPU teacher gives them; ``--teacher_vocab`` columns) and targets with every
eighth token ignored, reads its peak resident memory (``ru_maxrss``), runs the loss forward and backward ``--repeat``
times, and reads the peak again. The difference is what the loss adds on top of its inputs, gradient included. Also
reported: the mean seconds of one forward and backward after a first untimed one, and the loss and gradient checked
against each other across variants (printed, not asserted).
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


def old_kd_loss(student_logits, teacher_logits, targets, temperature: float, alpha: float, ignore_index: int = -100):
    """The "before": the distillation loss as ``distill.kd_loss`` computed it until 2026-12-03."""
    import torch.nn.functional as F

    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab).float()
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1]).float()[:, :vocab]
    y = targets.reshape(-1)
    ce = F.cross_entropy(s, y, ignore_index=ignore_index)
    if alpha >= 1.0:
        return ce
    keep = y != ignore_index
    kl = F.kl_div(F.log_softmax(s[keep] / temperature, -1), F.log_softmax(t[keep] / temperature, -1),
                  reduction="batchmean", log_target=True)
    return alpha * ce + (1 - alpha) * temperature**2 * kl


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args) -> None:
    import torch

    from litgpt_inheritune.distill import kd_loss

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    student = torch.randn(args.rows, args.vocab).mul_(3).to(dtype).requires_grad_()
    teacher = torch.randn(args.rows, args.teacher_vocab).mul_(3)
    targets = torch.randint(0, args.vocab, (args.rows,))
    targets[::8] = -100
    loss_fn = old_kd_loss if args.variant == "old" else kd_loss
    before = peak_mib()
    seconds = []
    for _ in range(args.repeat):
        student.grad = None
        start = time.perf_counter()
        loss = loss_fn(student, teacher, targets, 2.0, 0.5)
        loss.backward()
        seconds.append(time.perf_counter() - start)
        del loss
    after = peak_mib()
    grad = student.grad.float()
    import litgpt_inheritune.distill

    print(json.dumps({"module": litgpt_inheritune.distill.__file__, "variant": args.variant, "dtype": args.dtype,
                      "inputs_peak_mib": round(before),
                      "peak_mib": round(after), "added_mib": round(after - before),
                      "s": round(sum(seconds[1:]) / max(len(seconds) - 1, 1), 3),
                      "loss": loss_fn(student.detach(), teacher, targets, 2.0, 0.5).item(),
                      "grad_sum_abs": grad.abs().sum().item(),
                      "grad_checksum": (grad * teacher[:, :args.vocab]).sum().item()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4 * 512, help="tokens (batch x sequence length)")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--teacher_vocab", type=int, default=None, help="defaults to --vocab")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="of the student's logits")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.teacher_vocab = args.teacher_vocab or args.vocab
    if args.worker:
        return worker(args)
    rows = []
    for dtype in args.dtypes:
        for variant in ("old", "new"):
            command = [sys.executable, __file__, "--worker", "--variant", variant, "--dtype", dtype, "--rows",
                       str(args.rows), "--vocab", str(args.vocab), "--teacher_vocab", str(args.teacher_vocab),
                       "--repeat", str(args.repeat)]
            # The working tree's package, not an installed copy (which LitGPT's start-up hook imports first).
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            if not Path(rows[-1]["module"]).is_relative_to(ROOT):
                sys.exit(f"the worker measured {rows[-1]['module']}, not this checkout's distill.py")
            print(json.dumps(rows[-1]), file=sys.stderr)
    one_copy = args.rows * args.vocab * 4 / 2**20
    print(f"rows {args.rows}, vocab {args.vocab}, teacher vocab {args.teacher_vocab}; "
          f"one float32 [rows, vocab] is {one_copy:.0f} MiB")
    print("| student logits | variant | peak RSS with inputs MiB | peak RSS after fwd+bwd MiB | added MiB | "
          "added / float32 copy | s per fwd+bwd | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['dtype']} | {row['variant']} | {row['inputs_peak_mib']} | {row['peak_mib']} | "
              f"{row['added_mib']} | {row['added_mib'] / one_copy:.2f} | {row['s']:.2f} | {row['loss']:.6f} |")
    for dtype in args.dtypes:
        old, new = (next(r for r in rows if r["dtype"] == dtype and r["variant"] == v) for v in ("old", "new"))
        print(f"{dtype}: added memory new / old = {new['added_mib'] / old['added_mib']:.3f}; time new / old = "
              f"{new['s'] / old['s']:.2f}; gradient |g| sum old {old['grad_sum_abs']:.6g} "
              f"new {new['grad_sum_abs']:.6g}, checksum old {old['grad_checksum']:.6g} new {new['grad_checksum']:.6g}")


if __name__ == "__main__":
    main()

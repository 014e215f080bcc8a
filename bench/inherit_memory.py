"""Time and peak RAM of `litgpt inheritune_init` on a multi-GB reference checkpoint, on CPU.

Writes a synthetic LitGPT checkpoint of a zoo shape (random weights, default OpenLLaMA-3B in bf16, ~6.9 GB), then
measures, each in a fresh process:
  * `litgpt inheritune_init` of the first n blocks (the reference is memory-mapped), and
  * a plain `torch.load` of the same file (what reading the reference eagerly would cost),
and prints a markdown row per measurement: file size, child size, wall time and peak resident memory (ru_maxrss).

    python bench/inherit_memory.py --model open_llama_3b --n_layers 13 --work_dir /tmp/inherit-bench

The synthetic reference is kept in work_dir for reruns; delete it afterwards (it is several GB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def make_reference(directory: Path, model: str, dtype: str) -> Path:
    import torch
    from litgpt import GPT, Config
    from litgpt.utils import save_config

    if (directory / "lit_model.pth").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    config = Config.from_name(model)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=generator) * 0.02).to(getattr(torch, dtype)) for k, shape in shapes.items()}
    tmp = directory / "lit_model.pth.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / "lit_model.pth")
    save_config(config, directory)
    return directory


def measure(command: list[str]) -> dict:
    """Runs ``command`` in a child process; its wall time and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:  # ru_maxrss of children is a running maximum: measure one command per bench process
        raise RuntimeError("run each measurement in its own bench process (--only)")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(peak_kib / 2**20, 2)}


def size_gb(path: Path) -> float:
    """Size of a file, or of all files under a directory, in GB."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e9, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="open_llama_3b", help="LitGPT zoo config name of the reference shape")
    parser.add_argument("--n_layers", type=int, default=13)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/inherit-bench"))
    parser.add_argument("--only", choices=["inherit", "eager"], help="run one measurement (used internally)")
    args = parser.parse_args()

    reference = args.work_dir / f"{args.model}-{args.dtype}"
    if args.only == "inherit":
        child = args.work_dir / f"child-{args.n_layers}"
        command = [sys.executable, "-m", "litgpt_inheritune.cli", "inheritune_init", str(reference),
                   "--n_layers", str(args.n_layers), "--out_dir", str(child), "--overwrite", "true"]
        result = measure(command)
        result["child_gb"] = size_gb(child)
        print(json.dumps(result))
        return
    if args.only == "eager":
        code = f"import torch; sd = torch.load({str(reference / 'lit_model.pth')!r}, weights_only=True); print(len(sd))"
        print(json.dumps(measure([sys.executable, "-c", code])))
        return

    t0 = time.perf_counter()
    make_reference(reference, args.model, args.dtype)
    print(f"synthetic reference ready in {time.perf_counter() - t0:.0f} s: {reference}", file=sys.stderr)
    # Drop what the writer left in the page cache out of the picture as far as an unprivileged process can:
    # every measurement runs in a fresh process; page-cache hits make both arms faster, not smaller.
    rows = []
    for only in ("inherit", "eager"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--n_layers", str(args.n_layers),
                              "--dtype", args.dtype, "--work_dir", str(args.work_dir), "--only", only],
                             check=True, capture_output=True, text=True)
        rows.append((only, json.loads(out.stdout.strip().splitlines()[-1])))
    file_gb = size_gb(reference / "lit_model.pth")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores; reference {args.model} ({args.dtype}), "
          f"{file_gb} GB on disk; child = first {args.n_layers} blocks\n")
    print("| measurement | wall s | peak RSS GB | peak RSS / reference file |")
    print("|---|---|---|---|")
    for only, r in rows:
        name = (f"inheritune_init --n_layers {args.n_layers} (child {r['child_gb']} GB)" if only == "inherit"
                else "torch.load of the whole reference (eager)")
        print(f"| {name} | {r['seconds']} | {r['peak_rss_gb']} | {r['peak_rss_gb'] / file_gb:.2f} |")


if __name__ == "__main__":
    main()

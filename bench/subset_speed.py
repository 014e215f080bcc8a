"""Speed and peak RAM of `litgpt inheritune_data` against corpus size, on CPU.

Builds corpora of real text several times the subset's size: Python's own standard library sources (the .py files
of the running interpreter's stdlib, PSF licence), one document per source file, 50 documents per .jsonl file, until
k x the subset's tokens are reached (past the library's 3.5M tokens its files repeat under new names). Then builds the same subset from each, each run in a fresh process, and prints a
markdown row per run: corpus tokens, seconds (after imports), corpus tokens per second, and peak resident memory (ru_maxrss) of the
main process and of the largest worker.

    python bench/subset_speed.py --tokenizer_dir checkpoints/SmolLM2-135M-Instruct --work_dir /tmp/subset-bench \
        --subset_tokens 1000000 --multiples 2 4 8 16 --num_workers 2 --repeats 1

Each size runs twice: with the candidate pass (the default: count characters, tokenize only documents that can be
chosen) and with ``candidate_pass=False`` (tokenize everything, as `--fraction` must).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def library_documents() -> list[str]:
    """The stdlib's .py sources (no tests, no site-packages), sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts)
        if parts & {"site-packages", "test", "tests", "idle_test"}:
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return texts


def write_corpora(work_dir: Path, tokenizer_dir: Path, subset_tokens: int, multiples: list[int]) -> dict[int, dict]:
    """One corpus per multiple; {multiple: {"dir", "documents", "tokens", "mb"}} (tokens counted here, with EOS).

    Document i is library file i modulo the library's size, stored as line i % 50 of part-{i // 50}.jsonl: past the
    library's 3.5M tokens texts repeat, but under other file names (so other keys); the smaller corpora's files are
    the first files of the larger ones.
    """
    from litgpt import Tokenizer

    tokenizer = Tokenizer(tokenizer_dir)
    library, counts = library_documents(), []
    corpora, total, n = {}, 0, 0
    for multiple in sorted(multiples):
        while total < multiple * subset_tokens:
            if len(counts) < len(library):
                counts.append(len(tokenizer.encode(library[len(counts)], bos=False, eos=True)))
            total += counts[n % len(library)]
            n += 1
        directory = work_dir / f"corpus-x{multiple}"
        if not directory.is_dir():
            tmp = work_dir / f".corpus-x{multiple}.tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            for start in range(0, n, 50):
                lines = "".join(json.dumps({"text": library[i % len(library)]}) + "\n"
                                for i in range(start, min(n, start + 50)))
                (tmp / f"part-{start // 50:05d}.jsonl").write_text(lines)
            os.replace(tmp, directory)
        size = sum(p.stat().st_size for p in directory.iterdir())
        corpora[multiple] = {"dir": str(directory), "documents": n, "tokens": total, "mb": round(size / 1e6, 1)}
    return corpora


def child(arguments: dict) -> None:
    """One measured run (in its own process)."""
    import contextlib

    import litdata  # noqa: F401  (imports are not what is measured: litgpt alone takes seconds)
    import litgpt  # noqa: F401

    from litgpt_inheritune.data.sampler import build_subset

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # litdata talks on stdout
        summary = build_subset(**arguments)
    seconds = time.perf_counter() - t0
    hwm = next((int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:")), 0)
    print(json.dumps({
        "seconds": seconds, "passes": summary["passes"], "tokenized_documents": summary["tokenized_documents"],
        "train_tokens": summary["train"]["tokens"],
        "main_peak_mb": max(hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024,
        "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


def measure(corpus: dict, tokenizer_dir: Path, out_dir: Path, subset_tokens: int, val_tokens: int,
            num_workers: int, candidate_pass: bool) -> dict:
    arguments = {"corpus": corpus["dir"], "tokenizer_dir": str(tokenizer_dir), "out_dir": str(out_dir),
                 "tokens": subset_tokens, "val_tokens": val_tokens, "num_workers": num_workers,
                 "candidate_pass": candidate_pass, "progress": False, "overwrite": True}
    run = subprocess.run([sys.executable, __file__, "--child", json.dumps(arguments)], check=True,
                         capture_output=True, text=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["corpus_tokens_per_s"] = corpus["tokens"] / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer_dir", type=Path, default=Path("checkpoints/SmolLM2-135M-Instruct"))
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/subset-bench"))
    parser.add_argument("--subset_tokens", type=int, default=1_000_000)
    parser.add_argument("--val_tokens", type=int, default=10_000)
    parser.add_argument("--multiples", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--num_workers", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the fastest is reported")
    parser.add_argument("--modes", nargs="+", default=["candidates", "everything"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))

    args.work_dir.mkdir(parents=True, exist_ok=True)
    corpora = write_corpora(args.work_dir, args.tokenizer_dir, args.subset_tokens, args.multiples)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; subset "
          f"{args.subset_tokens:,} tokens + {args.val_tokens:,} val; fastest of {args.repeats} runs\n")
    print("| corpus | corpus tokens | MB | mode | workers | passes | tokenized docs | s | corpus tokens/s "
          "| main peak RSS MB | largest worker peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for multiple in args.multiples:
        corpus = corpora[multiple]
        for mode in args.modes:
            for workers in args.num_workers:
                runs = [measure(corpus, args.tokenizer_dir, args.work_dir / "out", args.subset_tokens,
                                args.val_tokens, workers, mode == "candidates") for _ in range(args.repeats)]
                result = min(runs, key=lambda r: r["seconds"])
                result["main_peak_mb"] = max(r["main_peak_mb"] for r in runs)
                result["worker_peak_mb"] = max(r["worker_peak_mb"] for r in runs)
                results.append({"multiple": multiple, "mode": mode, "workers": workers, **corpus, **result})
                print(f"| {multiple}x subset | {corpus['tokens']:,} | {corpus['mb']} | {mode} | {workers} | "
                      f"{result['passes']} | {result['tokenized_documents']:,} / {corpus['documents']:,} | "
                      f"{result['seconds']:.1f} | {result['corpus_tokens_per_s']:,.0f} | "
                      f"{result['main_peak_mb']:.0f} | {result['worker_peak_mb']:.0f} |", flush=True)
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

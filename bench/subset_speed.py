"""Speed and peak RAM of `litgpt inheritune_data` on CPU: against the tokenizer's own limit, and from 1M to 50M tokens.

Corpora of real text: Python's own standard library sources (the .py files of the running interpreter's stdlib, PSF
licence), one document per source file, 50 documents per .jsonl file, until a number of tokens is reached (past the
library's 3.5M tokens its files repeat under new names). Every measured run is a fresh process; seconds exclude
imports. In one run the script prints:

1. The ratio: the whole command (``--fraction 0.99``: read, key, tokenize every document, choose, write) in corpus
   tokens per second, against HF tokenizers' own batch encoding (``encode_batch_fast`` on every core, its documents
   already in memory; the faster of 1,000 documents a call and the command's own batching) of the same documents on
   the same cores; the two alternate ``--repeats`` times.
2. Scaling: time, phases and peak RSS of ``--tokens B`` (the default, candidate pass) for each of ``--budgets``,
   each from a corpus of ``--corpus_multiple`` x B tokens.
3. With ``--multiples``, the older table: one subset of ``--subset_tokens`` from corpora of k x its size.

    python bench/subset_speed.py --tokenizer_dir checkpoints/SmolLM2-135M-Instruct --work_dir /tmp/subset-bench \
        --ratio_tokens 20000000 --budgets 1000000 10000000 50000000 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
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


def write_corpora(work_dir: Path, tokenizer_dir: Path, targets: list[int]) -> dict[int, dict]:
    """One corpus of at least each number of tokens; {target: {"dir", "documents", "tokens", "mb"}} (tokens counted
    here, with EOS).

    Document i is library file i modulo the library's size, stored as line i % 50 of part-{i // 50}.jsonl: past the
    library's 3.5M tokens texts repeat, but under other file names (so other keys); the smaller corpora's files are
    the first files of the larger ones.
    """
    from litgpt import Tokenizer

    tokenizer = Tokenizer(tokenizer_dir)
    library, counts = library_documents(), []
    corpora, total, n = {}, 0, 0
    for target in sorted(set(targets)):
        while total < target:
            if len(counts) < len(library):
                counts.append(len(tokenizer.encode(library[len(counts)], bos=False, eos=True)))
            total += counts[n % len(library)]
            n += 1
        directory = work_dir / f"corpus-{target}"
        if not directory.is_dir():
            tmp = work_dir / f".corpus-{target}.tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            for start in range(0, n, 50):
                lines = "".join(json.dumps({"text": library[i % len(library)]}) + "\n"
                                for i in range(start, min(n, start + 50)))
                (tmp / f"part-{start // 50:05d}.jsonl").write_text(lines)
            os.replace(tmp, directory)
        size = sum(p.stat().st_size for p in directory.iterdir())
        corpora[target] = {"dir": str(directory), "documents": n, "tokens": total, "mb": round(size / 1e6, 1)}
    return corpora


def cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peaks() -> dict:
    """Peak resident memory of this process (VmHWM) and of its largest child so far, in MB."""
    hwm = next((int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:")), 0)
    return {"main_peak_mb": max(hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024,
            "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def child(arguments: dict) -> None:
    """One measured run of the command's body (in its own process)."""
    import contextlib

    import litdata  # noqa: F401  (imports are not what is measured: litgpt alone takes seconds)
    import litgpt  # noqa: F401

    from litgpt_inheritune.data.sampler import build_subset

    t0, cpu0 = time.perf_counter(), cpu_seconds()
    with contextlib.redirect_stdout(sys.stderr):  # litdata talks on stdout
        summary = build_subset(**arguments)
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "seconds": seconds, "cpu_seconds": cpu_seconds() - cpu0, "passes": summary["passes"], "tokenized_documents": summary["tokenized_documents"],
        "train_tokens": summary["train"]["tokens"], "corpus_tokens": summary["corpus_tokens"],
        "phase_seconds": summary.get("phase_seconds", {}), **peaks(),
    }))


def limit_child(arguments: dict) -> None:
    """The tokenizer's own limit (in its own process): HF tokenizers' batch encoding on every core of the corpus's
    documents, read into memory first (not timed), in batches of ``batch`` documents or, with ``batch_chars``, of
    about that many characters (the command's own batching)."""
    from tokenizers import Tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    tokenizer = Tokenizer.from_file(str(Path(arguments["tokenizer_dir"]) / "tokenizer.json"))
    texts = [json.loads(line)["text"] for path in sorted(Path(arguments["corpus"]).iterdir()) for line in path.open()]
    batches, batch, chars = [], [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if (len(batch) >= arguments["batch"]) if "batch" in arguments else (chars >= arguments["batch_chars"]):
            batches.append(batch)
            batch, chars = [], 0
    batches += [batch] if batch else []
    tokens, t0, cpu0 = 0, time.perf_counter(), cpu_seconds()
    for batch in batches:
        tokens += sum(len(encoding.ids) + 1 for encoding in tokenizer.encode_batch_fast(batch))
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - cpu0, "tokens": tokens}))


def run_child(flag: str, arguments: dict) -> dict:
    run = subprocess.run([sys.executable, __file__, flag, json.dumps(arguments)], check=True, capture_output=True,
                         text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def measure(corpus: dict, tokenizer_dir: Path, out_dir: Path, **options) -> dict:
    arguments = {"corpus": corpus["dir"], "tokenizer_dir": str(tokenizer_dir), "out_dir": str(out_dir),
                 "progress": False, "overwrite": True, **options}
    result = run_child("--child", arguments)
    result["corpus_tokens_per_s"] = corpus["tokens"] / result["seconds"]
    return result


def ratio(corpus: dict, args) -> list[dict]:
    """The command (``--fraction 0.99``, every core) and the tokenizer's limit, alternating."""
    from litgpt_inheritune.data.sampler import BATCH_CHARS

    print(f"\n### The command against the tokenizer's limit: {corpus['tokens']:,} tokens, {corpus['documents']:,} "
          f"documents, {corpus['mb']} MB\n")
    print("| run | what | s | corpus tokens/s | CPU s | tokens per CPU s | phases s (tokenizing, writing) "
          "| main peak RSS MB | largest worker peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for repeat in range(args.repeats):
        # The faster of two batchings: 1,000 documents a call, and the command's own (about BATCH_CHARS a call).
        limit = min((run_child("--limit", {"corpus": corpus["dir"], "tokenizer_dir": str(args.tokenizer_dir), **batch})
                     for batch in ({"batch": 1000}, {"batch_chars": BATCH_CHARS})), key=lambda r: r["seconds"])
        limit["tokens_per_s"] = limit["tokens"] / limit["seconds"]
        print(f"| {repeat + 1} | encode_batch_fast, every core | {limit['seconds']:.1f} | "
              f"{limit['tokens_per_s']:,.0f} | {limit['cpu_seconds']:.1f} | "
              f"{limit['tokens'] / limit['cpu_seconds']:,.0f} | | | |", flush=True)
        command = measure(corpus, args.tokenizer_dir, args.work_dir / "out", fraction=0.99, val_tokens=10_000)
        phases = command["phase_seconds"]
        print(f"| {repeat + 1} | inheritune_data --fraction 0.99 | {command['seconds']:.1f} | "
              f"{command['corpus_tokens_per_s']:,.0f} | {command['cpu_seconds']:.1f} | "
              f"{corpus['tokens'] / command['cpu_seconds']:,.0f} | {phases.get('tokenizing', 0):.1f}, "
              f"{phases.get('writing', 0):.1f} | {command['main_peak_mb']:.0f} | {command['worker_peak_mb']:.0f} |",
              flush=True)
        rows.append({"repeat": repeat, "limit": limit, "command": command})
    ratios = [r["command"]["corpus_tokens_per_s"] / r["limit"]["tokens_per_s"] for r in rows]
    best = (max(r["command"]["corpus_tokens_per_s"] for r in rows)
            / max(r["limit"]["tokens_per_s"] for r in rows))
    per_cpu = [(corpus["tokens"] / r["command"]["cpu_seconds"]) / (r["limit"]["tokens"] / r["limit"]["cpu_seconds"])
               for r in rows]
    print(f"\nRatio per repeat (command / limit just before it): {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.2f}; fastest command / fastest limit {best:.2f}; tokens per CPU "
          f"second, command / limit: {', '.join(f'{x:.2f}' for x in per_cpu)}")
    return rows


def scaling(corpora: dict, args) -> list[dict]:
    """``--tokens B`` for each budget, each from its corpus of ``corpus_multiple`` x B tokens."""
    print(f"\n### Budgets from corpora of {args.corpus_multiple}x their tokens (candidate pass, every core)\n")
    print("| budget tokens | corpus tokens | MB | tokenized docs | s | counting s | tokenizing s | writing s "
          "| budget tokens/s | main peak RSS MB | largest worker peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for budget in args.budgets:
        corpus = corpora[args.corpus_multiple * budget]
        result = measure(corpus, args.tokenizer_dir, args.work_dir / "out", tokens=budget, val_tokens=10_000)
        phases = result["phase_seconds"]
        print(f"| {budget:,} | {corpus['tokens']:,} | {corpus['mb']} | {result['tokenized_documents']:,} / "
              f"{corpus['documents']:,} | {result['seconds']:.1f} | {phases.get('counting', 0):.1f} | "
              f"{phases.get('tokenizing', 0):.1f} | {phases.get('writing', 0):.1f} | "
              f"{budget / result['seconds']:,.0f} | {result['main_peak_mb']:.0f} | {result['worker_peak_mb']:.0f} |",
              flush=True)
        rows.append({"budget": budget, **corpus, **result})
    return rows


def multiples(corpora: dict, args) -> list[dict]:
    """The older table: one subset of ``subset_tokens`` from corpora of k x its size, by mode and workers."""
    print(f"\n### A subset of {args.subset_tokens:,} tokens + 10,000 val from corpora of k x its size; fastest of "
          f"{args.repeats}\n")
    print("| corpus | corpus tokens | MB | mode | workers | passes | tokenized docs | s | corpus tokens/s "
          "| main peak RSS MB | largest worker peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for multiple in args.multiples:
        corpus = corpora[multiple * args.subset_tokens]
        for mode in args.modes:
            for workers in args.num_workers:
                runs = [measure(corpus, args.tokenizer_dir, args.work_dir / "out", tokens=args.subset_tokens,
                                val_tokens=10_000, num_workers=workers, candidate_pass=mode == "candidates")
                        for _ in range(args.repeats)]
                result = min(runs, key=lambda r: r["seconds"])
                result["main_peak_mb"] = max(r["main_peak_mb"] for r in runs)
                result["worker_peak_mb"] = max(r["worker_peak_mb"] for r in runs)
                results.append({"multiple": multiple, "mode": mode, "workers": workers, **corpus, **result})
                print(f"| {multiple}x subset | {corpus['tokens']:,} | {corpus['mb']} | {mode} | {workers} | "
                      f"{result['passes']} | {result['tokenized_documents']:,} / {corpus['documents']:,} | "
                      f"{result['seconds']:.1f} | {result['corpus_tokens_per_s']:,.0f} | "
                      f"{result['main_peak_mb']:.0f} | {result['worker_peak_mb']:.0f} |", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer_dir", type=Path, default=Path("checkpoints/SmolLM2-135M-Instruct"))
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/subset-bench"))
    parser.add_argument("--ratio_tokens", type=int, default=20_000_000, help="corpus of the ratio; 0 skips it")
    parser.add_argument("--budgets", type=int, nargs="*", default=[1_000_000, 10_000_000, 50_000_000])
    parser.add_argument("--corpus_multiple", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of the ratio (and per row of --multiples)")
    parser.add_argument("--subset_tokens", type=int, default=1_000_000)
    parser.add_argument("--multiples", type=int, nargs="*", default=[])
    parser.add_argument("--num_workers", type=int, nargs="+", default=[2])
    parser.add_argument("--modes", nargs="+", default=["candidates", "everything"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--limit", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.limit:
        return limit_child(json.loads(args.limit))

    args.work_dir.mkdir(parents=True, exist_ok=True)
    targets = [args.corpus_multiple * b for b in args.budgets] + [m * args.subset_tokens for m in args.multiples]
    targets += [args.ratio_tokens] if args.ratio_tokens else []
    corpora = write_corpora(args.work_dir, args.tokenizer_dir, targets)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{platform.machine()}, {cores} usable cores, Python {platform.python_version()}, load average "
          f"{os.getloadavg()[0]:.1f} at the start; tokenizer {args.tokenizer_dir.name}")
    results = {}
    if args.ratio_tokens:
        results["ratio"] = ratio(corpora[args.ratio_tokens], args)
    if args.budgets:
        results["scaling"] = scaling(corpora, args)
    if args.multiples:
        results["multiples"] = multiples(corpora, args)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

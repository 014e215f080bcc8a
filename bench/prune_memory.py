"""Peak RAM of `litgpt inheritune_prune` on a 7B-shaped reference, on CPU: this tree against an earlier one.

Writes a synthetic LitGPT reference of Llama-2-7B's shape cut to ``--n_layer`` blocks (d 4096, 32 heads,
intermediate 11008, vocabulary 32000; random bf16 weights, 4 blocks ~1.07B parameters, 2.1 GB) with SmolLM2's
tokenizer files (the data below is already tokenized, so they are only read, never used to encode), and a
one-domain ``DomainMixture`` of random token ids below 32000. Then, each variant in a fresh process (peak resident
memory is that process's ``ru_maxrss``, also read at its first forward, when the model is built and loaded and no
step has run), runs the pruning body (``litgpt_inheritune.pruning.training.prune``) for
``--steps`` optimizer steps of one micro-batch of ``--seq`` tokens, a validation at the last step and the
extraction of the target (half of every width and of the depth), and prints a markdown row per variant.

    python bench/prune_memory.py --before /tmp/prune-before --work_dir /tmp/prune-bench

Variants may run side by side (``--variants before`` in one shell, ``--variants after`` in another): each has its
own run directory, and each peak is its own process's. bf16 matmuls on a CPU without bf16 instructions (AVX2 only)
run at about 10 GFLOP/s per core, hence the short default sequence (64 tokens): the peak is set by the weights,
gradients and AdamW's states, activations of 1 x 64 tokens are a few MB.

``--before`` is a directory holding an earlier ``litgpt_inheritune`` package (e.g.
``mkdir /tmp/prune-before && git archive <commit> litgpt_inheritune | tar -x -C /tmp/prune-before``); its variant
runs with ``PYTHONPATH`` pointed there, the others with this tree. Every variant trains in ``--precision``
(default bf16-true: the weights, gradients and AdamW's states in bf16). The reference and data stay in work_dir for
reruns; each run's directory (its prune_state.pth is about 4x the reference) is deleted after it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "checkpoints" / "SmolLM2-135M-Instruct"

# Runs in the fresh process: the pruning body, then its own peak resident memory (Linux: ru_maxrss in KiB).
RUNNER = """
import json, resource, sys, time
from pathlib import Path
from litgpt.args import EvalArgs, TrainArgs
from litgpt_inheritune.data.mixture import DomainMixture
from litgpt_inheritune.pruning.training import prune

a = json.loads(sys.argv[1])
t0 = time.perf_counter()
loaded = {}
from litgpt_inheritune.pruning.masks import PrunableGPT
stock_forward = PrunableGPT.forward

def forward(self, *args, **kwargs):  # the first forward: the model is built and loaded, no step has run yet
    if not loaded:
        loaded["gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return stock_forward(self, *args, **kwargs)

PrunableGPT.forward = forward
extra = {"speed": a["speed"]} if a["speed"] != "none" else {}
prune(Path(a["reference"]), a["target"], DomainMixture(Path(a["data"]), num_workers=0), Path(a["out"]), a["steps"],
      TrainArgs(save_interval=None, log_interval=1, global_batch_size=1, micro_batch_size=1, lr_warmup_steps=1,
                max_seq_length=a["seq"], max_norm=1.0, min_lr=1e-5),
      EvalArgs(interval=a["steps"], max_iters=1), lagrangian_warmup_steps=1, precision=a["precision"], **extra)
print("RESULT " + json.dumps({"seconds": round(time.perf_counter() - t0, 1), "loaded_peak_gib": loaded.get("gib"),
                              "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


def make_reference(directory: Path, n_layer: int) -> Path:
    import torch
    from litgpt import GPT, Config
    from litgpt.utils import save_config

    if (directory / "lit_model.pth").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    config = Config.from_name("Llama-2-7b-hf", n_layer=n_layer)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm_1.weight") or name.endswith("norm_2.weight") or name == "transformer.ln_f.weight":
            state[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            state[name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
    tmp = directory / "lit_model.pth.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / "lit_model.pth")
    save_config(config, directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, directory / name)
    return directory


def make_data(directory: Path, vocab: int, n_docs: int = 64, doc_tokens: int = 1024) -> Path:
    """``directory/{train,val}/web``: litdata token streams of random ids, as `litgpt inheritune_data` writes."""
    import torch
    from litdata import optimize
    from litdata.streaming import TokensLoader

    from litgpt_inheritune.checks import private_litdata_cache

    if (directory / "val" / "web" / "index.json").is_file():
        return directory
    generator = torch.Generator().manual_seed(1)
    for split, count in (("train", n_docs), ("val", 8)):
        docs = [torch.randint(0, vocab, (doc_tokens,), generator=generator, dtype=torch.int32) for _ in range(count)]

        def emit(i, docs=docs):
            yield docs[i]

        with private_litdata_cache():
            optimize(fn=emit, inputs=list(range(count)), output_dir=str(directory / split / "web"), num_workers=1,
                     chunk_bytes="16MB", item_loader=TokensLoader(), start_method="fork")
    return directory


def measure(package_root: Path, args: dict, work_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(package_root), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(work_dir)}
    out = Path(args["out"])
    shutil.rmtree(out, ignore_errors=True)
    try:
        result = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(args)], env=env, capture_output=True,
                                text=True, cwd=work_dir)
        if result.returncode != 0:
            raise RuntimeError(f"{package_root}: {(result.stdout + result.stderr)[-3000:]}")
        line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="directory holding the earlier litgpt_inheritune")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/prune-bench"))
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--precision", default="bf16-true")
    parser.add_argument("--variants", default="before,after", help="comma-separated: before, after, after+checkpoint")
    a = parser.parse_args()
    if not (a.before / "litgpt_inheritune" / "pruning" / "training.py").is_file():
        raise SystemExit(f"{a.before} holds no litgpt_inheritune package with pruning/training.py")
    a.work_dir.mkdir(parents=True, exist_ok=True)
    reference = make_reference(a.work_dir / "reference", a.n_layer)
    data = make_data(a.work_dir / "data", vocab=32000)
    target = {"n_layer": a.n_layer // 2, "n_embd": 2048, "n_head": 16, "n_query_groups": 16, "intermediate_size": 5504}
    print(f"reference: Llama-2-7B shape, {a.n_layer} blocks, {(reference / 'lit_model.pth').stat().st_size / 2**30:.2f} "
          f"GiB; {a.steps} steps x 1 x {a.seq} tokens, {a.precision}, CPU")
    print("| variant | peak RSS before the first step (GiB) | peak RSS (GiB) | wall (s) |")
    print("|---|---|---|---|")
    for variant in a.variants.split(","):
        root = a.before if variant == "before" else REPO
        speed = variant.split("+", 1)[1] if "+" in variant else "none"
        args = {"reference": str(reference), "target": target, "data": str(data), "out": str(a.work_dir / f"run-{variant}"),
                "steps": a.steps, "seq": a.seq, "precision": a.precision, "speed": speed}
        row = measure(root, args, a.work_dir)
        print(f"| {variant} | {row['loaded_peak_gib']} | {row['peak_rss_gib']} | {row['seconds']} |", flush=True)


if __name__ == "__main__":
    main()

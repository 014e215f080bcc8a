"""Arms (`litgpt inheritune_arms`): Inheritune next to its baselines and ablations, on the same data and budget.

Every arm is a `litgpt inheritune` run of a child with the same number of blocks, trained by LitGPT's loop with the
same data, budget, optimizer and seeds; arms differ only in how the child starts (and, for the KD arms, in the
training loss; ``random_2x`` gets twice the token budget). With ``seeds`` each arm runs once per seed and the table
gives mean ± sample standard deviation over seeds of the best validation loss and the test loss, marking a
difference to ``inherit`` smaller than two standard errors of the difference as "within noise". With ``lrs`` each
arm's learning rate is chosen before the other seeds run: every value is trained on the first seed only, and the one
with the lowest best validation loss wins (the test loss is never looked at).

Run dirs: ``out_dir/<arm>/`` (one seed, no ``lrs``: the layout of earlier versions), ``out_dir/<arm>/seed<k>/``
(``seeds``), ``out_dir/<arm>/lr<lr>/seed<k>/`` (``lrs``). The comparison is written to ``arms.md`` (table),
``arms.json`` and ``curves.png`` (validation loss against tokens seen, one band per arm). Rerunning skips finished
runs, and reuses their measurements (``measured.json`` in the run dir) while their checkpoints stay as they were.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from litgpt.args import EvalArgs, LogArgs, TrainArgs
from litgpt.data import DataModule

from litgpt_inheritune.errors import InherituneError

BASELINE = "inherit"  # the arm every other is compared with
NO_NORMS = ["embedding", "attention", "mlp", "head"]
ARMS: dict[str, dict[str, Any]] = {
    "inherit": {"what": "first n blocks + embedding, final norm, head (Inheritune)"},
    "random": {"parts": [], "what": "random init of the same shape (LitGPT's pretraining init)"},
    "random_2x": {"parts": [], "budget": 2,
                  "what": "random init of the same shape, twice the token budget (the paper's equal-compute baseline)"},
    "even": {"select": "even", "what": "n blocks spread evenly over the reference"},
    "block_influence": {"select": "block_influence", "what": "the n most influential blocks (needs --analysis)"},
    "angular_distance": {"select": "angular_distance", "what": "drop the most redundant run of blocks (needs --analysis)"},
    "attention_norms": {"parts": ["embedding", "attention", "norms", "final_norm", "head"],
                        "what": "ablation: attention and norms inherited, MLPs fresh"},
    "mlp_norms": {"parts": ["embedding", "mlp", "norms", "final_norm", "head"],
                  "what": "ablation: MLPs and norms inherited, attention fresh"},
    "no_norms": {"parts": NO_NORMS, "what": "ablation: attention and MLPs inherited, norms fresh"},
    "kd": {"kd": True, "what": "Inheritune child trained with logit distillation from the reference"},
    "kd_random": {"parts": [], "kd": True, "what": "random-init child trained with logit distillation"},
}


def check_arms(arms: list[str], analysis: Path | None) -> None:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise InherituneError(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    if len(set(arms)) != len(arms):
        raise InherituneError("an arm is listed twice in --arms; list each once")
    needs = [a for a in arms if ARMS[a].get("select") in ("block_influence", "angular_distance")]
    if needs and analysis is None:
        raise InherituneError(f"arm(s) {needs} need --analysis from `litgpt inheritune_analyze`")


def check_seeds_and_lrs(seeds: list[int] | None, lrs: list[float] | None, test_data: Path | None) -> None:
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise InherituneError(f"--seeds {seeds} must list at least one seed, each once, e.g. --seeds '[0, 1, 2]'")
    if lrs is not None and (not lrs or len(set(lrs)) != len(lrs) or min(lrs) <= 0):
        raise InherituneError(f"--lrs {lrs} must list positive learning rates, each once, e.g. --lrs '[3e-4, 1e-3]'")
    if test_data is not None:
        test_data = Path(test_data)
        if not (sorted(test_data.glob("*.txt")) or (test_data / "index.json").is_file()):
            raise InherituneError(f"--test_data {str(test_data)!r} holds no .txt files (nor a litdata index.json); "
                                  "give the directory of the held-out test split")


def base_lr(optimizer: str | dict) -> float | None:
    """The learning rate the optimizer argument gives (its ``init_args.lr``, else its class's default)."""
    import importlib
    import inspect

    if isinstance(optimizer, dict) and (optimizer.get("init_args") or {}).get("lr") is not None:
        return float(optimizer["init_args"]["lr"])
    path = optimizer if isinstance(optimizer, str) else optimizer.get("class_path", "")
    module, _, name = path.rpartition(".") if "." in path else ("torch.optim", "", path)
    try:
        default = inspect.signature(getattr(importlib.import_module(module), name)).parameters["lr"].default
    except (ImportError, AttributeError, KeyError, ValueError, TypeError):
        return None
    return float(default) if isinstance(default, (int, float)) else None


def with_lr(optimizer: str | dict, lr: float) -> dict:
    """The optimizer argument with its learning rate set to ``lr`` (a name becomes a class_path/init_args dict)."""
    if isinstance(optimizer, str):
        return {"class_path": optimizer if "." in optimizer else f"torch.optim.{optimizer}", "init_args": {"lr": lr}}
    optimizer = copy.deepcopy(optimizer)
    optimizer["init_args"] = {**(optimizer.get("init_args") or {}), "lr": lr}
    return optimizer


def run_dir_of(out_dir: Path, arm: str, seed: int, lr: float | None, seeds_given: bool, lrs_given: bool) -> Path:
    if lrs_given:
        return Path(out_dir) / arm / f"lr{lr:g}" / f"seed{seed}"
    if seeds_given:
        return Path(out_dir) / arm / f"seed{seed}"
    return Path(out_dir) / arm


def choose_lr(sweep: list[dict]) -> float:
    """The rule that fixes an arm's learning rate: of the sweep's runs (one arm, the first seed, one run per lr), the
    lr whose run has the lowest best validation loss (``best_loss``); a tie goes to the smaller lr. Nothing else in
    the rows (a test loss in particular) plays any part."""
    if not sweep:
        raise InherituneError("no runs to choose a learning rate from; give --lrs with at least one value")
    return min(sweep, key=lambda r: (r["best_loss"], r["lr"]))["lr"]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); the std is None below two values."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def difference(values: list[float], baseline: list[float]) -> dict | None:
    """Mean of ``values`` minus mean of ``baseline``, the standard error of that difference for independent samples,
    sqrt(s_a^2 / n_a + s_b^2 / n_b), and whether the difference is smaller than two of them ("within noise"; None
    when either side has fewer than two seeds)."""
    if not values or not baseline:
        return None
    diff = statistics.fmean(values) - statistics.fmean(baseline)
    if len(values) < 2 or len(baseline) < 2:
        return {"diff": diff, "se": None, "within_noise": None}
    se = math.sqrt(statistics.variance(values) / len(values) + statistics.variance(baseline) / len(baseline))
    return {"diff": diff, "se": se, "within_noise": abs(diff) < 2 * se or diff == 0}


def _common_mean(curves: list[list]) -> list[tuple[float, float, float]]:
    """(x, mean, sample std or 0) at the x every curve has."""
    if not curves:
        return []
    common = set.intersection(*({x for x, _ in c} for c in curves))
    band = []
    for x in sorted(common):
        ys = [next(y for cx, y in c if cx == x) for c in curves]
        mean, std = mean_std(ys)
        band.append((x, mean, std or 0.0))
    return band


def aggregate(runs: list[dict], baseline: str = BASELINE) -> list[dict]:
    """Table rows from per-seed results; a pure function of its input.

    Each run is a dict with ``arm``, ``seed``, ``best_loss`` and optionally ``lr``, ``tokens``, ``test_loss``,
    ``start_loss``, ``final_loss``, ``curve`` ((step, val loss) pairs) and ``token_curve`` ((tokens seen, val loss)
    pairs). One row per arm, in the order arms first appear: for each loss its mean over seeds and sample std
    (``<loss>_std``), the difference of the best validation and the test loss to the ``baseline`` arm with its
    standard error (``best_vs_inherit``, ``test_vs_inherit``, see ``difference``), the mean curve and the band
    (tokens, mean, std) over seeds, and the runs themselves (``runs``)."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    def seed_order(run: dict) -> tuple:
        seed = run.get("seed")
        return (0, seed) if isinstance(seed, int) else (1, 0)

    groups = {arm: sorted((r for r in runs if r["arm"] == arm), key=seed_order) for arm in arms}

    def losses(group: list[dict], key: str) -> list[float]:
        return [r[key] for r in group if r.get(key) is not None]

    rows = []
    for arm, group in groups.items():
        row: dict[str, Any] = {"arm": arm, "n": len(group), "seeds": [r.get("seed") for r in group]}
        for key in ("lr", "tokens"):
            values = {r.get(key) for r in group}
            row[key] = values.pop() if len(values) == 1 else sorted(v for v in values if v is not None)
        for key in ("start_loss", "final_loss", "best_loss", "test_loss"):
            row[key], row[f"{key}_std"] = mean_std(losses(group, key))
        for key, name in (("best_loss", "best_vs_inherit"), ("test_loss", "test_vs_inherit")):
            row[name] = (None if arm == baseline or baseline not in groups
                         else difference(losses(group, key), losses(groups[baseline], key)))
        row["curve"] = [(x, m) for x, m, _ in _common_mean([r.get("curve") or [] for r in group])]
        row["band"] = _common_mean([r.get("token_curve") or [] for r in group])
        row["runs"] = group
        rows.append(row)
    return rows


def _loss(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _versus(row: dict, key: str) -> str:
    d = row.get(key)
    if row["arm"] == BASELINE:
        return "baseline"
    if d is None:
        return "-"
    if d["se"] is None:
        return f"{d['diff']:+.4f} (one seed: no noise estimate)"
    return f"{d['diff']:+.4f} (2 SE {2 * d['se']:.4f}): " + ("within noise" if d["within_noise"] else "beyond noise")


def arms_table(rows: list[dict]) -> str:
    """The markdown table of ``aggregate``'s rows (with ``what`` and ``layers`` added), best validation loss first."""
    lines = ["| arm | blocks | lr | tokens | seeds | start val loss | final val loss | best val loss | best vs inherit "
             "| test loss | test vs inherit | per seed (best val / test) | how it starts |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    has_test = any(r.get("test_loss") is not None for r in rows)
    for r in sorted(rows, key=lambda r: (r.get("best_loss") is None, r.get("best_loss") or 0.0)):
        lr = r.get("lr")
        lr = f"{lr:g}" if isinstance(lr, (int, float)) else ("optimizer default" if lr is None else str(lr))
        tokens = f"{r['tokens']:,}" if isinstance(r.get("tokens"), int) else str(r.get("tokens") or "-")
        seeds = ", ".join(str(s) for s in r.get("seeds", []))
        per_seed = "; ".join(
            f"{run.get('seed')}: {run['best_loss']:.4f} / "
            + (f"{run['test_loss']:.4f}" if run.get("test_loss") is not None else "-")
            for run in r.get("runs", []))
        test = _loss(r.get("test_loss"), r.get("test_loss_std")) if has_test else "no test split"
        lines.append(
            f"| {r['arm']} | {r.get('layers', '-')} | {lr} | {tokens} | {seeds} | "
            f"{_loss(r.get('start_loss'), r.get('start_loss_std'))} | "
            f"{_loss(r.get('final_loss'), r.get('final_loss_std'))} | "
            f"{_loss(r.get('best_loss'), r.get('best_loss_std'))} | {_versus(r, 'best_vs_inherit')} | {test} | "
            f"{_versus(r, 'test_vs_inherit') if has_test else '-'} | {per_seed} | {r.get('what', '')} |")
    return "\n".join(lines)


def identical_seeds_note(rows: list[dict]) -> str:
    """A line naming the arms whose seeds all gave the same best validation loss (empty when there are none)."""
    same = [r["arm"] for r in rows if len(r.get("runs", [])) > 1 and len({run["best_loss"] for run in r["runs"]}) == 1]
    if not same:
        return ""
    return (f"\nSeeds gave identical losses for {', '.join(same)}: the seed changes neither a fully inherited start nor "
            "the data order (litdata shuffles the train set with its own fixed seed), so such an arm's std is 0 and "
            "its \"within noise\" marks rest on the other arm's spread alone.\n")


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, val_loss) pairs from the CSV logs of a run (all its versions, later values win)."""
    points: dict[int, float] = {}
    for path in sorted(Path(run_dir).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime):
        with path.open() as stream:
            for row in csv.DictReader(stream):
                if row.get("val_loss") not in (None, ""):
                    points[int(float(row["step"]))] = float(row["val_loss"])
    return sorted(points.items())


def tokens_per_iter(run_dir: Path, default: int) -> int:
    """Tokens one iteration of a run consumed over all devices (``total_tokens / iter`` of LitGPT's CSV log)."""
    for path in Path(run_dir).rglob("metrics.csv"):
        with path.open() as stream:
            for row in csv.DictReader(stream):
                if row.get("total_tokens") not in (None, "") and row.get("iter") not in (None, ""):
                    return int(float(row["total_tokens"])) // max(1, int(float(row["iter"])))
    return default


def plot_curves(rows: list[dict], path: Path, title: str, tokens_per_step: int | None = None) -> None:
    """Validation loss against tokens seen: a row's ``band`` ((tokens, mean, std) over seeds, shaded mean ± std),
    else its ``start_loss`` and ``curve`` ((step, loss) pairs, ``tokens_per_step`` tokens a step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for r in rows:
        band = r.get("band")
        if not band:
            band = [(0, r["start_loss"], 0.0)] + [((step + 1) * tokens_per_step, loss, 0.0)
                                                  for step, loss in r["curve"]]
        xs, means, stds = zip(*band)
        n = r.get("n", 1)
        (line,) = ax.plot(xs, means, marker=".", label=r["arm"] + (f" (mean ± std, {n} seeds)" if n > 1 else ""))
        if any(stds):
            ax.fill_between(xs, [max(m - s, 1e-6) for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("validation loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _earlier_runs(row: dict) -> list[dict]:
    """The per-seed runs of an ``arms.json`` row (a row written before seeds existed is one run)."""
    if "runs" in row:
        return row["runs"]
    return [{"arm": row["arm"], "seed": None, "lr": None, "layers": row.get("layers"),
             "start_loss": row.get("start_loss"), "final_loss": row.get("final_loss"),
             "best_loss": row.get("best_loss") or row.get("final_loss"),
             "test_loss": None, "curve": row.get("curve") or []}]


def run_arms(
    reference_dir: Path,
    n_layers: int,
    data: DataModule | None,
    out_dir: Path,
    arms: list[str],
    train: TrainArgs,
    eval: EvalArgs,
    optimizer: str | dict,
    analysis: Path | None = None,
    log: LogArgs | None = None,
    kd_temperature: float = 2.0,
    kd_alpha: float = 0.5,
    kd_quantize: str | None = None,
    precision: str | None = None,
    devices: int | str = "auto",
    num_nodes: int = 1,
    seed: int = 42,
    seeds: list[int] | None = None,
    lrs: list[float] | None = None,
    test_data: Path | None = None,
    compile: bool = True,
    resume: bool | Literal["auto"] = "auto",
    overwrite: bool = False,
    strategy: Literal["auto", "ddp", "fsdp", "fsdp2"] = "auto",
) -> list[dict]:
    """The body of the command (``commands``), raising ``InherituneError`` on bad input; returns the table's rows
    (``aggregate``'s, with each arm's ``what``, ``layers``, ``lr_sweep`` and ``lr_rule``)."""
    import litgpt.pretrain as pretrain
    import torch

    from litgpt_inheritune import rundir
    from litgpt_inheritune.checks import check_out_dir
    from litgpt_inheritune import strategy as strategies
    from litgpt_inheritune.checkpoint import FINAL_RECORD, load_reference_config, write_json
    from litgpt_inheritune.distill import distillation
    from litgpt_inheritune.validation import test_loss, val_loss
    from litgpt_inheritune.training import check_batches, check_budget, check_seq_length, run, tokens_per_epoch

    if data is None:
        raise InherituneError("--data is required, e.g. --data TextFiles --data.train_data_path path/to/txt_dir")
    from litgpt_inheritune.checks import check_data

    check_data(data)
    check_arms(arms, analysis)
    check_seeds_and_lrs(seeds, lrs, test_data)
    if (train.epochs is None) == (train.max_tokens is None):
        raise InherituneError("give the budget every arm shares as --train.epochs E or --train.max_tokens T (one of them)")
    config = load_reference_config(reference_dir)
    strategies.resolve(strategy, devices, num_nodes)  # a bad choice is refused before any work
    max_seq_length = train.max_seq_length or config.block_size
    check_seq_length(max_seq_length, config.block_size)
    out_dir = Path(out_dir)
    seeds_given, lrs_given = seeds is not None, lrs is not None
    seeds = list(seeds) if seeds_given else [seed]
    candidates = [float(lr) for lr in lrs] if lrs_given else [base_lr(optimizer)]
    if len(candidates) > 1:
        rule = (f"lr per arm: of {[f'{lr:g}' for lr in candidates]}, the one with the lowest best validation loss on "
                f"seed {seeds[0]} (the test loss is never used), fixed before the other seeds run")
    else:
        lr = candidates[0]
        rule = f"one lr for every arm, {'optimizer default' if lr is None else f'{lr:g}'} (no sweep)"

    # launched first, as every training command: the arms train on this launch's processes
    fabric = rundir.launch(devices, num_nodes, strategy, precision)
    with rundir.Claim(out_dir) as claim, rundir.one_line_peer_errors(fabric):
        def start() -> dict:
            """Global rank 0 alone: claim out_dir, decide what it holds (rundir's rules); the rows of earlier calls; the
            shared budget in tokens, counted once."""
            claim.take()
            check_batches(train, fabric.world_size)
            check_out_dir(out_dir, reference_dir)
            started = (out_dir / "arms.json").is_file() or any((out_dir / arm).is_dir() for arm in ARMS)
            decision = rundir.decide(out_dir, started, False, resume, overwrite, what="comparison of arms")
            max_tokens = train.max_tokens
            if train.epochs is not None and train.max_tokens is None:
                max_tokens = train.epochs * tokens_per_epoch(data, reference_dir, train.micro_batch_size, max_seq_length)
            check_budget(int(max_tokens), train, max_seq_length,
                         "--train.max_tokens" if train.max_tokens is not None else f"--train.epochs {train.epochs}")
            if decision == "overwrite":
                rundir.remove_run(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            earlier = json.loads((out_dir / "arms.json").read_text()) if (out_dir / "arms.json").is_file() else []
            return {"earlier": earlier, "max_tokens": max_tokens}

        prepared = rundir.agree(fabric, start, what="preparing the arms")
        earlier = prepared["earlier"]
        if train.epochs is not None and train.max_tokens is None:  # every arm gets the same budget, in tokens
            fabric.print(f"{train.epochs} epochs: --train.max_tokens {prepared['max_tokens']:,} for every arm")
            train = replace(train, epochs=None, max_tokens=prepared["max_tokens"])

        def measured(run_dir: Path, arm: str, seed: int, lr: float | None, budget: int) -> dict:
            """Global rank 0 alone: one run's losses (reused from ``measured.json`` while its checkpoints and the
            measuring settings stay the same)."""
            best_dir = run_dir / "best" if (run_dir / "best" / "lit_model.pth").is_file() else run_dir / "final"
            key = {"final": (run_dir / "final" / "lit_model.pth").stat().st_mtime_ns,
                   "best": (best_dir / "lit_model.pth").stat().st_mtime_ns, "eval_max_iters": eval.max_iters,
                   "micro_batch_size": train.micro_batch_size, "max_seq_length": max_seq_length,
                   "val_data": str(getattr(data, "val_data_path", None)),
                   "test_data": None if test_data is None else str(test_data)}
            cache = run_dir / "measured.json"
            if cache.is_file():
                stored = json.loads(cache.read_text())
                if stored.get("key") == key:
                    return {**stored["row"], "arm": arm, "seed": seed, "lr": lr}
            start_loss = val_loss(run_dir / "initial", data, max_seq_length, train.micro_batch_size, eval.max_iters)
            final_loss = val_loss(run_dir / "final", data, max_seq_length, train.micro_batch_size, eval.max_iters)
            curve = val_curve(run_dir)
            per_iter = tokens_per_iter(run_dir, train.micro_batch_size * max_seq_length)
            if (run_dir / "best" / "best.json").is_file():
                best = json.loads((run_dir / "best" / "best.json").read_text())
                best_loss, best_step, best_from = float(best["val_loss"]), best.get("step"), "best/best.json"
            elif curve:
                (best_step, best_loss), best_from = min(curve, key=lambda p: p[1]), "lowest evaluation in the log"
            else:
                best_loss, best_step, best_from = final_loss, None, "final checkpoint (no evaluations logged)"
            test = None
            if test_data is not None:  # the same fixed, unshuffled windows as validation, of the held-out text
                test = test_loss(best_dir, Path(test_data), max_seq_length=max_seq_length,
                                 batch_size=train.micro_batch_size, max_iters=eval.max_iters)
            trained = run_dir / "final" / FINAL_RECORD  # final/ holds the weights alone, its step and iter beside them
            iters = json.loads(trained.read_text())["iter"] if trained.is_file() else None
            row = {"arm": arm, "seed": seed, "lr": lr, "run_dir": str(run_dir.relative_to(out_dir)), "tokens": budget,
                   "iters": iters, "tokens_seen": None if iters is None else iters * per_iter,
                   "layers": json.loads((run_dir / "initial" / "inheritune.json").read_text())["layers"],
                   "start_loss": start_loss, "final_loss": final_loss, "best_loss": best_loss, "best_step": best_step,
                   "best_from": best_from, "test_loss": test, "test_from": None if test_data is None else best_dir.name,
                   "curve": curve, "token_curve": [(0, start_loss)] + [((s + 1) * per_iter, l) for s, l in curve]}
            write_json(cache, {"key": key, "row": row})
            return row

        def arm_run(arm: str, seed: int, lr: float | None) -> dict:
            """Trains one arm with one seed and lr unless its run is finished; returns rank 0's measurements."""
            spec = ARMS[arm]
            run_dir = run_dir_of(out_dir, arm, seed, lr, seeds_given, lrs_given)
            budget = train.max_tokens * spec.get("budget", 1)
            name = f"arm-{arm}" + (f"-lr{lr:g}" if lrs_given else "") + (f"-seed{seed}" if seeds_given or lrs_given else "")
            kwargs = dict(reference_dir=reference_dir, n_layers=n_layers, layers=None, parts=spec.get("parts"),
                          out_dir=run_dir, precision=precision, resume="auto", data=data,
                          train=replace(train, max_tokens=budget), eval=eval, log=log or LogArgs(),
                          optimizer=with_lr(optimizer, lr) if lrs_given else optimizer, devices=devices,
                          num_nodes=num_nodes, tokenizer_dir=None, logger_name="csv", seed=seed, compile=compile,
                          overwrite=False, select=spec.get("select", "first"), analysis=analysis, strategy=strategy)
            trained = rundir.agree(fabric, (run_dir / "final" / "lit_model.pth").is_file, what=f"looking at {name}")
            if not trained:
                fabric.print(f"Arm {arm}, seed {seed}" + (f", lr {lr:g}" if lrs_given else "") + f": {spec['what']}")
                if spec.get("kd"):
                    with distillation(pretrain, reference_dir, kd_temperature, kd_alpha, kd_quantize):
                        run(**kwargs)
                else:
                    run(**kwargs)
            # rank 0 measures; every rank gets the same row
            return rundir.agree(fabric, lambda: measured(run_dir, arm, seed, lr, budget), what=f"evaluating {name}")

        runs, sweeps = [], {}
        for arm in arms:
            sweep = [arm_run(arm, seeds[0], lr) for lr in candidates]  # the first seed, every candidate lr
            chosen = choose_lr(sweep) if len(sweep) > 1 else candidates[0]
            if len(sweep) > 1:
                fabric.print(f"Arm {arm}: lr {chosen:g} (best validation loss on seed {seeds[0]}: "
                      + ", ".join(f"lr {r['lr']:g} {r['best_loss']:.4f}" for r in sweep) + ")")
            sweeps[arm] = [{"lr": r["lr"], "seed": r["seed"], "best_loss": r["best_loss"]} for r in sweep]
            runs += [r for r in sweep if r["lr"] == chosen] + [arm_run(arm, s, chosen) for s in seeds[1:]]
        ran = set(arms)
        kept = [r for r in earlier if r["arm"] not in ran]  # arms of earlier calls stay in the comparison
        rows = aggregate([run for r in kept for run in _earlier_runs(r)] + runs)
        described = {r["arm"]: r for r in kept}
        for row in rows:
            first = row["runs"][0]
            row.update(what=ARMS.get(row["arm"], {}).get("what", ""), layers=first.get("layers"),
                       parts=ARMS.get(row["arm"], {}).get("parts"), kd=bool(ARMS.get(row["arm"], {}).get("kd")))
            if row["arm"] in ran:
                row.update(lr_sweep=sweeps[row["arm"]], lr_rule=rule)
            else:
                row.update(lr_sweep=described[row["arm"]].get("lr_sweep"), lr_rule=described[row["arm"]].get("lr_rule"))
        if fabric.global_rank == 0:  # one writer of the comparison
            write_json(out_dir / "arms.json", rows)
            other_rules = sorted({r["lr_rule"] for r in rows if r["lr_rule"] not in (None, rule)})
            rundir.write_text(out_dir / "arms.md", (
                f"# {n_layers}-block children of {config.name} ({config.n_layer} blocks), same data and budget\n\n"
                f"Seeds {seeds}: losses are mean ± sample std over seeds; \"vs inherit\" is the difference of means, "
                "within noise when smaller than two standard errors of the difference (sqrt(s1²/n1 + s2²/n2)).\n"
                f"Learning rate: {rule}." + (f" Arms of earlier calls: {'; '.join(other_rules)}." if other_rules else "")
                + "\n"
                f"Validation loss on the data module's validation set (its first {eval.max_iters} batches of "
                f"{train.micro_batch_size} x {max_seq_length} tokens, unshuffled); best = the run's best/best.json where "
                f"it has one, else the lowest of its evaluations every {eval.interval} steps. "
                + (f"Test loss on {str(test_data)!r} (the first {eval.max_iters} batches, unshuffled), of each run's best/ "
                   "checkpoint (final/ where it has none)." if test_data is not None
                   else "Test loss: no test split (give --test_data).")
                + "\n\n" + arms_table(rows) + "\n" + identical_seeds_note(rows)
            ))
            plot_curves(rows, out_dir / "curves.png", f"{n_layers}-block children of {config.name}"
                        + (f", mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else ""),
                        train.micro_batch_size * max_seq_length)
        return rows

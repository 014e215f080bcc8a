"""Training an inherited child with `litgpt pretrain`'s own loop (the body of `litgpt inheritune`, also run by grow,
arms and the demo).

The training loop is LitGPT's own (``litgpt.pretrain.setup``); this module only prepares its inputs:
the child checkpoint (in ``out_dir/initial``), the token budget for ``--train.epochs``, and the
hyperparameters file that ``litgpt pretrain`` cannot write for a command other than itself. Around LitGPT's
``validate`` it measures every evaluation on one fixed, unshuffled validation set (``validation.FixedSet``) and
keeps the lowest-validation step in ``out_dir/best`` (``--train.keep_best``).
"""

from __future__ import annotations

import copy
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from litgpt.args import TrainArgs
from litgpt.data import DataModule

from litgpt_inheritune import checks, patches, rundir, speed
from litgpt_inheritune.data.mixture import DomainMixture, dbl_hooks, measure_reference_losses
from litgpt_inheritune.errors import InherituneError

INITIAL = "initial"  # out_dir/initial holds the inherited, untrained child


@dataclass
class InherituneTrainArgs(TrainArgs):
    """LitGPT's training arguments and what `litgpt inheritune` adds to them."""

    keep_best: bool = True
    """Keep a complete checkpoint of the step with the lowest validation loss in out_dir/best"""


def plain_train_args(train: TrainArgs) -> TrainArgs:
    """``train`` as LitGPT's own ``TrainArgs`` (what ``litgpt.pretrain.setup`` is given)."""
    return TrainArgs(**{f.name: getattr(train, f.name) for f in fields(TrainArgs) if f.init})


def run(**arguments: Any) -> Path:
    """Runs `litgpt inheritune` with the arguments of ``commands.inheritune.setup``; raises ``InherituneError`` on bad
    input. Returns the final checkpoint dir."""
    a = _Args(arguments)
    out_dir = Path(a.out_dir)
    if a.data is None:
        raise InherituneError("--data is required, e.g. --data TextFiles --data.train_data_path path/to/txt_dir")
    if isinstance(a.data, DomainMixture):
        a.data.check()
    checks.check_data(a.data)
    checks.cap_workers(a.data)
    checks.quiet_known_warnings()
    extra = sorted(set(a.optimizer) - {"class_path", "init_args"}) if isinstance(a.optimizer, dict) else []
    if extra:  # LitGPT builds the optimizer from class_path and init_args only: anything else is silently dropped
        raise InherituneError(
            f"--optimizer has {extra} beside class_path and init_args, which LitGPT would ignore (jsonargparse puts "
            f"--optimizer.{extra[0]} there when a --config gives the optimizer); set it under optimizer.init_args "
            "in the YAML instead"
        )
    a.speed_options = speed.parse(a.speed)
    train: TrainArgs = a.train
    if train.epochs is not None and train.max_tokens is not None:
        raise InherituneError("give --train.epochs or --train.max_tokens, not both (set the other to null)")
    if train.epochs is None and train.max_tokens is None:
        raise InherituneError("give a budget: --train.epochs E (over the data's train set) or --train.max_tokens T")
    if train.epochs is not None and train.epochs <= 0:
        raise InherituneError(f"--train.epochs must be positive, got {train.epochs}")
    if train.max_tokens is not None and train.max_tokens <= 0:
        raise InherituneError(f"--train.max_tokens must be positive, got {train.max_tokens}")
    if train.micro_batch_size < 1 or train.global_batch_size < 1:
        raise InherituneError(f"--train.global_batch_size ({train.global_batch_size}) and --train.micro_batch_size "
                              f"({train.micro_batch_size}) must be at least 1")
    if train.max_norm is None:
        raise InherituneError("--train.max_norm is required by litgpt pretrain's loop, e.g. --train.max_norm 1.0")
    resume = a.resume
    if isinstance(resume, Path) and not Path(resume).is_file():
        raise InherituneError(f"--resume {str(resume)!r} is not a checkpoint file; give a step-*/lit_model.pth")
    from litgpt.utils import choose_logger, get_default_supported_precision

    from litgpt_inheritune.checkpoint import load_reference_config

    reference_name = load_reference_config(a.reference_dir).name
    precision = a.precision or get_default_supported_precision(training=True)
    initial = out_dir / INITIAL
    logger = choose_logger(a.logger_name, out_dir, name=f"pretrain-{reference_name}", resume=bool(resume),
                           log_interval=train.log_interval, log_args=asdict(a.log))
    with checks.text_cache_for(out_dir, a.num_nodes):
        # as LitGPT's pretrain.setup: build the Fabric and launch it; rank 0 then works, the others wait for it
        fabric = rundir.launch(a.devices, a.num_nodes, a.strategy, precision, loggers=[logger])
        with rundir.Claim(out_dir) as claim, rundir.one_line_peer_errors(fabric), fresh_compile_caches():
            return _train(fabric, claim, a, arguments, resume, precision)


def _train(fabric, claim, a: "_Args", arguments: dict, resume, precision: str) -> Path:
    """`litgpt inheritune` on a launched Fabric: rank 0 prepares the run, every rank trains it with LitGPT's main."""
    import litgpt.pretrain as pretrain
    from litgpt import Config, Tokenizer

    from litgpt_inheritune.checkpoint import (has_tokenizer, is_complete_checkpoint, newest_complete_checkpoint,
                                              read_best, recover_best, remove_save_debris, safe_saves)
    from litgpt_inheritune.child import build_child, plan_child
    from litgpt_inheritune.inherit import reference_ties_embeddings

    out_dir, train = Path(a.out_dir), a.train
    initial = out_dir / INITIAL

    def start() -> dict:
        """Global rank 0 alone: claim out_dir, decide what it holds, build the child, count the budget (rundir)."""
        claim.take()
        check_batches(train, fabric.world_size)
        removed = remove_save_debris(out_dir)  # a dead writer's: out_dir is claimed, no live one writes there
        if removed:
            print(f"Removed what an interrupted save left: {', '.join(str(p) for p in removed)}")
        finished = (out_dir / "final" / "lit_model.pth").is_file()
        started = initial.is_dir() or any(out_dir.glob("step-*/lit_model.pth"))
        decision = rundir.decide(out_dir, started, finished, resume, a.overwrite)
        t0 = time.perf_counter()
        plan = plan_child(a.reference_dir, a.n_layers, a.layers, a.parts, a.tokenizer_dir, a.select, a.analysis)
        check_tied_parts(plan, train.tie_embeddings)
        if decision == "resume" and not initial.is_dir():
            raise InherituneError(f"{str(out_dir)!r} has no {INITIAL}/ to resume from; pass --overwrite true to start again")
        if decision == "resume":
            child = Config.from_file(initial / "model_config.yaml")
            if child.n_layer != len(plan.layers):
                raise InherituneError(
                    f"{str(initial)!r} holds a {child.n_layer}-block child but you asked for {len(plan.layers)} "
                    "blocks; resume with the arguments of the original run"
                )
        elif not has_tokenizer(a.tokenizer_dir or a.reference_dir):
            raise InherituneError(f"{str(a.reference_dir)!r} has no tokenizer; pass --tokenizer_dir")
        checks.check_out_dir(out_dir, a.reference_dir, 0 if decision == "resume" else checks.child_bytes(plan))
        resume_from = None  # found before any expensive work: a resume by another world is refused at once
        if isinstance(resume, Path):
            if not is_complete_checkpoint(resume):
                raise InherituneError(f"--resume {str(resume)!r} is incomplete (cut short by a full disk or a kill); "
                                      "give an earlier step-*/lit_model.pth")
            resume_from = str(resume)
        elif decision == "resume":  # the newest complete checkpoint; LitGPT would take the newest, complete or not
            newest, skipped = newest_complete_checkpoint(out_dir)
            if skipped:
                print(f"warning: skipping incomplete checkpoint(s) {', '.join(str(p) for p in skipped)}; resuming "
                      f"from {str(newest or initial)!r}")
            resume_from = None if newest is None else str(newest)
        if resume_from is not None:
            print(f"Resuming from {resume_from}" + (" (--resume)" if isinstance(resume, Path) else
                                                    f" (the newest complete step checkpoint in {str(out_dir)!r})"))
        elif decision == "resume":
            print(f"Resuming {str(out_dir)!r} from {INITIAL}/: it holds no complete step checkpoint (the run stopped "
                  f"before its first save; --train.save_interval is {train.save_interval})")
        if resume_from is not None:  # the same world size as the run being resumed
            rundir.check_same_world(Path(resume_from).parent, fabric.world_size)
        max_seq_length = train.max_seq_length or plan.config.block_size
        check_seq_length(max_seq_length, plan.config.block_size)
        if train.max_tokens is not None:
            check_budget(train.max_tokens, train, max_seq_length, "--train.max_tokens")
        # prepared before out_dir is touched: bad data leaves no half-started run behind
        a.data.connect(tokenizer=Tokenizer(a.tokenizer_dir or a.reference_dir), batch_size=train.micro_batch_size,
                       max_seq_length=max_seq_length)
        checks.prepare_text_files(a.data)
        per_epoch = None
        if train.epochs is not None:  # counted before the child is written: bad data leaves out_dir untouched
            per_epoch = tokens_per_epoch(a.data, a.tokenizer_dir or a.reference_dir, train.micro_batch_size,
                                         max_seq_length)
            check_budget(int(train.epochs * per_epoch), train, max_seq_length,
                         f"--train.epochs {train.epochs} (of {per_epoch:,} tokens)")
        if decision == "overwrite":
            rundir.remove_run(out_dir)
        if decision != "resume":
            build_child(plan, initial, seed=a.seed, overwrite=False)
        print(describe_child(plan, time.perf_counter() - t0))
        # Dynamic batch loading aims each domain at the reference's own loss there: measured below by every process
        # (a resumed run reads them back from its checkpoint instead)
        measure = (isinstance(a.data, DomainMixture) and a.data.dynamic and a.data.reference_losses is None
                   and resume_from is None)
        tie = train.tie_embeddings
        if tie is None:  # the child keeps the reference's architecture: tied if the reference ties, inherited or not
            tie = reference_ties_embeddings(plan.state_dict)
        best = None
        if decision == "resume":  # a later evaluation replaces best/ only when it is lower than the recorded one
            recover_best(out_dir)
            best = read_best(out_dir)
        return {"decision": decision, "per_epoch": per_epoch, "resume_from": resume_from, "tie": bool(tie),
                "measure_reference": measure, "max_seq_length": max_seq_length, "best": best,
                "text": checks.prepared_text(a.data)}

    prepared = rundir.agree(fabric, start, what="preparing the run")
    child = Config.from_file(initial / "model_config.yaml")
    if fabric.global_rank != 0:  # rank 0 prepared the text: every rank reads that one preparation
        checks.use_prepared_text(a.data, prepared["text"], fabric.global_rank)
    if prepared["measure_reference"]:  # on every process's own validation windows, in the run's precision
        a.data.connect(Tokenizer(initial), batch_size=train.micro_batch_size, max_seq_length=prepared["max_seq_length"])
        a.data.reference_losses = measure_reference_losses(fabric, a.reference_dir, a.data, a.eval.max_iters,
                                                           prepared["max_seq_length"])
        fabric.print("Reference losses per domain: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in a.data.reference_losses.items()))
    resume_from = None if prepared["resume_from"] is None else Path(prepared["resume_from"])
    max_tokens = train.max_tokens
    if train.epochs is not None:
        max_tokens = train.epochs * prepared["per_epoch"]
        fabric.print(f"{train.epochs} epochs of {prepared['per_epoch']:,} tokens: --train.max_tokens {max_tokens:,}")
    pretrain_train = plain_train_args(replace(train, epochs=None, max_tokens=max_tokens, tie_embeddings=prepared["tie"]))
    keep_best = bool(getattr(train, "keep_best", True))

    # what this run is: the devices per node it really has (a resume checks it), not "auto"
    hyperparameters = hyperparameters_dict({**arguments, "devices": fabric.world_size // a.num_nodes})
    from_initial = resume_from is None  # resuming before the first checkpoint restarts from initial
    with ExitStack() as stack:
        stack.enter_context(
            patches.patched(
                "pretrain.save_hyperparameters", lambda _fn, directory, *rest: write_hyperparameters(hyperparameters, directory)
            )
        )
        if not a.compile:
            stack.enter_context(patches.patched("torch.compile", lambda model, *args, **kwargs: model))
        stack.enter_context(dbl_hooks(pretrain, out_dir))  # per-domain validation of a DomainMixture
        stack.enter_context(evaluation_hooks(pretrain, out_dir, keep_best, prepared["best"], initial,
                                             pretrain_train.micro_batch_size, hyperparameters))
        stack.enter_context(speed.apply(a.speed_options))
        stack.enter_context(safe_saves(pretrain))
        stack.enter_context(seeded_train_order(a.data, a.seed))
        stack.enter_context(quiet_litgpt_output(fabric, a.data))
        fabric.print(summary(child, pretrain_train, fabric.world_size, precision, resume_from, out_dir))
        if a.logger_name in ("tensorboard", "wandb", "mlflow"):  # as LitGPT's pretrain.setup
            fabric.logger.log_hyperparams(hyperparameters)
        pretrain.main(
            fabric=fabric,
            devices=fabric.world_size // a.num_nodes,
            num_nodes=a.num_nodes,
            seed=a.seed,
            initial_checkpoint_dir=initial if from_initial else None,
            resume=False if from_initial else resume_from,
            config=child,
            data=a.data,
            out_dir=out_dir,
            tokenizer_dir=initial,  # the child's own config.json and tokenizer travel into every checkpoint
            tokenizer=Tokenizer(initial),
            train=pretrain_train,
            eval=a.eval,
            optimizer=copy.deepcopy(a.optimizer),  # LitGPT adds keys to the dict it is given
        )
    return out_dir / "final"


@contextmanager
def fresh_compile_caches():
    """After a run, forget what torch.compile traced and free what the run held. grow and arms train several models in
    one process: dynamo would count each new model's graphs (train and no-grad, per depth) against its per-function
    recompile limit (8) and silently run the later rounds eager."""
    import gc

    import torch

    try:
        yield
    finally:
        torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def describe_child(plan, seconds: float) -> str:
    """What the child got, in words (a random-init arm inherits nothing)."""
    from litgpt_inheritune.inherit import PARTS

    where = f"{len(plan.layers)}-block child of {plan.config.name} ({plan.config.n_layer} blocks)"
    if not plan.parts:
        return f"Random init (LitGPT's pretraining init) of a {where}: nothing inherited ({seconds:.1f} s)"
    what = "" if set(plan.parts) == set(PARTS) else f" ({', '.join(plan.parts)}; the rest LitGPT's pretraining init)"
    return f"Inherited blocks {plan.layers}{what} into a {where} in {seconds:.1f} s"


@contextmanager
def quiet_litgpt_output(fabric, data: DataModule):
    """While `litgpt pretrain`'s main runs, drops what misleads here: LitGPT's "Preprocessed ... data found" warning
    on text this package has just prepared whole (``checks.prepare_text_files``), its FLOP count ("Measured TFLOPs",
    a count per step, not a speed) and its final Performance block, whose tokens/s divides by a clock reading instead
    of the training time; prints the right figure instead. The instance's ``print`` and ``prepare_data`` are wrapped
    (LitGPT is not patched)."""
    import contextlib
    import io

    from litgpt.data import TextFiles

    plain_print = fabric.print
    seen: dict[str, float] = {}

    def filtered(*args, **kwargs):
        text = " ".join(str(a) for a in args)
        if text.startswith("| - Total tokens"):
            seen["tokens"] = float(text.split(":")[1].replace(",", ""))
        elif text.startswith("| - Training Time"):
            seen["seconds"] = float(text.split(":")[1].split()[0])
        if text.startswith(("Measured TFLOPs", "Verifying settings", "| ", "-" * 40)):
            return
        plain_print(*args, **kwargs)

    fabric.print = filtered
    if isinstance(data, TextFiles) and checks.prepared_text(data) is not None:
        plain_prepare = data.prepare_data

        def prepare_data():
            with contextlib.redirect_stdout(io.StringIO()):
                return plain_prepare()

        data.prepare_data = prepare_data
    try:
        yield
    finally:
        del fabric.print
        if "prepare_data" in vars(data):
            del data.prepare_data
    if seen.get("seconds"):
        plain_print(f"Trained {seen['tokens']:,.0f} tokens in {seen['seconds']:.1f} s "
                    f"({seen['tokens'] / seen['seconds']:,.0f} tokens/s)")


def check_batches(train: TrainArgs, world_size: int) -> None:
    """LitGPT splits the global batch into ``world_size`` processes x micro-batches x accumulation steps: refused in one
    line before any work when it does not divide (LitGPT asserts per rank, or silently trains a smaller batch)."""
    per_round = world_size * train.micro_batch_size
    if train.global_batch_size % per_round:
        low = max(per_round, train.global_batch_size // per_round * per_round)
        raise InherituneError(
            f"--train.global_batch_size {train.global_batch_size} is not a multiple of {world_size} process"
            f"{'es' if world_size > 1 else ''} x --train.micro_batch_size {train.micro_batch_size} = {per_round}; give "
            f"{low}" + (f" or {low + per_round}" if low < train.global_batch_size else "") + ", or change the micro-batch")


def check_seq_length(max_seq_length: int, block_size: int) -> None:
    """LitGPT's GPT raises a traceback for sequences longer than the model's block size: one line instead."""
    if max_seq_length > block_size:
        raise InherituneError(f"--train.max_seq_length {max_seq_length} is longer than the reference's block_size "
                              f"{block_size}; pass --train.max_seq_length {block_size} or less")


def check_budget(tokens: int, train: TrainArgs, max_seq_length: int, what: str) -> None:
    """A budget of at least one optimizer step (global batch x sequence length), else nothing would train and an
    untrained child would be called finished."""
    step = train.global_batch_size * max_seq_length
    if tokens < step:
        raise InherituneError(
            f"{what} gives {tokens:,} tokens, less than one optimizer step ({train.global_batch_size} sequences x "
            f"{max_seq_length} tokens = {step:,}); give --train.max_tokens {step:,} or more")


def check_tied_parts(plan, tie_embeddings: bool | None) -> None:
    """A reference whose LM head is its token embedding has one matrix for both: a tied child cannot inherit one of
    them and not the other (LitGPT's tie would silently give the head the inherited embedding, or lose the inherited
    head to a fresh embedding). One-line error before any work; an untied child inherits exactly what was asked."""
    from litgpt_inheritune.inherit import reference_ties_embeddings

    one = {"embedding", "head"} & set(plan.parts)
    if len(one) != 1 or tie_embeddings is False or not reference_ties_embeddings(plan.state_dict):
        return
    (given,) = one
    missing = "head" if given == "embedding" else "embedding"
    raise InherituneError(
        f"{plan.config.name} ties its LM head to its token embedding (one matrix), so a tied child cannot inherit the "
        f"{given} without the {missing}: add {missing!r} to --parts, drop {given!r}, or pass --train.tie_embeddings "
        f"false for an untied child that inherits only the {given}"
    )


@contextmanager
def seeded_train_order(data: DataModule, seed: int):
    """The run's seed decides the order of a litdata training stream (TextFiles, LitData) and a DomainMixture's draws,
    as it decides the init of what is not inherited: without it every seed of an inherited child would train on the
    same sequence of batches. Wraps this data module's ``train_dataloader`` (the instance's, not the class's) while the
    run lasts; a DomainMixture reads the seed itself (``DomainMixture.draw_seed``)."""
    from litdata import StreamingDataset

    if isinstance(data, DomainMixture):  # its draws and shuffles follow the run's seed unless it was given its own
        data.run_seed = seed
        try:
            yield
        finally:
            del data.run_seed
        return
    build = data.train_dataloader

    def train_dataloader():
        loader = build()
        if isinstance(getattr(loader, "dataset", None), StreamingDataset):
            patches.set_shuffle_seed(loader.dataset, seed)
        return loader

    data.train_dataloader = train_dataloader
    try:
        yield
    finally:
        del data.train_dataloader  # the class's method again


@contextmanager
def evaluation_hooks(pretrain_module, out_dir: Path, keep_best: bool, recorded: dict | None, tokenizer_dir: Path,
                     micro_batch_size: int, hyperparameters: dict):
    """Wraps `litgpt pretrain`'s ``validate`` (and ``fit``, to see the training state):

    - every evaluation, the sanity check and the final one measure the same fixed, unshuffled batches of the
      validation set (``validation.FixedSet``: the first ``eval.max_iters`` per process, read once), averaged over
      processes. A ``DomainMixture`` keeps its own per-domain validation (``dbl_hooks``).
    - with ``keep_best``, an evaluation lower than every earlier one (and than ``recorded``, the best of the run
      being resumed) writes the model to ``out_dir/best`` (``checkpoint.save_best``) with best.json
      ``{"step", "iter", "tokens", "val_loss"}``. Rank 0's decision is broadcast, so every process joins the save.
    """
    from litgpt_inheritune.checkpoint import BEST, save_best
    from litgpt_inheritune.data.mixture import unwrap
    from litgpt_inheritune.validation import FixedSet, fixed_loss

    plain_validate, plain_fit = pretrain_module.validate, pretrain_module.fit
    seen: dict[str, Any] = {}
    fixed: dict[int, FixedSet] = {}
    best = {"val_loss": None if recorded is None else float(recorded["val_loss"])}
    best_dir = Path(out_dir) / BEST

    def fit(*args, **kwargs):
        seen["state"] = kwargs["state"] if "state" in kwargs else args[2]
        return plain_fit(*args, **kwargs)

    def validate(fabric, model, val_dataloader, max_iters, verbose=True):
        loader = unwrap(val_dataloader)
        if hasattr(loader, "mixture_module"):
            loss = plain_validate(fabric, model, val_dataloader, max_iters=max_iters, verbose=verbose)
        else:
            if id(loader) not in fixed:
                fixed[id(loader)] = FixedSet(loader, fabric.global_rank, fabric.world_size)
            loss = fixed_loss(fabric, model, fixed[id(loader)], max_iters, verbose, plain_validate)
        if verbose and keep_best and "state" in seen:
            _keep_if_best(fabric, model, seen["state"], float(loss))
        return loss

    def _keep_if_best(fabric, model, state: dict, value: float) -> None:
        lower = best["val_loss"] is None or value < best["val_loss"]
        if fabric.world_size > 1:
            lower = fabric.broadcast(lower, src=0)
        if not lower:
            return
        iter_num = int(state["iter_num"])
        record = {"step": int(state["step_count"]), "iter": iter_num,
                  "tokens": iter_num * micro_batch_size * model.max_seq_length * fabric.world_size,
                  "val_loss": value}
        save_best(fabric, model, best_dir, record, tokenizer_dir,
                  lambda directory: write_hyperparameters(hyperparameters, directory))
        best["val_loss"] = value
        fabric.print(f"new best val loss {value:.4f} at step {record['step']}: {best_dir}")

    with patches.patched("pretrain.validate", validate), patches.patched("pretrain.fit", fit):
        yield


def summary(child, train: TrainArgs, world_size: int, precision: str, resume_from, out_dir: Path) -> str:
    """One line at the start of training (LitGPT's setup prints every argument, about 100 lines)."""
    return (f"Training the {child.name} child, {child.n_layer} blocks, {train.max_tokens:,} tokens, "
            f"{world_size} process{'es' if world_size > 1 else ''}, precision {precision}"
            + (f", resuming from {resume_from}" if resume_from else "")
            + f"; every argument: {out_dir}/final/hyperparameters.yaml (and in each step-* checkpoint)")


class _Args:
    def __init__(self, arguments: dict) -> None:
        # arguments added later have defaults for direct callers of run
        self.select, self.analysis, self.speed, self.strategy = "first", None, "none", "auto"
        self.__dict__.update(arguments)
        self.reference_dir = Path(self.reference_dir)
        if self.tokenizer_dir is not None:
            self.tokenizer_dir = Path(self.tokenizer_dir)


def tokens_per_epoch(data: DataModule, tokenizer_dir: Path, micro_batch_size: int, max_seq_length: int) -> int:
    """Tokens one pass over the data module's train set counts in `litgpt pretrain`'s budget."""
    from litgpt import Tokenizer

    data.connect(tokenizer=Tokenizer(tokenizer_dir), batch_size=micro_batch_size, max_seq_length=max_seq_length)
    checks.prepare_data(data)
    data.setup()
    loader = data.train_dataloader()
    try:
        samples = len(loader.dataset)
    except TypeError:
        raise InherituneError(
            f"{type(data).__name__}'s train set has no length, so --train.epochs cannot be converted; "
            "give --train.max_tokens instead"
        ) from None
    if samples == 0:
        raise InherituneError(f"{type(data).__name__}'s train set is empty; check the data path")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # litdata counts this process's share once ranks exist
        samples *= dist.get_world_size()
    return samples * max_seq_length


def _plain(value: Any) -> Any:
    """A value as YAML-ready data in the form the CLI reads back (data modules as class_path/init_args)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, DataModule) and is_dataclass(value):
        init_args = {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.init}
        return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}", "init_args": init_args}
    if is_dataclass(value):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def hyperparameters_dict(arguments: dict) -> dict:
    return {k: _plain(v) for k, v in arguments.items()}


def write_hyperparameters(hyperparameters: dict, directory: Path) -> None:
    """Writes ``hyperparameters.yaml``: the inheritune arguments, readable with ``litgpt inheritune --config``."""
    import yaml

    directory = Path(directory)
    tmp = directory / ".hyperparameters.yaml.tmp"
    tmp.write_text(yaml.safe_dump(hyperparameters, sort_keys=False))
    os.replace(tmp, directory / "hyperparameters.yaml")

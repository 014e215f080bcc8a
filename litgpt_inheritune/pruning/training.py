"""Sheared-LLaMA's targeted structured pruning on LitGPT's model and Fabric (the body of `litgpt inheritune_prune`).

Learns hard-concrete masks (``litgpt_inheritune.masks``) together with the model's weights, under a Lagrangian
constraint that drives each mask type's expected sparsity to the target's (warmed up linearly; the multipliers
trained by gradient ascent), then extracts exactly the target shape into a LitGPT checkpoint (``out_dir/final``)
that `litgpt inheritune out_dir/final --n_layers <depth>` or `litgpt pretrain` trains further.

This is not LitGPT's pretraining loop: the objective (LM loss + Lagrangian), the three parameter groups (weights,
masks, multipliers with ``maximize``) and the extraction are pruning's own. LitGPT supplies the model, the data
modules, the loss (``chunked_cross_entropy``), validation (``litgpt.pretrain.validate``), the learning-rate
schedule (``litgpt.pretrain.get_lr``) and Fabric (FSDP over several devices).

Memory, as LitGPT's commands: the precision defaults to LitGPT's (``get_default_supported_precision``); the model
is built without initialisation in that precision (``fabric.init_module(empty_init=True)``: on the meta device under
``fsdp2``, sharded, then filled by ``fabric.load_raw``) and filled from the memory-mapped reference, so no process
holds a second copy; ``speed="checkpoint"`` recomputes every block in the backward pass (``speed.checkpoint_blocks``).
A ``DomainMixture``'s train loader (its domain weights, dynamic batch loading's history and every domain's place) is
saved with the pruning state, so a resumed run continues with the weights it had reached.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from litgpt.args import EvalArgs, TrainArgs
from litgpt.data import DataModule

from litgpt_inheritune.errors import InherituneError, disk_error

STATE_FILE = "prune_state.pth"  # masks, multipliers, weights, optimizer and step of the latest save
METRICS_FILE = "metrics.jsonl"
FINAL = "final"


def prune(
    reference_dir: Path,
    target: str | dict,
    data: DataModule | None,
    out_dir: Path,
    steps: int,
    train: TrainArgs,
    eval: EvalArgs,
    lagrangian_warmup_steps: int | None = None,
    lr: float = 1e-4,
    mask_lr: float = 1.0,
    lambda_lr: float = 1.0,
    weight_decay: float = 0.0,
    precision: str | None = None,
    speed: str = "none",
    devices: int | str = 1,
    num_nodes: int = 1,
    seed: int = 42,
    resume: bool | Literal["auto"] = "auto",
    overwrite: bool = False,
    strategy: Literal["auto", "ddp", "fsdp", "fsdp2"] = "auto",
) -> Path:
    """The body of the command (``commands``), raising ``InherituneError`` on bad input; returns the extracted checkpoint dir."""
    import lightning as L
    import torch
    from litgpt import GPT, Tokenizer
    from lightning.fabric.strategies import DDPStrategy, FSDPStrategy
    from lightning.fabric.strategies import ModelParallelStrategy
    from litgpt.pretrain import get_lr, validate
    from litgpt.utils import CycleIterator, chunked_cross_entropy, get_default_supported_precision

    from litgpt_inheritune import checks, rundir
    from litgpt_inheritune import speed as speeds
    from litgpt_inheritune import strategy as strategies
    from litgpt_inheritune.checkpoint import (atomic_dir, check_weights_match_config, has_tokenizer,
                                              load_reference_config, load_state_dict_lazily, staged_in,
                                              write_checkpoint, write_json)
    from litgpt_inheritune.data.mixture import DomainMixture, _domain_losses, domain_mean, unwrap, weights_on_every_rank
    from litgpt_inheritune.inherit import reference_ties_embeddings
    from litgpt_inheritune.child import INHERITANCE_FILE
    from litgpt_inheritune.pruning.masks import PrunableGPT, PruningMasks, check_prunable, extraction
    from litgpt_inheritune.pruning.shapes import prune_state_dict, shape_record, target_sizes

    reference_dir, out_dir = Path(reference_dir), Path(out_dir)
    if data is None:
        raise InherituneError("--data is required, e.g. --data TextFiles --data.train_data_path path/to/txt_dir")
    if target is None:
        raise InherituneError("--target is required: a LitGPT model name or sizes such as '{n_embd: 448, n_head: 6}'")
    if not isinstance(steps, int) or steps < 1:
        raise InherituneError(f"--steps must be a positive number of optimizer steps, got {steps}")
    if train.max_norm is None:
        raise InherituneError("--train.max_norm is required, e.g. --train.max_norm 1.0")
    options = speeds.parse(speed)
    if "fused_ce" in options:
        raise InherituneError("--speed fused_ce is for `litgpt inheritune`'s loop, not pruning's (it needs the masked "
                              "logits); choose checkpoint and/or cudnn_attention")
    precision = precision or get_default_supported_precision(training=True)  # as `litgpt pretrain`
    if isinstance(data, DomainMixture):
        data.check()
    checks.check_data(data)
    checks.cap_workers(data)
    checks.quiet_known_warnings()
    config = load_reference_config(reference_dir)
    check_prunable(config)
    sizes = target_sizes(config, target)
    seq = train.max_seq_length or config.block_size
    from litgpt_inheritune.training import check_seq_length

    check_seq_length(seq, config.block_size)
    if not has_tokenizer(reference_dir):
        raise InherituneError(f"{str(reference_dir)!r} has no tokenizer; the data is encoded with it")
    warmup = round(0.2 * steps) if lagrangian_warmup_steps is None else lagrangian_warmup_steps
    state_path = out_dir / STATE_FILE
    settings = {"reference": str(reference_dir), "target": sizes, "steps": steps, "lagrangian_warmup_steps": warmup,
                "lr": lr, "mask_lr": mask_lr, "lambda_lr": lambda_lr, "weight_decay": weight_decay, "seed": seed,
                "train": asdict(train), "data": type(data).__name__}
    settings = json.loads(json.dumps(settings, default=str))  # as prune.json holds it
    strategies.resolve(strategy, devices, num_nodes)  # a bad choice is refused before any work
    with checks.text_cache_for(out_dir, num_nodes):
        # launched first, as every training command; rank 0 then decides and prepares, the others wait for it
        fabric = rundir.launch(devices, num_nodes, strategy, precision)
        settings["world_size"] = fabric.world_size  # a resume needs as many processes (data order, accumulation)
        with rundir.Claim(out_dir) as claim, rundir.one_line_peer_errors(fabric), speeds.apply(options):
            def start() -> dict:
                """Global rank 0 alone: claim out_dir, decide what it holds (rundir's rules), check, then write the
                settings."""
                claim.take()
                from litgpt_inheritune.training import check_batches

                check_batches(train, fabric.world_size)
                finished = (out_dir / FINAL / "lit_model.pth").is_file()
                if finished and not overwrite:  # nothing left to resume
                    raise InherituneError(f"{str(out_dir)!r} holds a finished pruning run; pass --overwrite true or choose "
                                          "another --out_dir")
                decision = rundir.decide(out_dir, state_path.is_file(), finished, resume, overwrite, what="pruning run")
                if decision == "resume":
                    previous = json.loads((out_dir / "prune.json").read_text())
                    if previous.get("world_size", fabric.world_size) != fabric.world_size:
                        raise InherituneError(
                            f"{str(out_dir)!r} was pruned by {previous['world_size']} processes and this launch has "
                            f"{fabric.world_size}; resume with --devices x --num_nodes = {previous['world_size']} (each "
                            "process's place in the data and the accumulation depend on it), or pass --overwrite true"
                        )
                    if {k: v for k, v in previous.items() if k != "world_size"} != {k: v for k, v in settings.items()
                                                                                    if k != "world_size"}:
                        raise InherituneError(f"{str(out_dir)!r} was started with other settings (see prune.json); resume "
                                              "with those")
                    if isinstance(data, DomainMixture) and not saved_loader_state(state_path):
                        raise InherituneError(
                            f"{str(state_path)!r} was saved by an older version of this package, without the domain "
                            "mixture's state (weights, history, each domain's place); start the run again with "
                            "--overwrite true, or resume it with the version that started it"
                        )
                check_weights_match_config(config, load_state_dict_lazily(reference_dir / "lit_model.pth"),
                                           reference_dir / "lit_model.pth")
                checks.check_out_dir(out_dir, reference_dir)
                data.connect(tokenizer=Tokenizer(reference_dir), batch_size=train.micro_batch_size, max_seq_length=seq)
                checks.prepare_text_files(data)  # whole or not at all, before out_dir is touched
                if decision == "overwrite":
                    rundir.remove_run(out_dir)
                out_dir.mkdir(parents=True, exist_ok=True)
                write_json(out_dir / "prune.json", settings)
                return {"decision": decision, "text": checks.prepared_text(data)}

            prepared = rundir.agree(fabric, start, what="preparing the pruning run")
            resuming = prepared["decision"] == "resume"
            state_dict = load_state_dict_lazily(reference_dir / "lit_model.pth")
            fabric.seed_everything(seed)

            accumulate = train.gradient_accumulation_iters(fabric.world_size)
            data.connect(tokenizer=Tokenizer(reference_dir), batch_size=train.micro_batch_size, max_seq_length=seq)
            if fabric.global_rank != 0:  # rank 0 prepared the text: every rank reads that one preparation
                checks.use_prepared_text(data, prepared["text"], fabric.global_rank)
            if checks.prepared_text(data) is None:  # TextFiles: prepared whole by rank 0 above
                with fabric.rank_zero_first():
                    data.prepare_data()
            data.setup()
            train_loader, val_loader = fabric.setup_dataloaders(data.train_dataloader(), data.val_dataloader())

            # No initialisation, in the run's precision (LitGPT's way): on the meta device under fsdp2 (sharded, then
            # filled), otherwise filled here from the memory-mapped file. FSDP1 (GPUs only) builds whole tensors.
            sharded = isinstance(fabric.strategy, ModelParallelStrategy)
            with fabric.init_module(empty_init=not isinstance(fabric.strategy, FSDPStrategy)):
                gpt = GPT(config)
            if reference_ties_embeddings(state_dict):  # keep the reference's architecture: one shared matrix
                gpt.lm_head.weight = gpt.transformer.wte.weight
            if not sharded:
                gpt.load_state_dict(state_dict)
            del state_dict
            gpt.max_seq_length = seq
            model = fabric.setup(PrunableGPT(gpt, sizes))  # fsdp2: materialised, the masks back to their drawn values
            if sharded:
                fabric.load_raw(reference_dir / "lit_model.pth", model.module.gpt)  # memory-mapped; each rank its shard
            weights = [p for n, p in model.named_parameters() if ".masks." not in f".{n}"]
            gates = [p for n, p in model.named_parameters() if ".masks.gates." in f".{n}"]
            lambdas = [p for n, p in model.named_parameters() if ".masks.lambdas." in f".{n}"]
            optimizer = torch.optim.AdamW(
                [{"params": weights, "lr": lr, "weight_decay": weight_decay},
                 {"params": gates, "lr": mask_lr, "weight_decay": 0.0},
                 {"params": lambdas, "lr": lambda_lr, "weight_decay": 0.0, "maximize": True}],
                betas=(0.9, 0.95),
            )
            optimizer = fabric.setup_optimizers(optimizer)
            state = {"model": model, "optimizer": optimizer, "step": 0}
            mixture = isinstance(data, DomainMixture)
            if mixture:  # its weights, their history and each domain's place; restored, they continue where they were
                state["train_dataloader"] = train_loader
            if resuming:
                fabric.load(state_path, state)
                fabric.print(f"Resuming pruning at step {state['step']} from {state_path}")
            prunable = model.module if hasattr(model, "module") else model
            masks = prunable.masks
            # weights outside forward: under FSDP only this rank's shard of them

            def evaluate(step: int) -> dict:
                """Validation of the target-shaped model (deterministic masks); per domain for a ``DomainMixture``, whose
                weights then follow dynamic batch loading."""
                loader = unwrap(val_loader)
                if not hasattr(loader, "domain_loaders"):
                    return {"step": step, "val_loss": float(validate(fabric, model, val_loader, eval.max_iters, verbose=False))}
                losses = _domain_losses(fabric, model, loader, eval.max_iters, validate)
                weights = data.after_validation(losses, step)
                return {"step": step, "val_loss": domain_mean(losses), "domain_losses": losses, "domain_weights": weights,
                        "domain_weights_by_rank": weights_on_every_rank(fabric, weights)}

            def log(record: dict) -> None:
                if fabric.global_rank == 0:
                    with (out_dir / METRICS_FILE).open("a") as sink:
                        sink.write(json.dumps(record) + "\n")

            def save() -> None:
                """Saves under a temporary name in out_dir, staged there too (Lightning stages in $TMPDIR and moves, a copy
                across filesystems), then renames: a full disk leaves the previous state whole and says so in one line."""
                tmp = out_dir / f".{STATE_FILE}.tmp"
                try:
                    with staged_in(out_dir):
                        fabric.save(tmp, state)
                    if fabric.global_rank == 0:
                        os.replace(tmp, state_path)
                except OSError as exc:
                    tmp.unlink(missing_ok=True)
                    raise disk_error(exc, state_path) from None
                fabric.barrier()

            batches = CycleIterator(train_loader)
            for _ in range(0 if mixture else state["step"] * accumulate):  # the same batches as an uninterrupted run
                next(batches)
            model.train()
            t0 = time.perf_counter()
            lr_warmup = math.ceil(train.lr_warmup_fraction * steps) if train.lr_warmup_fraction else (train.lr_warmup_steps or 0)
            min_lr = train.min_lr if train.min_lr is not None else lr
            while state["step"] < steps:
                step = state["step"]
                optimizer.param_groups[0]["lr"] = get_lr(lr, step, lr_warmup, steps, min_lr)
                lm_loss = 0.0
                for micro in range(accumulate):
                    batch = next(batches)
                    input_ids, targets = batch[:, 0:seq].contiguous().long(), batch[:, 1:seq + 1].contiguous().long()
                    # mask samples seeded by (seed, rank, step, micro-batch): a resumed run draws what it would have drawn
                    prunable.generator = torch.Generator(fabric.device).manual_seed(
                        hash((seed, fabric.global_rank, step, micro)) % 2**63)
                    last = micro == accumulate - 1
                    with fabric.no_backward_sync(model, enabled=not last):
                        if last:  # the constraint is computed inside forward, where FSDP holds the masks unsharded
                            logits, constraint = model(input_ids, lagrangian=(step, warmup))
                            loss = chunked_cross_entropy(logits, targets)
                            fabric.backward(loss / accumulate + constraint)
                        else:
                            loss = chunked_cross_entropy(model(input_ids), targets)
                            fabric.backward(loss / accumulate)
                    lm_loss += float(loss.detach()) / accumulate
                stats = prunable.stats
                clip_weights(fabric, model, optimizer, weights, train.max_norm, sharded=isinstance(fabric.strategy, FSDPStrategy))
                optimizer.step()
                optimizer.zero_grad()
                masks.clamp_()
                state["step"] = step + 1
                record = {"step": step + 1, "loss": lm_loss, "lagrangian": float(constraint.detach()), "masks": stats,
                          "expected_kept": prunable.expected_kept, "lr": optimizer.param_groups[0]["lr"]}
                if (step + 1) % eval.interval == 0 or step + 1 == steps:
                    record.update(evaluate(step + 1))
                if (step + 1) % train.log_interval == 0 or "val_loss" in record:
                    fabric.print(
                        f"step {step + 1}/{steps} | loss {lm_loss:.3f} | lagrangian {record['lagrangian']:.4f} | "
                        + " ".join(f"{k} {v['expected_sparsity']:.3f}/{v['target_sparsity']:.3f}" for k, v in stats.items())
                        + (f" | val (target shape) {record['val_loss']:.3f}" if "val_loss" in record else "")
                        + f" | {time.perf_counter() - t0:.0f} s"
                    )
                log(record)
                if train.save_interval and (step + 1) % train.save_interval == 0 and step + 1 < steps:
                    save()
            save()
            if isinstance(fabric.strategy, DDPStrategy):  # every process holds the whole model: they must hold the same one
                digests = fabric.all_gather(torch.tensor([state_digest(prunable.state_dict())], device=fabric.device))
                digests = [int(d) for d in digests.flatten().tolist()]
                log({"step": steps, "rank_digests": digests})
                if len(set(digests)) > 1:
                    raise RuntimeError(f"the ranks' models diverged (digests {digests}); report this as a bug")

            # Training is over and saved: its model, gradients and optimizer states are let go before the extraction
            # reads the saved state back, so the run's peak memory is the training's, not both at once.
            state.clear()
            model = prunable = gpt = masks = optimizer = weights = gates = lambdas = None
            logits = loss = constraint = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

            # Extract exactly the target shape, with the surviving mask values folded into the weights, from the full
            # (consolidated) state just saved, so one path serves one device and FSDP alike.
            if fabric.global_rank == 0:
                saved = torch.load(state_path, mmap=True, map_location="cpu", weights_only=False)["model"]
                final_masks = PruningMasks(config, sizes)
                final_masks.load_state_dict({k[len("masks."):]: v for k, v in saved.items() if k.startswith("masks.")})
                keep, scales = extraction(final_masks, config)
                gpt_state = {k[len("gpt."):]: v for k, v in saved.items() if k.startswith("gpt.")}
                child, child_state = prune_state_dict(config, gpt_state, keep, scales)
                tied = torch.equal(gpt_state["lm_head.weight"], gpt_state["transformer.wte.weight"])
                record = shape_record(reference_dir, config, child, keep, sizes, tied, method="prune", steps=steps)
                with atomic_dir(out_dir / FINAL, overwrite=overwrite) as tmp:
                    write_checkpoint(tmp, child, child_state, reference_dir, keep.layers, widths=True)
                    (tmp / INHERITANCE_FILE).write_text(json.dumps(record) + "\n")
            fabric.barrier()
            return out_dir / FINAL


def saved_loader_state(state_path: Path) -> bool:
    """Whether a saved pruning state holds the training data loader's state (saved for a ``DomainMixture`` since the
    loader's place and weights are restored on resume). The file is memory-mapped: only its index is read."""
    import torch

    return "train_dataloader" in torch.load(state_path, mmap=True, map_location="cpu", weights_only=False)


def clip_weights(fabric, model, optimizer, weights: list, max_norm: float, sharded: bool) -> None:
    """Clips the gradient norm of the model's weights only (not the masks' log-alphas nor the multipliers), the
    same on one device, under DDP (whole gradients) and under FSDP (sharded: the other gradients are set aside,
    zeroed for FSDP's clipping over every parameter, then put back)."""
    import torch

    if not sharded:
        torch.nn.utils.clip_grad_norm_(weights, max_norm)
        return
    ids = {id(p) for p in weights}
    others = [p for p in model.parameters() if id(p) not in ids and p.grad is not None]
    kept = [p.grad.detach().clone() for p in others]
    for p in others:
        p.grad.detach().zero_()
    fabric.clip_gradients(model, optimizer, max_norm=max_norm)
    for p, grad in zip(others, kept):
        p.grad.detach().copy_(grad)


def state_digest(state_dict) -> int:
    """A 56-bit digest of a state dict's names, shapes and bytes (equal models, equal digests)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return int.from_bytes(h.digest()[:7], "big")

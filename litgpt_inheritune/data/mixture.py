"""A LitGPT data module that mixes several domains with weights, and Sheared-LLaMA's dynamic batch loading (DBL).

Layout read (what ``litgpt inheritune_data --split_by_domain true`` writes)::

    data_path/train/<domain>/index.json (+ chunks)     one litdata-optimized token stream per domain
    data_path/val/<domain>/index.json (+ chunks)

Training draws every sample's domain at random with the current weights (litdata's ``CombinedStreamingDataset``,
one seeded draw per sample), so the mixture has no fixed length: an epoch ends when its first domain runs out, and
then every domain starts a new shuffled pass. Validation measures a loss per domain (``eval.max_iters`` batches of
each); the loss LitGPT prints is their plain mean, so it does not drift as the weights move. With
``dynamic=True`` the weights follow ``litgpt_inheritune.data.dbl.dbl_update`` after every evaluation.

The weights live in shared memory, so DataLoader workers see an update at once (after the batches they had
already prefetched). They, the reference losses and the history of updates are part of the train dataloader's
state, which LitGPT saves in every checkpoint: a resumed run continues with the same weights, and each domain's
stream continues where it stopped instead of starting over (litdata alone restarts weighted mixtures).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from litgpt.data import DataModule

from litgpt_inheritune import patches
from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.data.dbl import dbl_update, normalize_weights

DBL_STATE = "inheritune_dbl"  # key of the mixture's state inside the dataloader's state dict
HISTORY_FILE = "domain_weights.jsonl"


def domain_dirs(split_dir: Path) -> dict[str, Path]:
    """``{domain: dir}`` for every litdata-optimized subdirectory (one holding index.json), in name order."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise InherituneError(
            f"{str(split_dir)!r} does not exist; write the mixture with `litgpt inheritune_data ... --split_by_domain true`"
        )
    found = {p.name: p for p in sorted(split_dir.iterdir()) if (p / "index.json").is_file()}
    if not found:
        raise InherituneError(f"{str(split_dir)!r} holds no domain dirs with an index.json (litdata-optimized)")
    return found


def domain_tokens(directory: Path) -> int:
    """Tokens in a litdata-optimized token stream, read from its index (no chunk is opened)."""
    index = json.loads((Path(directory) / "index.json").read_text())
    return sum(int(chunk.get("dim") or chunk.get("chunk_size") or 0) for chunk in index["chunks"])


class _LiveWeights:
    """A list-like view of the shared weight tensor: litdata's iterator reads it at every draw."""

    def __init__(self, shared) -> None:
        self.shared = shared

    def __iter__(self) -> Iterator[float]:
        return iter(self.shared.tolist())

    def __len__(self) -> int:
        return len(self.shared)

    def __getitem__(self, index: int) -> float:
        return float(self.shared[index])


def _weighted_mixture_class():
    from litdata.streaming import CombinedStreamingDataset

    class WeightedMixture(CombinedStreamingDataset):
        """litdata's weighted ``CombinedStreamingDataset`` with weights that can change while it is iterated."""

        def __init__(self, datasets: list, names: list[str], weights: list[float], seed: int) -> None:
            import torch

            super().__init__(datasets, seed=seed, weights=weights, iterate_over_all=False)
            self.names = list(names)
            self.shared = torch.tensor(self._weights, dtype=torch.float64).share_memory_()
            self.dbl: dict[str, Any] = {"history": [], "reference_losses": None, "last_update_iter": -1}

        def weights(self) -> dict[str, float]:
            return dict(zip(self.names, self.shared.tolist()))

        def set_weights(self, weights: dict[str, float]) -> None:
            import torch

            self.shared.copy_(torch.tensor([weights[name] for name in self.names], dtype=torch.float64))

        def get_len(self, num_workers: int, batch_size: int) -> int:
            # An epoch's expected size (the sum of the domains), so that `--train.epochs` has a meaning.
            return sum(d.get_len(num_workers, batch_size) for d in self._datasets)

        def __len__(self) -> int:
            return self.get_len(self.num_workers, self.batch_size if isinstance(self.batch_size, int) else 1)

        def __iter__(self):
            iterator = super().__iter__()
            patches.set_live_weights(iterator, _LiveWeights(self.shared))  # same seeded draws, odds follow DBL
            return iterator

        def state_dict(self, num_workers: int, batch_size: int, num_samples_yielded=None) -> dict[str, Any]:
            state = dict(super().state_dict(num_workers, batch_size, num_samples_yielded))
            state[DBL_STATE] = {"domains": self.names, "weights": self.shared.tolist(), **self.dbl}
            return state

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            if not state_dict:
                return
            state_dict = dict(state_dict)
            datasets = dict(state_dict["dataset"])
            saved = datasets.pop(DBL_STATE, None)
            state_dict["dataset"] = datasets
            if saved is not None:
                if saved["domains"] != self.names:
                    raise InherituneError(
                        f"the checkpoint's mixture has domains {saved['domains']}, the data has {self.names}; "
                        "resume with the same --data.data_path"
                    )
                self.set_weights(dict(zip(self.names, saved["weights"])))
                self.dbl = {k: v for k, v in saved.items() if k not in ("domains", "weights")}
            if datasets:
                super().load_state_dict(state_dict)

    return WeightedMixture


def _resuming_loader_class():
    from litdata.streaming import StreamingDataLoader

    class ResumingLoader(StreamingDataLoader):
        """litdata restores a weighted mixture's position only for unweighted ones; this one always does."""

        def load_state_dict(self, obj: dict[str, Any]) -> None:
            super().load_state_dict(obj)
            patches.continue_from_state(self)

    return ResumingLoader


@dataclass
class DomainMixture(DataModule):
    """Mixes one litdata token stream per domain with weights; optionally re-weights them with Sheared-LLaMA's
    dynamic batch loading after every evaluation.

    Use with ``litgpt inheritune --data litgpt_inheritune.data.mixture.DomainMixture --data.data_path DIR``.
    """

    data_path: Path = Path("data/mixture")
    """Holds ``train/<domain>/`` and ``val/<domain>/`` litdata dirs (``litgpt inheritune_data --split_by_domain true``)."""
    weights: dict[str, float] | None = None
    """Initial share of each domain in the training draws; default: in proportion to each domain's train tokens."""
    dynamic: bool = False
    """Update the weights after each evaluation with dynamic batch loading (needs reference losses)."""
    reference_losses: dict[str, float] | None = None
    """The per-domain loss to reach. Left empty with ``dynamic``, `litgpt inheritune` measures the reference model's."""
    smoothing: float = 1e-4
    """Share of the uniform mixture blended into each update (Sheared-LLaMA: 1e-4)."""
    clip_excess: bool = False
    """Clip each domain's excess loss at 0, as the paper's Algorithm 1 (default: unclipped, as its released code)."""
    seed: int | None = None
    """Seeds the per-sample domain draws and each domain's shuffle; default: the run's ``--seed`` (42 outside a run)."""
    num_workers: int = 4
    """DataLoader processes for training (validation loaders use the same number)."""

    batch_size: int = field(init=False, repr=False, default=1)
    seq_length: int = field(init=False, repr=False, default=2048)

    def __post_init__(self) -> None:
        super().__init__()
        self.data_path = Path(self.data_path)
        self._mixture = None  # checked by `check`, which `setup` and `litgpt inheritune` call before any work

    def check(self, prepared: bool = False) -> None:
        """One-line errors for weights or reference losses that do not fit the data's domains (reads indexes only).
        With ``prepared`` (a run about to start) the data must be there; else it may be prepared later."""
        if self.weights is not None:
            normalize_weights(self.weights)
        if not 0 <= self.smoothing < 1:
            raise InherituneError(f"--data.smoothing must be in [0, 1), got {self.smoothing}")
        if not self.data_path.is_dir():
            if prepared or self.data_path.exists():
                raise InherituneError(
                    f"--data.data_path {str(self.data_path)!r} is not a directory; give the dir holding train/<domain>/ "
                    "and val/<domain>/ (litgpt inheritune_data --split_by_domain true writes one)")
            return  # prepared later (e.g. on another machine); checked again in setup
        names = self.domains()
        for what, given in (("weights", self.weights), ("reference_losses", self.reference_losses)):
            unknown = sorted(set(given or ()) - set(names))
            if unknown:
                raise InherituneError(f"--data.{what} names unknown domain(s) {unknown}; the data has {names}")
        val_names = sorted(domain_dirs(self.data_path / "val"))
        if val_names != names:
            raise InherituneError(f"train/ has domains {names} but val/ has {val_names}; rebuild the mixture")
        if self.reference_losses is not None:
            missing = sorted(set(names) - set(self.reference_losses))
            if missing:
                raise InherituneError(f"--data.reference_losses lacks domain(s) {missing}; give one per domain")

    def domains(self) -> list[str]:
        return list(domain_dirs(self.data_path / "train"))

    def initial_weights(self) -> dict[str, float]:
        if self.weights is not None:
            return normalize_weights({name: self.weights.get(name, 0.0) for name in self.domains()})
        return normalize_weights({name: float(domain_tokens(d)) for name, d in domain_dirs(self.data_path / "train").items()})

    def connect(self, tokenizer=None, batch_size: int = 1, max_seq_length: int | None = None) -> None:
        self.batch_size = batch_size
        self.seq_length = max_seq_length + 1  # inputs and their next-token targets

    def setup(self, stage: str = "") -> None:
        self.check(prepared=True)

    def _dataset(self, directory: Path, shuffle: bool):
        from litdata.streaming import StreamingDataset, TokensLoader

        return StreamingDataset(
            input_dir=str(directory), item_loader=TokensLoader(block_size=self.seq_length), shuffle=shuffle,
            seed=self.draw_seed(),
        )

    def draw_seed(self) -> int:
        """The seed of the draws and shuffles: ``seed``, else the run's (``run_seed``, set by `litgpt inheritune`)."""
        return self.seed if self.seed is not None else getattr(self, "run_seed", 42)

    def train_dataloader(self):
        names = self.domains()
        weights = self.initial_weights()
        datasets = [self._dataset(d, shuffle=True) for d in domain_dirs(self.data_path / "train").values()]
        self._mixture = _weighted_mixture_class()(datasets, names, [weights[n] for n in names],
                                                          seed=self.draw_seed())
        self._mixture.dbl["reference_losses"] = self.reference_losses
        return _resuming_loader_class()(
            self._mixture, batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=True, drop_last=True
        )

    def val_dataloaders(self) -> dict:
        """One loader per domain, in order (no shuffle, nothing dropped)."""
        from litdata.streaming import StreamingDataLoader

        return {
            name: StreamingDataLoader(self._dataset(d, shuffle=False), batch_size=self.batch_size, num_workers=self.num_workers)
            for name, d in domain_dirs(self.data_path / "val").items()
        }

    def val_dataloader(self):
        from litdata.streaming import CombinedStreamingDataset, StreamingDataLoader

        class DomainValLoader(StreamingDataLoader):
            """All domains' validation data in one loader (what a plain loop sees), plus one loader per domain."""

        datasets = [self._dataset(d, shuffle=False) for d in domain_dirs(self.data_path / "val").values()]
        loader = DomainValLoader(CombinedStreamingDataset(datasets, seed=self.draw_seed(), iterate_over_all=True),
                                 batch_size=self.batch_size, num_workers=self.num_workers)
        loader.mixture_module = self
        loader.domain_loaders = self.val_dataloaders()
        return loader

    # --- dynamic batch loading -------------------------------------------------------------------------------

    def current_weights(self) -> dict[str, float]:
        return self._mixture.weights() if self._mixture is not None else self.initial_weights()

    def after_validation(self, losses: dict[str, float | None], iter_num: int) -> dict[str, float]:
        """Records the per-domain losses and, with ``dynamic``, moves the weights; returns the weights now in use."""
        mixture = self._mixture
        if mixture is None:
            return self.initial_weights()
        references = mixture.dbl.get("reference_losses") or self.reference_losses
        if self.dynamic and iter_num > mixture.dbl["last_update_iter"]:
            if references is None:
                raise InherituneError("--data.dynamic true needs --data.reference_losses (or litgpt inheritune to measure them)")
            mixture.set_weights(dbl_update(mixture.weights(), losses, references, smoothing=self.smoothing,
                                           clip_excess=self.clip_excess))
            mixture.dbl["last_update_iter"] = iter_num
        weights = mixture.weights()
        mixture.dbl["history"].append({"iter": iter_num, "losses": losses, "weights": weights})
        return weights


def unwrap(loader):
    """The loader inside Fabric's wrapper."""
    return getattr(loader, "_dataloader", loader)


def _domain_losses(fabric, model, val_loader, max_iters: int, plain_validate) -> dict[str, float | None]:
    """Each domain's mean loss over at most ``max_iters`` batches, averaged over processes; None for a domain
    that had no batch on any process (so the DBL update never sees NaN)."""
    import torch

    if not hasattr(val_loader, "_fabric_domain_loaders"):
        val_loader._fabric_domain_loaders = {
            name: fabric.setup_dataloaders(loader) for name, loader in val_loader.domain_loaders.items()
        }
    sums, counts = [], []
    for loader in val_loader._fabric_domain_loaders.values():
        try:
            loss = plain_validate(fabric, model, loader, max_iters=max_iters, verbose=False)
            sums.append(float(loss)), counts.append(1.0)
        except RuntimeError as exc:  # the plain loop stacks an empty list when a domain has no batch here
            if not patches.is_empty_stack(exc):
                raise
            model.train()
            sums.append(0.0), counts.append(0.0)
    totals = torch.tensor([sums, counts], dtype=torch.float64, device=fabric.device)
    totals = fabric.all_reduce(totals, reduce_op="sum") if fabric.world_size > 1 else totals
    return {
        name: (float(totals[0, i] / totals[1, i]) if totals[1, i] > 0 else None)
        for i, name in enumerate(val_loader.domain_loaders)
    }


def weights_on_every_rank(fabric, weights: dict[str, float]) -> list[list[float]]:
    """The domain weights each process now draws with, gathered from every rank; they must be one mixture (the
    losses behind them are reduced over ranks first), else the ranks would train on different data."""
    import torch

    values = torch.tensor([list(weights.values())], dtype=torch.float64, device=fabric.device)
    gathered = fabric.all_gather(values).reshape(-1, len(weights)) if fabric.world_size > 1 else values
    by_rank = gathered.cpu().tolist()
    if any(row != by_rank[0] for row in by_rank):
        raise RuntimeError(f"the ranks' domain weights diverged: {by_rank}; report this as a bug")
    return by_rank


def domain_mean(losses: dict[str, float | None]) -> float:
    """The plain mean of the domains that had validation batches (NaN if none had)."""
    known = [v for v in losses.values() if v is not None]
    return sum(known) / len(known) if known else math.nan


@contextmanager
def dbl_hooks(pretrain_module, out_dir: Path):
    """Patches `litgpt pretrain`'s ``validate`` (and wraps ``fit`` to see the step) so that a ``DomainMixture``'s
    validation is measured per domain, logged through LitGPT's logger and fed to the weight update. Other data
    modules go through the plain ``validate`` untouched."""
    import torch

    plain_validate, plain_fit = pretrain_module.validate, pretrain_module.fit
    seen: dict[str, Any] = {}

    def fit(*args, **kwargs):
        seen["state"] = kwargs["state"] if "state" in kwargs else args[2]
        return plain_fit(*args, **kwargs)

    def validate(fabric, model, val_dataloader, max_iters, verbose=True):
        loader = unwrap(val_dataloader)
        if not hasattr(loader, "mixture_module"):
            return plain_validate(fabric, model, val_dataloader, max_iters=max_iters, verbose=verbose)
        if verbose:
            fabric.print("Validating per domain ...")
        losses = _domain_losses(fabric, model, loader, max_iters, plain_validate)
        mean = torch.tensor(domain_mean(losses))
        if not verbose:  # the sanity check before training: measure, change nothing
            return mean
        state = seen.get("state") or {}
        iter_num = int(state.get("iter_num", 0))
        weights = loader.mixture_module.after_validation(losses, iter_num)
        by_rank = weights_on_every_rank(fabric, weights)
        metrics = {f"val_loss/{n}": v for n, v in losses.items() if v is not None}
        metrics.update({f"domain_weight/{n}": w for n, w in weights.items()})
        fabric.log_dict(metrics, step=max(iter_num - 1, 0))
        fabric.print("domain losses " + ", ".join(f"{n} {'-' if v is None else f'{v:.3f}'}" for n, v in losses.items())
                     + " | weights " + ", ".join(f"{n} {w:.3f}" for n, w in weights.items()))
        if fabric.global_rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            with (out_dir / HISTORY_FILE).open("a") as sink:
                sink.write(json.dumps({"iter": iter_num, "losses": losses, "weights": weights,
                                       "weights_by_rank": by_rank}) + "\n")
        return mean

    with patches.patched("pretrain.validate", validate), patches.patched("pretrain.fit", fit):
        yield


def measure_reference_losses(fabric, reference_dir: Path, data: DomainMixture, max_iters: int,
                             max_seq_length: int) -> dict[str, float]:
    """The reference model's loss per domain, measured as the child's will be: by every process of the run, each on
    the windows it validates the child on (its share of each domain's first batches, ``max_iters`` per process),
    reduced over processes, in the run's precision, with `litgpt pretrain`'s own ``validate``. Dynamic batch loading
    then compares the child with the reference on one set of windows, with no precision gap between them (the
    weights move by the difference, and an offset would compound in them).

    Each process holds the whole reference while it measures (as one process did before the child is set up) and
    frees it afterwards. Call on every process, with ``data`` connected."""
    import gc

    import litgpt.pretrain as pretrain
    import torch

    from litgpt_inheritune.distill import load_teacher

    # float32 weights, then the run's own conversion (bf16-true: bf16 weights; mixed: float32 weights under autocast)
    reference = fabric.strategy.precision.convert_module(load_teacher(reference_dir, fabric.device, dtype=torch.float32))
    reference.max_seq_length = max_seq_length
    model = _InPrecision(fabric, reference)
    loader = data.val_dataloader()
    try:
        losses = _domain_losses(fabric, model, loader, max_iters, pretrain.validate)
    finally:
        del model, reference, loader
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    empty = [name for name, loss in losses.items() if loss is None]
    if empty:
        raise InherituneError(f"domain {empty[0]!r} has no validation batch; give it more --val_tokens")
    return losses


class _InPrecision:
    """A model called as Fabric calls the model it trains: inputs converted, the forward in the precision's context
    (autocast for the mixed precisions), the output converted (float32 logits under bf16-mixed), by the run's own
    precision plugin. ``validate`` reads its ``max_seq_length`` and sets its mode."""

    def __init__(self, fabric, model) -> None:
        self.precision, self.model = fabric.strategy.precision, model
        self.max_seq_length = model.max_seq_length

    def __call__(self, idx):
        idx = self.precision.convert_input(idx)
        with self.precision.forward_context():
            return self.precision.convert_output(self.model(idx))

    def eval(self):
        self.model.eval()

    def train(self):
        pass  # the reference stays in eval mode

"""Validation loss of a LitGPT checkpoint with `litgpt pretrain`'s own loop, on one fixed set of token windows.

LitGPT's data modules shuffle their validation set (``TextFiles``: ``shuffle=True``) and its ``validate`` stops after
``eval.max_iters`` batches, so every evaluation would see a different window of it. Here the validation (or test)
set is the first ``max_iters * world_size`` batches of the *unshuffled* token stream, read once by index and reused:
every evaluation of a run, its final one and a separate pass by ``val_loss`` or ``test_loss`` see the same windows.
Several processes split those batches round robin (process r gets batches r, r + W, ...), and the loss is their
mean over processes, so it is the same number whatever the number of devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litgpt_inheritune.errors import InherituneError


def validation_model(checkpoint_dir: Path, max_seq_length: int, device: str = "auto"):
    """``(fabric, model)`` for ``litgpt.pretrain.validate``: the checkpoint's model on CUDA in bf16 when available
    (``device='auto'``), else on CPU in float32. Reads a plain or a training checkpoint."""
    import lightning as L
    import torch
    from litgpt import GPT, Config

    checkpoint_dir = Path(checkpoint_dir)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = "bf16-true" if device == "cuda" else "32-true"
    config = Config.from_file(checkpoint_dir / "model_config.yaml")
    fabric = L.Fabric(accelerator=device, devices=1, precision=precision, loggers=[])
    with fabric.init_module():
        model = GPT(config)
    model.max_seq_length = max_seq_length
    state = torch.load(checkpoint_dir / "lit_model.pth", mmap=True, weights_only=False, map_location="cpu")
    model.load_state_dict(state.get("model", state))
    return fabric, fabric.setup_module(model)


def unshuffled(dataset) -> Any | None:
    """A copy of a litdata token stream (``StreamingDataset`` with a ``TokensLoader``) that reads in stored order;
    None for any other dataset."""
    from litdata.streaming import StreamingDataset, TokensLoader

    if not isinstance(dataset, StreamingDataset) or not isinstance(dataset.item_loader, TokensLoader):
        return None
    source = dataset.input_dir.path or dataset.input_dir.url
    return StreamingDataset(input_dir=source, item_loader=TokensLoader(block_size=dataset.item_loader._block_size),
                            shuffle=False)


def fixed_batches(loader, batches: int, rank: int = 0, world_size: int = 1) -> list:
    """This process's share of the fixed set: the first ``batches * world_size`` batches of ``loader``'s data in
    stored order (batch size and windows as ``loader``'s), every ``world_size``-th one from ``rank`` on, as CPU
    tensors. A loader that is not a litdata token stream gives its first ``batches`` as it yields them (read once,
    they stay fixed too)."""
    import torch

    inner = getattr(loader, "_dataloader", loader)  # Fabric's wrapper
    batch_size = getattr(inner, "batch_size", None) or 1
    dataset = unshuffled(getattr(inner, "dataset", None))
    if dataset is None:  # Fabric gave such a loader a distributed sampler: it yields this process's share
        found = []
        for batch in inner:
            if len(found) >= batches:
                break
            found.append(batch.cpu() if hasattr(batch, "cpu") else batch)
        return found
    if dataset.cache is None:
        dataset[0]  # opens its chunk index
    windows = len(dataset.cache)  # in the whole set, not this process's share
    whole = windows // batch_size
    if not getattr(inner, "drop_last", True) and world_size == 1 and windows % batch_size:
        whole += 1  # the loader yields a last, shorter batch (a DomainMixture's validation)
    per_process = min(batches, whole // world_size)  # the same number on every process
    found = []
    for j in range(rank, per_process * world_size, world_size):
        found.append(torch.stack([dataset[i] for i in range(j * batch_size, min((j + 1) * batch_size, windows))]))
    return found


class FixedSet:
    """The fixed batches of one validation loader, read on first use and grown when more are asked for."""

    def __init__(self, loader, rank: int = 0, world_size: int = 1) -> None:
        self.loader, self.rank, self.world_size = loader, rank, world_size
        self.batches: list = []
        self.asked = 0

    def take(self, batches: int, device=None) -> list:
        if batches > self.asked:
            self.batches, self.asked = fixed_batches(self.loader, batches, self.rank, self.world_size), batches
        chosen = self.batches[:batches]
        return chosen if device is None else [b.to(device) for b in chosen]


def fixed_loss(fabric, model, fixed: FixedSet, max_iters: int, verbose: bool = False, validate=None):
    """``litgpt.pretrain.validate`` on the fixed set's first ``max_iters`` batches (per process), averaged over
    processes; a tensor, as LitGPT's."""
    if validate is None:
        from litgpt.pretrain import validate
    batches = fixed.take(max_iters, fabric.device)
    if not batches:
        raise InherituneError("the validation set holds less than one batch per process; give more validation text "
                              "or lower --train.micro_batch_size")
    loss = validate(fabric, model, batches, max_iters=max_iters, verbose=verbose)
    if fabric.world_size > 1:
        loss = fabric.all_reduce(loss, reduce_op="mean")
    return loss


def loader_loss(fabric, model, loader, max_iters: int) -> float:
    """Mean loss over the first ``max_iters`` batches of ``loader`` in stored order (``litgpt.pretrain.validate``)."""
    fabric.seed_everything(0)
    return float(fixed_loss(fabric, model, FixedSet(loader), max_iters))


def val_loss(checkpoint_dir: Path, data, max_seq_length: int, batch_size: int, max_iters: int, device: str = "auto") -> float:
    """The checkpoint's mean loss over the first ``max_iters`` batches of ``data``'s validation set, in stored
    order: the windows every evaluation of a `litgpt inheritune` run measures (with ``eval.max_iters`` times its
    number of processes)."""
    from litgpt import Tokenizer

    from litgpt_inheritune.checks import prepare_data

    fabric, model = validation_model(checkpoint_dir, max_seq_length, device)
    data.connect(tokenizer=Tokenizer(checkpoint_dir), batch_size=batch_size, max_seq_length=max_seq_length)
    prepare_data(data)
    data.setup()
    return loader_loss(fabric, model, data.val_dataloader(), max_iters)


def test_loss(checkpoint_dir: Path, test_dir: Path, tokenizer_dir: Path | None = None, max_seq_length: int = 2048,
              batch_size: int = 1, max_iters: int = 100, device: str = "auto") -> float:
    """The checkpoint's mean loss on a held-out test split, in the same fixed, unshuffled windows as validation.

    ``test_dir``: a directory of .txt files (e.g. ``demo.run.pydoc_test_dir``; read in name order and tokenized
    with ``tokenizer_dir``, default the checkpoint's, as ``TextFiles`` does) or a litdata token dir (the ``test/`` of
    `litgpt inheritune_data --test_tokens`). Uses the first ``max_iters`` batches of ``batch_size`` windows of
    ``max_seq_length`` tokens."""
    test_dir = Path(test_dir)
    if (test_dir / "index.json").is_file():
        from litdata.streaming import StreamingDataLoader, StreamingDataset, TokensLoader

        dataset = StreamingDataset(input_dir=str(test_dir), item_loader=TokensLoader(block_size=max_seq_length + 1))
        fabric, model = validation_model(checkpoint_dir, max_seq_length, device)
        return loader_loss(fabric, model, StreamingDataLoader(dataset, batch_size=batch_size, num_workers=0), max_iters)
    files = sorted(test_dir.glob("*.txt")) if test_dir.is_dir() else []
    if not files:
        raise InherituneError(f"{str(test_dir)!r} holds neither .txt files nor a litdata index.json; give the test "
                              "split's directory")
    import torch
    from litgpt import Tokenizer

    windows = text_windows(files, Tokenizer(tokenizer_dir or checkpoint_dir), max_seq_length + 1,
                           max_iters * batch_size)
    fabric, model = validation_model(checkpoint_dir, max_seq_length, device)
    loader = torch.utils.data.DataLoader(windows, batch_size=batch_size, shuffle=False, drop_last=True)
    return loader_loss(fabric, model, loader, max_iters)


def text_windows(files: list[Path], tokenizer, block_size: int, windows: int):
    """The first ``windows`` windows of ``block_size`` tokens of the files' texts, in the given order, each text
    encoded as ``TextFiles`` does (stripped, with BOS) and the token streams joined: a ``(windows, block_size)``
    tensor (fewer rows when the text runs out)."""
    import torch

    parts, total = [], 0
    for path in files:
        if total >= windows * block_size:
            break
        ids = tokenizer.encode(Path(path).read_text(encoding="utf-8").strip(), bos=True, eos=False)
        parts.append(ids.to(torch.int64))
        total += len(ids)
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    rows = min(windows, len(stream) // block_size)
    return stream[: rows * block_size].view(rows, block_size)

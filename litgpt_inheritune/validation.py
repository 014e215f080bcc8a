"""Validation loss of a LitGPT checkpoint on a data module's validation set, with `litgpt pretrain`'s own loop."""

from __future__ import annotations

from pathlib import Path


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


def loader_loss(fabric, model, loader, max_iters: int) -> float:
    """Mean loss over the first ``max_iters`` batches of ``loader`` (``litgpt.pretrain.validate``)."""
    from litgpt.pretrain import validate

    fabric.seed_everything(0)
    return float(validate(fabric, model, fabric.setup_dataloaders(loader), max_iters=max_iters, verbose=False))


def val_loss(checkpoint_dir: Path, data, max_seq_length: int, batch_size: int, max_iters: int, device: str = "auto") -> float:
    """The checkpoint's mean loss over the first ``max_iters`` batches of ``data``'s validation set."""
    from litgpt import Tokenizer

    fabric, model = validation_model(checkpoint_dir, max_seq_length, device)
    from litgpt_inheritune.checks import prepare_text_files

    data.connect(tokenizer=Tokenizer(checkpoint_dir), batch_size=batch_size, max_seq_length=max_seq_length)
    prepare_text_files(data)
    data.prepare_data()
    data.setup()
    return loader_loss(fabric, model, data.val_dataloader(), max_iters)

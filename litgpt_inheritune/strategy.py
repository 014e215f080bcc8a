"""``--strategy auto|ddp|fsdp`` for the training commands.

LitGPT's ``pretrain`` builds an ``FSDPStrategy`` for every run on more than one device. ``ddp`` replaces it with
Lightning's ``DDPStrategy`` (every process holds the whole child: faster when it fits, and the only multi-process
strategy on CPU, where Lightning refuses FSDP); ``fsdp`` keeps LitGPT's; ``auto`` keeps LitGPT's choice on GPUs and
takes DDP on CPUs. The patch of LitGPT is ``use_strategy`` and nothing else.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

from litgpt_inheritune.errors import InherituneError

Strategy = Literal["auto", "ddp", "fsdp"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve(strategy: str, devices: int | str, num_nodes: int) -> Literal["single", "ddp", "fsdp"]:
    """The strategy a run will use, checked before any work."""
    if strategy not in ("auto", "ddp", "fsdp"):
        raise InherituneError(f"--strategy must be auto, ddp or fsdp, got {strategy!r}")
    if strategy == "fsdp" and not _cuda():
        raise InherituneError("--strategy fsdp needs GPUs (Lightning runs FSDP on CUDA only); use --strategy ddp on CPUs")
    from litgpt.utils import parse_devices

    try:
        count = parse_devices(devices) * num_nodes
    except Exception as exc:  # LitGPT's parser rejects e.g. a device list string
        raise InherituneError(f"--devices {devices!r}: {exc}") from None
    if count <= 1:
        return "single"
    if strategy == "auto":
        return "fsdp" if _cuda() else "ddp"
    return strategy


class _DDPInsteadOfFSDP:
    """Stands in for ``FSDPStrategy`` inside ``litgpt.pretrain``: building it returns a ``DDPStrategy``. It is not
    a class of what it returns, so LitGPT's ``isinstance(fabric.strategy, FSDPStrategy)`` stays False and its
    weight initialisation takes the non-FSDP path."""

    def __new__(cls, *args, **kwargs):
        from lightning.fabric.strategies import DDPStrategy

        return DDPStrategy()


@contextmanager
def use_strategy(pretrain_module, resolved: str) -> Iterator[None]:
    """While open, LitGPT's ``pretrain`` builds the ``resolved`` strategy for a multi-device run."""
    if resolved != "ddp":
        yield
        return
    from litgpt_inheritune import patches

    with patches.patched("pretrain.FSDPStrategy", _DDPInsteadOfFSDP):
        yield


def fabric_strategy(resolved: str, wrap: set):
    """The strategy for a command that builds its own Fabric (``inheritune_prune``)."""
    if resolved == "single":
        return "auto"
    if resolved == "ddp":
        from lightning.fabric.strategies import DDPStrategy

        return DDPStrategy()
    from lightning.fabric.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy=wrap, state_dict_type="full", sharding_strategy="HYBRID_SHARD")

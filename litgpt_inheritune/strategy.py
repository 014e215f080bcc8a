"""``--strategy auto|ddp|fsdp`` for the training commands, which build their Fabric themselves (``rundir.launch``).

``fsdp`` is LitGPT's own choice for several devices (``FSDPStrategy`` wrapping every ``Block``, full state-dict
checkpoints, hybrid sharding), which Lightning runs on CUDA only; ``ddp`` is Lightning's ``DDPStrategy`` (every
process holds the whole child: faster when it fits, and the only multi-process strategy on CPUs); ``auto`` is FSDP
on GPUs and DDP on CPUs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

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
    from litgpt_inheritune.rundir import requested_devices

    count = requested_devices(devices) * num_nodes
    if count <= 1:
        return "single"
    if strategy == "auto":
        return "fsdp" if _cuda() else "ddp"
    return strategy


def fabric_strategy(resolved: str, timeout_s: float):
    """Lightning's strategy for a resolved choice; ``timeout_s`` is the process group's timeout."""
    if resolved == "single":
        return "auto"
    timeout = timedelta(seconds=timeout_s)
    if resolved == "ddp":
        from lightning.fabric.strategies import DDPStrategy

        return DDPStrategy(timeout=timeout)
    from lightning.fabric.strategies import FSDPStrategy
    from litgpt.model import Block

    return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full", sharding_strategy="HYBRID_SHARD",
                        timeout=timeout)

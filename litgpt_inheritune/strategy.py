"""``--strategy auto|ddp|fsdp|fsdp2`` for the training commands, which build their Fabric themselves
(``rundir.launch``).

- ``fsdp2``: torch's per-parameter sharding (``torch.distributed.fsdp.fully_shard``) driven by Lightning's
  ``ModelParallelStrategy``: every ``Block`` and then the root are fully sharded over the data-parallel mesh (no
  tensor parallelism), as LitGPT's own ``finetune/lora.py`` does for several devices. It runs on CPU (gloo) as on
  GPUs, so it is the sharded path tested here. Checkpoints stay LitGPT's single files with the full state dict
  (``save_distributed_checkpoint=False``: gathered to rank 0, as LitGPT's FSDP ``state_dict_type="full"``).
- ``fsdp``: LitGPT's own choice in ``pretrain`` (``FSDPStrategy`` wrapping every ``Block``, full state-dict
  checkpoints, hybrid sharding), which Lightning runs on CUDA only; kept for parity with ``litgpt pretrain``.
- ``ddp``: Lightning's ``DDPStrategy`` (every process holds the whole child: faster when it fits).
- ``auto``: ``fsdp2`` on several GPUs, ``ddp`` on CPUs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from litgpt_inheritune.errors import InherituneError

Strategy = Literal["auto", "ddp", "fsdp", "fsdp2"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve(strategy: str, devices: int | str, num_nodes: int) -> Literal["single", "ddp", "fsdp", "fsdp2"]:
    """The strategy a run will use, checked before any work."""
    if strategy not in ("auto", "ddp", "fsdp", "fsdp2"):
        raise InherituneError(f"--strategy must be auto, ddp, fsdp or fsdp2, got {strategy!r}")
    if strategy == "fsdp" and not _cuda():
        raise InherituneError("--strategy fsdp needs GPUs (Lightning runs FSDP1 on CUDA only); use --strategy fsdp2 "
                              "(sharded) or ddp on CPUs")
    from litgpt_inheritune.rundir import requested_devices

    count = requested_devices(devices) * num_nodes
    if count <= 1 and strategy not in ("fsdp", "fsdp2"):  # asked for by name, a sharded strategy runs on one too
        return "single"
    if strategy == "auto":
        return "fsdp2" if _cuda() else "ddp"
    return strategy


def shard_blocks_and_root(model, device_mesh):
    """``ModelParallelStrategy``'s ``parallelize_fn`` for ``fsdp2``: every LitGPT ``Block`` is a unit of its own
    (gathered for its forward and backward only), then the root holds the rest (embedding, final norm, head, and a
    pruning run's masks)."""
    from litgpt.model import Block
    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh["data_parallel"]
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def fabric_strategy(resolved: str, timeout_s: float, world_size: int = 1):
    """Lightning's strategy for a resolved choice; ``timeout_s`` is the process group's timeout."""
    if resolved == "single":
        return "auto"
    timeout = timedelta(seconds=timeout_s)
    if resolved == "ddp":
        from lightning.fabric.strategies import DDPStrategy

        return DDPStrategy(timeout=timeout)
    if resolved == "fsdp2":
        from lightning.fabric.strategies import ModelParallelStrategy

        return ModelParallelStrategy(parallelize_fn=shard_blocks_and_root, data_parallel_size=world_size,
                                     tensor_parallel_size=1,
                                     save_distributed_checkpoint=False, timeout=timeout)
    from lightning.fabric.strategies import FSDPStrategy
    from litgpt.model import Block

    return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full", sharding_strategy="HYBRID_SHARD",
                        timeout=timeout)

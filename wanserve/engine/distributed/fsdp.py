"""FSDP2 sharding of the diffusion transformer (DIT_FSDP) and the T5 encoder (T5_FSDP).

Each block is its own `fully_shard` unit, so a forward gathers one block's weights at a time and
frees them after it ran: the weights kept per device fall to about 1/N of the model. Modules are
sharded straight from the CPU: `fully_shard` moves one block at a time to the device and keeps
only this rank's shard there, so the whole model never sits on one device.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh


def _fully_shard():
    from torch.distributed.fsdp import fully_shard

    return fully_shard


def shard_transformer(expert: torch.nn.Module, mesh: DeviceMesh) -> None:
    """One FSDP unit per WanTransformerBlock, plus the root (embeddings, head) as the last one."""
    fully_shard = _fully_shard()
    for block in expert.blocks:  # type: ignore[attr-defined]
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(expert, mesh=mesh, reshard_after_forward=True)


def shard_text_encoder(text_encoder: torch.nn.Module, mesh: DeviceMesh) -> None:
    """One FSDP unit per UMT5 block, plus the root (the shared embedding and final norm)."""
    fully_shard = _fully_shard()
    for block in text_encoder.encoder.block:  # type: ignore[attr-defined]
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(text_encoder, mesh=mesh, reshard_after_forward=True)


def local_parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of `module`'s parameters held by this rank (its shards only, for sharded modules)."""
    total = 0
    for param in module.parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        total += local.numel() * local.element_size()
    return total

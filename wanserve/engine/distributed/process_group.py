"""Joining a group: the rank's device, the process group, the device mesh, all with timeouts."""

from __future__ import annotations

import datetime
import logging

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from wanserve.engine.devices import DeviceInfo
from wanserve.engine.distributed.layout import MESH_DIMS, GroupLayout

log = logging.getLogger("wanserve.distributed")

_assigned_device_index: int | None = None


def assign_device(index: int) -> None:
    """Set by a launcher in each rank process before `init_rank`: the device index of this rank."""
    global _assigned_device_index
    _assigned_device_index = index


def assigned_device_index() -> int | None:
    return _assigned_device_index


def bind_device(info: DeviceInfo, index: int) -> torch.device:
    """Make `index` this process's current device (NCCL/HCCL communicators are made on it)."""
    device = info.torch_device(index)
    if info.kind == "cuda":
        torch.cuda.set_device(index)
    elif info.kind == "npu":
        torch.npu.set_device(index)  # type: ignore[attr-defined]
    return device


def use_timeout_for_new_groups(timeout: datetime.timedelta) -> None:
    """Give every process group created from now on in this process the collective timeout.

    `init_process_group(timeout=...)` covers only the default group; device-mesh dimensions,
    diffusers' flattened context-parallel mesh and FSDP's groups are created later with torch's
    default (10-30 minutes). Rank processes belong to one group for life, so setting the default
    here is what makes a dead or stuck peer end the whole group within COLLECTIVE_TIMEOUT."""
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = timeout
    if hasattr(distributed_c10d, "default_pg_nccl_timeout"):
        distributed_c10d.default_pg_nccl_timeout = timeout


def join_process_group(info: DeviceInfo, device: torch.device, rank: int, world_size: int,
                       master_addr: str, master_port: int, timeout_seconds: float) -> None:
    timeout = datetime.timedelta(seconds=timeout_seconds)
    use_timeout_for_new_groups(timeout)
    host = f"[{master_addr}]" if ":" in master_addr else master_addr
    kwargs = {}
    if info.kind == "cuda":
        kwargs["device_id"] = device  # eager NCCL init; subgroups are then split cheaply
    dist.init_process_group(
        backend=info.dist_backend, init_method=f"tcp://{host}:{master_port}", rank=rank,
        world_size=world_size, timeout=timeout, **kwargs,
    )
    log.info("rank %d/%d joined the group at %s:%d (%s)", rank, world_size, master_addr, master_port,
             info.dist_backend)


def build_mesh(layout: GroupLayout) -> DeviceMesh:
    """The (cfg, ring, ulysses) mesh; rank = cfg * (ring * ulysses) + ring_rank * ulysses + ulysses_rank."""
    return init_device_mesh(layout.device_kind, layout.mesh_shape, mesh_dim_names=MESH_DIMS)


def leave_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

"""Worker groups: one model replica over several devices (one process per device, rank 0 leads).

`init_rank(settings, rank, world_size, master_addr, master_port)` is all a rank process calls:
it validates the layout, binds the rank's device, joins the group's process group (collectives
time out after COLLECTIVE_TIMEOUT) and returns the `ParallelPlan` to give `WanEngine.load`.
"""

from __future__ import annotations

from wanserve.engine.distributed.layout import (
    GroupLayout,
    check_request,
    group_device_indices,
    host_device_indices,
    validate_layout,
)
from wanserve.engine.distributed.process_group import assign_device, leave_process_group
from wanserve.engine.parallel_plan import SINGLE_PROCESS, ParallelPlan
from wanserve.settings import Settings

__all__ = [
    "GroupLayout", "ParallelPlan", "assign_device", "check_request", "group_device_indices",
    "host_device_indices", "init_rank", "leave_process_group", "validate_layout",
]


def init_rank(settings: Settings, rank: int, world_size: int, master_addr: str, master_port: int) -> ParallelPlan:
    """Join rank `rank` of a group of `world_size` and return its plan.

    Raises SettingsError (naming the setting) when the layout cannot work. A group of one gets
    the single-process plan and torch.distributed is not touched."""
    import torch.distributed as dist

    from wanserve.engine import devices
    from wanserve.engine.distributed.plan import GroupPlan
    from wanserve.engine.distributed.process_group import (
        assigned_device_index,
        bind_device,
        build_mesh,
        join_process_group,
    )
    from wanserve.settings import SettingsError

    info = devices.detect(settings.device)
    layout = validate_layout(settings, world_size, info)
    if not 0 <= rank < world_size:
        raise SettingsError(f"RANK: {rank} is not a rank of a group of {world_size}")
    if world_size == 1:
        return SINGLE_PROCESS
    index = assigned_device_index()
    if index is None:
        # torchrun (or another launcher) gives LOCAL_RANK: the rank's place on this host.
        local = settings.local_rank if settings.local_rank is not None else rank
        index = host_device_indices(settings, info)[local % len(host_device_indices(settings, info))]
    device = bind_device(info, index)
    join_process_group(info, device, rank, world_size, master_addr, master_port, settings.collective_timeout)
    mesh = build_mesh(layout)
    if settings.model_ckpt_dir is None:
        # The demo model is built on first use: by the leader only, the others wait for it.
        if rank == 0:
            from wanserve.engine.tiny_model import ensure_demo_model

            ensure_demo_model(settings.data_dir)
        dist.barrier()
    return GroupPlan(layout, rank, world_size, device, mesh)

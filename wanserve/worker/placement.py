"""How many worker groups this machine runs and which devices each one gets.

DEVICES lists the devices (on a CPU: a process count); groups take consecutive slices of
`group_size = ULYSSES_SIZE x RING_SIZE x CFG_PARALLEL` of them. WORKER_GROUPS overrides the count
(on a CPU, where "devices" are processes, it may exceed DEVICES / group size).
"""

from __future__ import annotations

from dataclasses import dataclass

from wanserve.settings import Settings, SettingsError


@dataclass(frozen=True)
class GroupPlacement:
    index: int
    device_kind: str  # cuda | npu | cpu
    device_indices: tuple[int, ...]  # one per rank

    @property
    def world_size(self) -> int:
        return len(self.device_indices)


def plan_groups(settings: Settings) -> list[GroupPlacement]:
    """The groups to run here; SettingsError (naming the variable) when the devices do not fit.
    Imports torch (device detection)."""
    from wanserve.engine import devices
    from wanserve.engine.distributed import host_device_indices, validate_layout

    info = devices.detect(settings.device)
    size = settings.group_size
    validate_layout(settings, size, info)
    indices = host_device_indices(settings, info)
    available = len(indices) // size
    count = settings.worker_groups or available
    if info.kind == "cpu":
        return [GroupPlacement(i, "cpu", tuple([0] * size)) for i in range(count)]
    if count > available:
        raise SettingsError(f"WORKER_GROUPS: {count} groups of {size} ranks need {count * size} devices; "
                            f"DEVICES gives {len(indices)}")
    return [GroupPlacement(i, info.kind, tuple(indices[i * size:(i + 1) * size])) for i in range(count)]

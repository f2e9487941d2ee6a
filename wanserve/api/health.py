"""GET /health: is anything serving, what model, on which devices, how long the queue is.

ok: every registered group that is not stopped serves (idle or busy, heartbeating);
degraded: some serve and others are starting, restarting, failed or silent;
unhealthy (HTTP 503): none serves (load balancers take the instance out).
"""

from __future__ import annotations

from pathlib import Path

from wanserve.api.schemas import HealthResponse, QueueInfo, WorkerInfo
from wanserve.api.served_model import ServedModels, models_of
from wanserve.settings import Settings
from wanserve.tasks import GroupRecord, GroupState, TaskStatus, TaskStore


def local_device_kind(settings: Settings) -> str:
    """The device kind of this machine, torch-free (for groups that record bare indices)."""
    if settings.device != "auto":
        return settings.device
    if Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir():
        return "cuda"
    if Path("/dev/davinci0").exists():
        return "npu"
    return "cpu"


def device_summary(groups: list[GroupRecord], settings: Settings) -> tuple[str, int]:
    """(device kind, number of distinct devices) of the groups that serve or will serve.
    Groups may record devices as "cuda:0" / {"kind": "cuda", "index": 0} or as bare indices."""
    live = [g for g in groups if g.state is not GroupState.stopped] or groups
    kinds: set[str] = set()
    devices: set[tuple[str, str]] = set()
    for group in live:
        for device in group.devices:
            if isinstance(device, dict):
                kind, index = str(device.get("kind", "")), str(device.get("index", ""))
            elif isinstance(device, str) and ":" in device:
                kind, index = device.split(":", 1)
            else:
                kind, index = "", str(device)
            if kind:
                kinds.add(kind)
            devices.add((group.host, f"{kind}:{index}"))
    kind = ",".join(sorted(kinds)) if kinds else local_device_kind(settings)
    return kind, len(devices)


def health_status(groups: list[GroupRecord]) -> str:
    relevant = [g for g in groups if g.state is not GroupState.stopped]
    serving = [g for g in relevant if g.state in (GroupState.idle, GroupState.busy) and g.responsive]
    if not serving:
        return "unhealthy"
    return "ok" if len(serving) == len(relevant) else "degraded"


def read_health(settings: Settings, store: TaskStore, models: ServedModels) -> HealthResponse:
    """Blocking (database reads): call from a worker thread."""
    groups = store.list_groups()  # read afresh: health must not lag behind the registry
    served = models_of(groups) or [models.configured()]
    counts = store.counts()
    kind, count = device_summary(groups, settings)
    return HealthResponse(
        status=health_status(groups),  # type: ignore[arg-type]
        model=", ".join(m.label for m in served),
        variant=", ".join(m.variant.name for m in served),
        device_type=kind,
        device_count=count,
        workers=[WorkerInfo(
            id=g.id, state=g.state.value, pids=g.pids, current_task=g.current_task_id, model=g.model_label,
            host=g.host, supervisor=g.supervisor, devices=g.devices, responsive=g.responsive,
            tasks_served=g.tasks_served, restarts=g.restarts, last_error=g.last_error, heartbeat_at=g.heartbeat_at,
            memory=g.memory,
        ) for g in groups],
        queue=QueueInfo(queued=counts[TaskStatus.queued], running=counts[TaskStatus.running]),
    )

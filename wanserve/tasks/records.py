"""What the store hands out: immutable pydantic snapshots of tasks and worker groups."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from wanserve.request import Adjustment, GenerationRequest
from wanserve.tasks.schema import TaskRow, WorkerGroupRow
from wanserve.tasks.status import TERMINAL, GroupState, TaskStatus
from wanserve.variants import Task


def to_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


class Progress(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: int = 0
    total: int = 0
    stage: str | None = None  # encode | denoise | decode | write
    updated_at: datetime | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


class TaskResult(BaseModel):
    """Where the output of a completed task is, and what it is."""

    model_config = ConfigDict(frozen=True)

    video_path: str
    thumbnail_path: str
    frames: int
    width: int
    height: int
    fps: int
    bytes: int  # of the video
    thumbnail_bytes: int
    seed: int
    steps: int  # denoising steps run
    model_label: str


class TaskError(BaseModel):
    """Why a task failed: a stable `code` (see status.ErrorCode) and a message for people."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    field: str | None = None  # the offending request field, for invalid_request


class TaskRecord(BaseModel):
    """A task as the API shows it. `queue_position` is 1 for the next task to run (queued only)."""

    model_config = ConfigDict(frozen=True)

    id: str
    task_type: Task
    model: str | None
    request: GenerationRequest
    adjustments: list[Adjustment] = Field(default_factory=list)
    status: TaskStatus
    priority: int
    attempts: int
    max_attempts: int
    owner: str
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    version: int
    progress: Progress
    queue_position: int | None = None
    lease_owner: str | None
    lease_expires_at: datetime | None
    group_id: str | None
    cancel_requested: bool
    result: TaskResult | None
    error: TaskError | None
    timings: dict[str, float] = Field(default_factory=dict)
    expired_at: datetime | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: Any, queue_position: int | None = None) -> TaskRecord:
        """From a row of `wanserve_tasks` (a SQLAlchemy Row or a TaskRow)."""
        r = row._mapping if hasattr(row, "_mapping") else row.__dict__
        error = None
        if r["error_code"]:
            error = TaskError(code=r["error_code"], message=r["error_message"] or "", field=r["error_field"])
        return cls(
            id=r["id"], task_type=Task(r["task_type"]), model=r["model"],
            request=GenerationRequest.model_validate(r["request"]),
            adjustments=[Adjustment.model_validate(a) for a in (r["adjustments"] or [])],
            status=TaskStatus(r["status"]), priority=r["priority"], attempts=r["attempts"],
            max_attempts=r["max_attempts"], owner=r["owner"], idempotency_key=r["idempotency_key"],
            created_at=to_datetime(r["created_at"]), started_at=to_datetime(r["started_at"]),
            finished_at=to_datetime(r["finished_at"]), updated_at=to_datetime(r["updated_at"]),
            version=r["version"],
            progress=Progress(step=r["progress_step"] or 0, total=r["progress_total"] or 0,
                              stage=r["progress_stage"], updated_at=to_datetime(r["progress_at"])),
            queue_position=queue_position if r["status"] == TaskStatus.queued else None,
            lease_owner=r["lease_owner"], lease_expires_at=to_datetime(r["lease_expires_at"]),
            group_id=r["group_id"], cancel_requested=bool(r["cancel_requested"]),
            result=TaskResult.model_validate(r["result"]) if r["result"] else None,
            error=error, timings=dict(r["timings"] or {}), expired_at=to_datetime(r["expired_at"]),
        )


class TaskPage(BaseModel):
    """One page of `TaskStore.list_tasks`; pass `next_after` as `after` for the next page."""

    items: list[TaskRecord]
    has_more: bool
    next_after: str | None


class DeviceMemory(BaseModel):
    """Memory of one device as a worker group's processes report it (bytes).

    `used_bytes` / `peak_bytes`: held by the group's processes on the device (the framework's
    allocator reserve on a GPU / NPU; resident memory on the CPU), now and at most since they
    started. `free_bytes` / `total_bytes`: the whole device (other processes included)."""

    model_config = ConfigDict(frozen=True)

    device: str  # "cuda:0", "npu:3", "cpu"
    used_bytes: int
    peak_bytes: int
    free_bytes: int | None = None
    total_bytes: int | None = None
    ranks: list[int] = Field(default_factory=list)  # the group's ranks on this device
    updated_at: datetime | None = None  # the oldest of their reports

    @classmethod
    def from_stats(cls, stats: dict[str, Any] | None) -> list[DeviceMemory]:
        """Per device, from the registry's `stats` JSON ({"memory": {"<rank>": row}}, one row per
        rank process): ranks that share a device (CPU groups) add up their own memory."""
        per_device: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for rank, row in ((stats or {}).get("memory") or {}).items():
            if isinstance(row, dict) and isinstance(row.get("device"), str):
                per_device.setdefault(row["device"], []).append((int(rank), row))
        devices: list[DeviceMemory] = []
        for device, rows in sorted(per_device.items()):
            ranks = sorted(rows, key=lambda r: r[0])
            reported = [float(row["at"]) for _, row in ranks if row.get("at") is not None]
            devices.append(cls(
                device=device,
                used_bytes=sum(int(row.get("used_bytes") or 0) for _, row in ranks),
                peak_bytes=sum(int(row.get("peak_bytes") or 0) for _, row in ranks),
                free_bytes=_first(row.get("free_bytes") for _, row in ranks),
                total_bytes=_first(row.get("total_bytes") for _, row in ranks),
                ranks=[rank for rank, _ in ranks],
                updated_at=to_datetime(min(reported)) if reported else None,
            ))
        return devices


def _first(values: Iterable[Any]) -> int | None:
    return next((int(v) for v in values if v is not None), None)


class GroupRecord(BaseModel):
    """A worker group as /health shows it."""

    model_config = ConfigDict(frozen=True)

    id: str
    supervisor: str
    host: str
    supervisor_pid: int | None
    state: GroupState
    pids: list[int]
    devices: list[Any]
    current_task_id: str | None
    model_label: str | None
    variant: str | None
    task_types: list[str]
    tasks_served: int
    restarts: int
    last_error: str | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    last_step_at: datetime | None
    updated_at: datetime
    # False when an idle/busy group has not heartbeated for a while (its machine may be gone).
    responsive: bool
    memory: list[DeviceMemory] = Field(default_factory=list)  # of the running processes, per device

    @classmethod
    def from_row(cls, row: Any, now: float, stale_after: float) -> GroupRecord:
        r = row._mapping if hasattr(row, "_mapping") else row.__dict__
        state = GroupState(r["state"])
        seen = r["heartbeat_at"] or r["updated_at"]
        responsive = state not in (GroupState.idle, GroupState.busy) or now - seen <= stale_after
        return cls(
            id=r["id"], supervisor=r["supervisor"], host=r["host"], supervisor_pid=r["supervisor_pid"], state=state, pids=list(r["pids"] or []),
            devices=list(r["devices"] or []), current_task_id=r["current_task_id"],
            model_label=r["model_label"], variant=r["variant"], task_types=list(r["task_types"] or []),
            tasks_served=r["tasks_served"], restarts=r["restarts"], last_error=r["last_error"],
            started_at=to_datetime(r["started_at"]), heartbeat_at=to_datetime(r["heartbeat_at"]),
            last_step_at=to_datetime(r["last_step_at"]), updated_at=to_datetime(r["updated_at"]),
            responsive=responsive, memory=DeviceMemory.from_stats(r.get("stats")),
        )


# The columns TaskRecord.from_row reads (all of them).
TASK_COLUMNS = list(TaskRow.__table__.columns)
GROUP_COLUMNS = list(WorkerGroupRow.__table__.columns)

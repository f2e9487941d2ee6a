"""The database tables (SQLAlchemy 2.0 declarative models). Changes need a new migration.

Times are UNIX epoch seconds (double precision) on both SQLite and PostgreSQL: one comparison
semantics everywhere, no time-zone surprises. Machines sharing a queue need synchronised clocks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Double, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class TaskRow(Base):
    """One accepted request and everything that happened to it."""

    __tablename__ = "wanserve_tasks"

    # Claim order is priority DESC then seq ASC (FIFO); `id` is the public identifier.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    task_type: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(200))  # None: any model that serves task_type
    request: Mapped[dict[str, Any]] = mapped_column(JSON)  # wanserve.request.GenerationRequest
    adjustments: Mapped[list[Any]] = mapped_column(JSON, default=list)  # wanserve.request.Adjustment
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # runs started
    max_attempts: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str] = mapped_column(String(128), default="")  # API key hash; "" without auth
    idempotency_key: Mapped[str | None] = mapped_column(String(200))

    created_at: Mapped[float] = mapped_column(Double)
    started_at: Mapped[float | None] = mapped_column(Double)  # of the latest attempt
    finished_at: Mapped[float | None] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)
    version: Mapped[int] = mapped_column(Integer, default=1)  # +1 on every visible change (SSE)

    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_stage: Mapped[str | None] = mapped_column(String(16))
    progress_at: Mapped[float | None] = mapped_column(Double)

    lease_owner: Mapped[str | None] = mapped_column(String(200))  # "<group id>#<incarnation>"
    lease_expires_at: Mapped[float | None] = mapped_column(Double)
    group_id: Mapped[str | None] = mapped_column(String(200))  # group of the latest attempt
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # records.TaskResult
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # seconds per stage
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_field: Mapped[str | None] = mapped_column(String(64))
    expired_at: Mapped[float | None] = mapped_column(Double)  # files deleted (RESULT_TTL)

    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key"),
        Index(None, "status", "priority", "seq"),
        Index(None, "owner", "seq"),
        Index(None, "lease_owner"),
        Index(None, "status", "finished_at"),
    )


class WorkerGroupRow(Base):
    """One worker group (the ranks of one model replica), for /health and the watchdog."""

    __tablename__ = "wanserve_worker_groups"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # "<worker id>/g<index>"
    supervisor: Mapped[str] = mapped_column(String(200))  # WORKER_ID of its supervisor
    host: Mapped[str] = mapped_column(String(255))
    supervisor_pid: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    pids: Mapped[list[int]] = mapped_column(JSON, default=list)
    devices: Mapped[list[Any]] = mapped_column(JSON, default=list)
    lease_owner: Mapped[str | None] = mapped_column(String(200))  # the current incarnation's lease token
    current_task_id: Mapped[str | None] = mapped_column(String(64))
    model_label: Mapped[str | None] = mapped_column(String(300))
    variant: Mapped[str | None] = mapped_column(String(64))
    task_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    tasks_served: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[float | None] = mapped_column(Double)
    heartbeat_at: Mapped[float | None] = mapped_column(Double)
    last_step_at: Mapped[float | None] = mapped_column(Double)  # the watchdog compares against this
    updated_at: Mapped[float] = mapped_column(Double)
    # What the running processes report about themselves: {"memory": {"<rank>": {...}}} (records.py).
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)

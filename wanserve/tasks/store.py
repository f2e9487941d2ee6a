"""TaskStore: the durable queue every layer talks through (API, supervisors, worker groups).

One class over SQLite (default, a file under DATA_DIR) or PostgreSQL (DATABASE_URL), same code.
All methods are synchronous and thread-safe (each opens its own short transaction); FastAPI can
call them from its threadpool. Nothing here imports torch.

Submitting side (the API):
    enqueue, get, list_tasks, counts, finished_since, cancel, delete, wait_for_change, list_groups,
    new_task_id / inputs_dir / results_dir (where files of a task live)
Worker side (supervisors and groups):
    claim, heartbeat, report_progress, is_cancel_requested, complete, fail, finish_cancelled,
    release, recover_expired_leases, expire_results, register_group, group_ready, set_group_state,
    report_memory, listen (wake-ups)

State machine: see `status.TRANSITIONS`. Every status change is a conditional UPDATE (on the
expected status and, for a running task, on the lease owner), so two processes never both move
the same task: a group whose lease was taken over can no longer finish or fail that task.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, text, update

from wanserve.request import Adjustment, GenerationRequest
from wanserve.settings import Settings
from wanserve.tasks.database import ENQUEUE_LOCK, Database
from wanserve.tasks.errors import IdempotencyConflict, QueueFullError, TaskNotFound, TaskStateError
from wanserve.tasks.records import GroupRecord, TaskError, TaskPage, TaskRecord, TaskResult
from wanserve.tasks.schema import TaskRow, WorkerGroupRow
from wanserve.tasks.status import ACTIVE, TERMINAL, ErrorCode, GroupState, TaskStatus, can_move
from wanserve.tasks.wakeup import (
    CANCEL,
    QUEUE,
    TASK,
    Event,
    EventHub,
    Listener,
    LocalWakeup,
    PostgresWakeup,
    Wakeup,
)

log = logging.getLogger("wanserve.tasks")

T = TaskRow.__table__
G = WorkerGroupRow.__table__
DEFAULT_TASK_SECONDS = 60.0  # Retry-After estimate before any task has completed
MAX_PAGE = 200


@dataclass(frozen=True)
class StepAck:
    """The store's answer to a progress report."""

    lease_held: bool  # False: the task was taken from this group (stop, write nothing)
    cancel_requested: bool


class TaskStore:
    """The task queue and the worker-group registry. See the module docstring for the API."""

    def __init__(self, settings: Settings, *, migrate: bool = True) -> None:
        self.settings = settings
        self.db = Database(settings.queue_url)
        if migrate:
            self.db.migrate()
        if self.db.is_postgres:
            local_key = self.db.url.render_as_string(hide_password=True)
            self.wakeup: Wakeup = PostgresWakeup(self.db.url, LocalWakeup(local_key))
        else:
            self.wakeup = LocalWakeup(str(Path(self.db.url.database or "").resolve()))
        self._hub = EventHub(self.wakeup)

    def close(self) -> None:
        self._hub.close()
        self.wakeup.close()
        self.db.dispose()

    # ------------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _write(self) -> Iterator[tuple[Connection, list[Event]]]:
        """A write transaction; events appended to the list are published once it commits."""
        events: list[Event] = []
        with self.db.write() as conn:
            yield conn, events
            if events:
                self.wakeup.publish(conn, events)
        if events:
            self.wakeup.after_commit(events)

    def _row(self, conn: Connection, task_id: str, owner: str | None = None, *, lock: bool = False) -> Any:
        query = select(T).where(T.c.id == task_id)
        if lock:  # PostgreSQL: claims skip the locked row, so its status cannot change under us
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None or (owner is not None and row.owner != owner):
            raise TaskNotFound(task_id)
        return row

    def _position(self, conn: Connection, row: Any) -> int | None:
        if row.status != TaskStatus.queued:
            return None
        ahead = conn.execute(
            select(func.count()).select_from(T).where(
                T.c.status == TaskStatus.queued,
                or_(T.c.priority > row.priority, and_(T.c.priority == row.priority, T.c.seq < row.seq)),
            )
        ).scalar_one()
        return int(ahead) + 1

    def _record(self, conn: Connection, row: Any) -> TaskRecord:
        return TaskRecord.from_row(row, self._position(conn, row))

    def _move(self, conn: Connection, row: Any, target: TaskStatus, values: dict[str, Any],
              events: list[Event], *, lease_owner: str | None = None) -> Any | None:
        """Change `row`'s status to `target` if it is still in the status we read (and still
        leased to `lease_owner` when given). Returns the new row, or None if someone moved first."""
        source = TaskStatus(row.status)
        if not can_move(source, target):
            raise AssertionError(f"illegal task transition {source} -> {target}")
        now = time.time()
        condition = [T.c.seq == row.seq, T.c.status == source]
        if lease_owner is not None:
            condition.append(T.c.lease_owner == lease_owner)
        new = conn.execute(
            update(T).where(*condition)
            .values(status=target, updated_at=now, version=T.c.version + 1, **values)
            .returning(*T.c)
        ).first()
        if new is not None:
            events.append((TASK, new.id))
            if target is TaskStatus.queued:
                events.append((QUEUE, new.task_type))
        return new

    # ------------------------------------------------------------------------ paths
    @staticmethod
    def new_task_id() -> str:
        """A fresh task id (pass it to `enqueue(task_id=...)` to store input files first)."""
        return uuid.uuid4().hex

    def inputs_dir(self, task_id: str) -> Path:
        """Where the API keeps a task's uploaded / fetched inputs (deleted with its results).

        Inside the task's results folder: when API and workers run on different machines,
        RESULTS_DIR is the shared path, and the workers must read the inputs from it too."""
        return self.results_dir(task_id) / "inputs"

    def results_dir(self, task_id: str) -> Path:
        return self.settings.results_path / task_id

    # ------------------------------------------------------------------------ API side
    def enqueue(
        self,
        request: GenerationRequest,
        *,
        model: str | None = None,
        priority: int = 0,
        owner: str = "",
        idempotency_key: str | None = None,
        adjustments: Sequence[Adjustment] = (),
        task_id: str | None = None,
    ) -> TaskRecord:
        """Accept a task; returns it `queued` with its `queue_position`.

        - `model`: None runs on any group whose model serves the task type; otherwise only on
          groups whose variant name or model label equals it.
        - `priority`: higher runs first; FIFO within a priority.
        - `owner`: the API key hash ("" without auth); `get/list/cancel/delete` can filter on it.
        - `idempotency_key`: a repeat with the same owner and key returns the first task (whose id
          may differ from `task_id`); with a different request it raises IdempotencyConflict.
        - Raises QueueFullError when MAX_CONCURRENT_TASKS tasks are queued or running.
        """
        task_type = request.inferred_task().value
        request_json = request.model_dump(mode="json")
        task_id = task_id or self.new_task_id()
        with self._write() as (conn, events):
            if self.db.is_postgres:  # makes the capacity check and the insert one atomic step
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ENQUEUE_LOCK})
            if idempotency_key is not None:
                existing = conn.execute(
                    select(T).where(T.c.owner == owner, T.c.idempotency_key == idempotency_key)
                ).first()
                if existing is not None:
                    if existing.request != request_json or existing.model != model:
                        raise IdempotencyConflict(idempotency_key, existing.id)
                    return self._record(conn, existing)
            active = conn.execute(
                select(func.count()).select_from(T).where(T.c.status.in_(list(ACTIVE)))
            ).scalar_one()
            limit = self.settings.max_concurrent_tasks
            if active >= limit:
                raise QueueFullError(limit, int(active), self._retry_after(conn, int(active) - limit + 1))
            now = time.time()
            row = conn.execute(
                insert(T).values(
                    id=task_id, task_type=task_type, model=model, request=request_json,
                    adjustments=[a.model_dump(mode="json") for a in adjustments],
                    status=TaskStatus.queued, priority=priority, attempts=0,
                    max_attempts=self.settings.max_attempts, owner=owner, idempotency_key=idempotency_key,
                    created_at=now, updated_at=now, version=1, progress_step=0, progress_total=0,
                    cancel_requested=False,
                ).returning(*T.c)
            ).first()
            events += [(QUEUE, task_type), (TASK, task_id)]
            return self._record(conn, row)

    def _retry_after(self, conn: Connection, excess: int) -> int:
        """Seconds until a slot is likely free: recent task time x excess / live groups."""
        recent = conn.execute(
            select(T.c.finished_at - T.c.started_at).where(
                T.c.status == TaskStatus.completed, T.c.started_at.is_not(None)
            ).order_by(T.c.finished_at.desc()).limit(20)
        ).scalars().all()
        per_task = sum(recent) / len(recent) if recent else DEFAULT_TASK_SECONDS
        groups = conn.execute(
            select(func.count()).select_from(G).where(G.c.state.in_([GroupState.idle, GroupState.busy]))
        ).scalar_one()
        return max(1, min(3600, math.ceil(per_task * max(excess, 1) / max(int(groups), 1))))

    def get(self, task_id: str, owner: str | None = None) -> TaskRecord:
        """The task (TaskNotFound if absent, or owned by someone else when `owner` is given)."""
        with self.db.read() as conn:
            return self._record(conn, self._row(conn, task_id, owner))

    def list_tasks(
        self,
        *,
        status: TaskStatus | str | Iterable[TaskStatus | str] | None = None,
        owner: str | None = None,
        limit: int = 20,
        after: str | None = None,
        oldest_first: bool = False,
    ) -> TaskPage:
        """Newest first (oldest first with `oldest_first`). `status` filters (one or several),
        `owner` restricts to one API key, `after` continues from the `next_after` of the previous
        page. `limit` is capped at 200."""
        limit = max(1, min(limit, MAX_PAGE))
        query = select(T).order_by(T.c.seq.asc() if oldest_first else T.c.seq.desc()).limit(limit + 1)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            query = query.where(T.c.status.in_([TaskStatus(s).value for s in wanted]))
        if owner is not None:
            query = query.where(T.c.owner == owner)
        with self.db.read() as conn:
            if after is not None:
                cursor = self._row(conn, after, owner).seq
                query = query.where(T.c.seq > cursor if oldest_first else T.c.seq < cursor)
            rows = conn.execute(query).all()
            positions: dict[str, int] = {}
            if any(r.status == TaskStatus.queued for r in rows[:limit]):
                positions = self._queue_positions(conn)
            items = [TaskRecord.from_row(r, positions.get(r.id)) for r in rows[:limit]]
        has_more = len(rows) > limit
        return TaskPage(items=items, has_more=has_more, next_after=items[-1].id if has_more else None)

    def _queue_positions(self, conn: Connection) -> dict[str, int]:
        ranked = conn.execute(
            select(T.c.id).where(T.c.status == TaskStatus.queued).order_by(T.c.priority.desc(), T.c.seq)
        ).scalars().all()
        return {task_id: i + 1 for i, task_id in enumerate(ranked)}

    def finished_since(self, since: float, limit: int = 500) -> list[TaskRecord]:
        """Tasks that reached a final state at or after `since` (epoch seconds), oldest first:
        how the API's /metrics follows outcomes and durations without watching every task."""
        query = (select(T).where(T.c.status.in_([s.value for s in TERMINAL]), T.c.finished_at >= since)
                 .order_by(T.c.finished_at, T.c.seq).limit(max(1, limit)))
        with self.db.read() as conn:
            return [TaskRecord.from_row(row) for row in conn.execute(query).all()]

    def counts(self, owner: str | None = None) -> dict[TaskStatus, int]:
        """How many tasks are in each status (every status present, 0 when none)."""
        query = select(T.c.status, func.count()).group_by(T.c.status)
        if owner is not None:
            query = query.where(T.c.owner == owner)
        with self.db.read() as conn:
            found = {TaskStatus(s): int(n) for s, n in conn.execute(query).all()}
        return {s: found.get(s, 0) for s in TaskStatus}

    def cancel(self, task_id: str, owner: str | None = None) -> TaskRecord:
        """Queued: cancelled at once. Running: `cancel_requested`; its group stops at the next
        denoising step and marks it cancelled. Already finished: returned unchanged (check
        `status`)."""
        with self._write() as (conn, events):
            row = self._row(conn, task_id, owner, lock=True)
            if row.status == TaskStatus.queued:
                row = self._move(conn, row, TaskStatus.cancelled, {"finished_at": time.time()}, events) or row
            elif row.status == TaskStatus.running and not row.cancel_requested:
                row = conn.execute(
                    update(T).where(T.c.seq == row.seq, T.c.status == TaskStatus.running)
                    .values(cancel_requested=True, updated_at=time.time(), version=T.c.version + 1)
                    .returning(*T.c)
                ).first() or self._row(conn, task_id)
                events += [(TASK, task_id), (CANCEL, task_id)]
            return self._record(conn, row)

    def delete(self, task_id: str, owner: str | None = None) -> None:
        """Remove the task and its files. A running task must be cancelled first (TaskStateError)."""
        with self._write() as (conn, events):
            row = self._row(conn, task_id, owner, lock=True)
            if row.status == TaskStatus.running:
                raise TaskStateError(task_id, row.status, "delete", "cancel it first")
            deleted = conn.execute(
                T.delete().where(T.c.seq == row.seq, T.c.status != TaskStatus.running)
            ).rowcount
            if not deleted:
                raise TaskStateError(task_id, TaskStatus.running, "delete", "cancel it first")
            events.append((TASK, task_id))
        self._delete_files(task_id, row.result)

    def _delete_files(self, task_id: str, result: dict[str, Any] | None) -> None:
        folders = {self.results_dir(task_id), self.inputs_dir(task_id)}
        for key in ("video_path", "thumbnail_path"):
            if result and result.get(key):
                path = Path(result[key])
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                if path.parent.name == task_id:
                    folders.add(path.parent)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    def wait_for_change(self, task_id: str, after_version: int, timeout: float,
                        owner: str | None = None) -> TaskRecord:
        """The task once its `version` exceeds `after_version`, or as it is after `timeout`
        seconds (same version: nothing changed). Cheap: threads wait on one shared listener."""
        deadline = time.monotonic() + timeout
        poll = 0.25  # fallback if a wake-up is missed; grows while nothing happens
        while True:
            record = self.get(task_id, owner)
            remaining = deadline - time.monotonic()
            if record.version > after_version or remaining <= 0:
                return record
            self._hub.wait(TASK, task_id, min(remaining, poll))
            poll = min(poll * 2, 2.0)

    def list_groups(self, supervisor: str | None = None) -> list[GroupRecord]:
        """Every registered worker group (of one supervisor when given), for /health."""
        query = select(G).order_by(G.c.id)
        if supervisor is not None:
            query = query.where(G.c.supervisor == supervisor)
        now = time.time()
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [GroupRecord.from_row(r, now, self.settings.lease_seconds) for r in rows]

    # ------------------------------------------------------------------------ worker side
    def listen(self, topics: Iterable[str]) -> Listener:
        """A listener for wake-up topics (`wakeup.QUEUE`, `TASK`, `CANCEL`, or a group topic)."""
        return self.wakeup.listen(topics)

    def wake_local(self, topic: str, payload: str = "") -> None:
        """Send a local wake-up now (no database involved): rank 0 -> its followers."""
        local = self.wakeup.local if isinstance(self.wakeup, PostgresWakeup) else self.wakeup
        assert isinstance(local, LocalWakeup)
        local.send([(topic, payload)])

    def claim(self, *, lease_owner: str, task_types: Iterable[str], models: Iterable[str],
              lease_seconds: float | None = None) -> TaskRecord | None:
        """Atomically take the next queued task this group can serve (priority, then FIFO) and
        lease it to `lease_owner` (the group incarnation's token); None when there is none.
        PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: one UPDATE under the database write lock."""
        lease = self.settings.lease_seconds if lease_seconds is None else lease_seconds
        now = time.time()
        candidate = (
            select(T.c.seq)
            .where(T.c.status == TaskStatus.queued, T.c.task_type.in_(list(task_types)),
                   or_(T.c.model.is_(None), T.c.model.in_(list(models))))
            .order_by(T.c.priority.desc(), T.c.seq)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        group_id = lease_owner.split("#", 1)[0]
        with self._write() as (conn, events):
            row = conn.execute(
                update(T).where(T.c.seq == candidate, T.c.status == TaskStatus.queued)
                .values(status=TaskStatus.running, attempts=T.c.attempts + 1, started_at=now,
                        lease_owner=lease_owner, lease_expires_at=now + lease, group_id=group_id,
                        progress_step=0, progress_total=0, progress_stage=None, progress_at=now,
                        updated_at=now, version=T.c.version + 1)
                .returning(*T.c)
            ).first()
            if row is None:
                return None
            conn.execute(update(G).where(G.c.lease_owner == lease_owner).values(
                state=GroupState.busy, current_task_id=row.id, last_step_at=now, heartbeat_at=now, updated_at=now))
            events.append((TASK, row.id))
            return TaskRecord.from_row(row)

    def heartbeat(self, lease_owner: str, task_id: str | None = None,
                  lease_seconds: float | None = None, memory: dict[str, Any] | None = None) -> bool:
        """Renew the group's heartbeat and, with `task_id`, the task's lease. False when the task
        is no longer leased to this group (the caller must stop working on it). `memory`: rank
        0's device memory row (see `report_memory`), recorded in the same transaction."""
        lease = self.settings.lease_seconds if lease_seconds is None else lease_seconds
        now = time.time()
        with self._write() as (conn, _):
            conn.execute(update(G).where(G.c.lease_owner == lease_owner).values(heartbeat_at=now))
            if memory is not None:
                self._merge_memory(conn, lease_owner, 0, memory)
            if task_id is None:
                return True
            held = conn.execute(
                update(T).where(T.c.id == task_id, T.c.lease_owner == lease_owner,
                                T.c.status == TaskStatus.running)
                .values(lease_expires_at=now + lease).returning(T.c.seq)
            ).first()
            return held is not None

    def report_progress(self, task_id: str, lease_owner: str, step: int, total: int, stage: str) -> StepAck:
        """Record progress (also the watchdog's sign of life) and read the cancel flag."""
        now = time.time()
        with self._write() as (conn, events):
            row = conn.execute(
                update(T).where(T.c.id == task_id, T.c.lease_owner == lease_owner,
                                T.c.status == TaskStatus.running)
                .values(progress_step=step, progress_total=total, progress_stage=stage, progress_at=now,
                        updated_at=now, version=T.c.version + 1)
                .returning(T.c.cancel_requested)
            ).first()
            conn.execute(update(G).where(G.c.lease_owner == lease_owner).values(last_step_at=now))
            if row is None:
                return StepAck(lease_held=False, cancel_requested=False)
            events.append((TASK, task_id))
            return StepAck(lease_held=True, cancel_requested=bool(row.cancel_requested))

    def is_cancel_requested(self, task_id: str) -> bool:
        with self.db.read() as conn:
            flag = conn.execute(select(T.c.cancel_requested).where(T.c.id == task_id)).scalar()
        return bool(flag)

    def _finish(self, task_id: str, lease_owner: str, target: TaskStatus, values: dict[str, Any]) -> bool:
        now = time.time()
        with self._write() as (conn, events):
            row = conn.execute(select(T).where(T.c.id == task_id)).first()
            if row is None or row.status != TaskStatus.running or row.lease_owner != lease_owner:
                return False
            values = {"finished_at": now, "lease_owner": None, "lease_expires_at": None, **values}
            done = self._move(conn, row, target, values, events, lease_owner=lease_owner)
            if done is None:
                return False
            conn.execute(update(G).where(G.c.lease_owner == lease_owner).values(
                state=GroupState.idle, current_task_id=None, tasks_served=G.c.tasks_served + 1,
                last_step_at=now, updated_at=now))
            return True

    def complete(self, task_id: str, lease_owner: str, result: TaskResult, *,
                 timings: dict[str, float] | None = None, adjustments: Sequence[Adjustment] | None = None) -> bool:
        """running -> completed with its result. False if the lease was lost (nothing changed)."""
        values: dict[str, Any] = {"result": result.model_dump(mode="json"), "timings": timings or {},
                                  "progress_stage": "done"}
        if adjustments is not None:
            values["adjustments"] = [a.model_dump(mode="json") for a in adjustments]
        return self._finish(task_id, lease_owner, TaskStatus.completed, values)

    def fail(self, task_id: str, lease_owner: str, error: TaskError, *,
             timings: dict[str, float] | None = None) -> bool:
        """running -> failed with `error`. False if the lease was lost."""
        return self._finish(task_id, lease_owner, TaskStatus.failed, {
            "error_code": error.code, "error_message": error.message, "error_field": error.field,
            "timings": timings or {},
        })

    def finish_cancelled(self, task_id: str, lease_owner: str) -> bool:
        """running -> cancelled (the group stopped it on request). False if the lease was lost."""
        return self._finish(task_id, lease_owner, TaskStatus.cancelled, {})

    def release(self, lease_owner: str | None = None, *, code: ErrorCode, reason: str, count_attempt: bool = True,
                task_id: str | None = None, group_id: str | None = None) -> list[TaskRecord]:
        """Give back the running task(s) leased to `lease_owner` (or run by any incarnation of
        `group_id`): its group died, was stuck, or is shutting down. Each goes back to the queue,
        or, when `count_attempt` and it has had MAX_ATTEMPTS runs, fails with `code` and `reason`.
        A pending cancel request wins: the task ends cancelled."""
        if (lease_owner is None) == (group_id is None):
            raise ValueError("release() takes one of lease_owner and group_id")
        query = select(T).where(T.c.status == TaskStatus.running)
        query = query.where(T.c.lease_owner == lease_owner) if lease_owner else query.where(T.c.group_id == group_id)
        if task_id is not None:
            query = query.where(T.c.id == task_id)
        with self._write() as (conn, events):
            rows = conn.execute(query).all()
            moved = [self._give_back(conn, row, code, reason, count_attempt, events) for row in rows]
            if lease_owner:
                conn.execute(update(G).where(G.c.lease_owner == lease_owner).values(current_task_id=None))
        return [TaskRecord.from_row(r) for r in moved if r is not None]

    def _give_back(self, conn: Connection, row: Any, code: ErrorCode, reason: str, count_attempt: bool,
                   events: list[Event]) -> Any | None:
        now = time.time()
        cleared = {"lease_owner": None, "lease_expires_at": None}
        if row.cancel_requested:
            return self._move(conn, row, TaskStatus.cancelled, {**cleared, "finished_at": now}, events,
                              lease_owner=row.lease_owner)
        if count_attempt and row.attempts >= row.max_attempts:
            message = (f"{reason}. It ran {row.attempts} time(s), the limit (MAX_ATTEMPTS={row.max_attempts}), "
                       "so it is not retried")
            return self._move(conn, row, TaskStatus.failed, {
                **cleared, "finished_at": now, "error_code": code, "error_message": message, "error_field": None,
            }, events, lease_owner=row.lease_owner)
        log.info("task %s goes back to the queue: %s", row.id, reason)
        return self._move(conn, row, TaskStatus.queued, {
            **cleared, "started_at": None, "progress_step": 0, "progress_total": 0, "progress_stage": None,
            "progress_at": None, "attempts": row.attempts if count_attempt else max(row.attempts - 1, 0),
        }, events, lease_owner=row.lease_owner)

    def recover_expired_leases(self) -> list[TaskRecord]:
        """Running tasks whose group stopped heartbeating (machine or service died): back to the
        queue with the attempt counted, or failed after MAX_ATTEMPTS. Any supervisor may call it."""
        now = time.time()
        with self._write() as (conn, events):
            rows = conn.execute(
                select(T).where(T.c.status == TaskStatus.running, T.c.lease_expires_at < now)
            ).all()
            reason = ("its worker group stopped responding (no heartbeat within LEASE_SECONDS="
                      f"{self.settings.lease_seconds:g})")
            moved = [self._give_back(conn, row, ErrorCode.worker_lost, reason, True, events) for row in rows]
        return [TaskRecord.from_row(r) for r in moved if r is not None]

    def expire_results(self) -> list[str]:
        """Delete the files of tasks finished more than RESULT_TTL ago and mark them expired
        (completed -> `expired`; failed / cancelled keep their status, `expired_at` is set).
        Returns the ids handled."""
        now = time.time()
        cutoff = now - self.settings.result_ttl
        with self.db.read() as conn:
            rows = conn.execute(
                select(T.c.id, T.c.result).where(
                    T.c.status.in_([TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled]),
                    T.c.finished_at < cutoff, T.c.expired_at.is_(None),
                ).limit(500)
            ).all()
        handled: list[str] = []
        for task_id, result in rows:
            self._delete_files(task_id, result)  # before the record: a crash here only repeats it
            with self._write() as (conn, events):
                row = conn.execute(select(T).where(T.c.id == task_id, T.c.expired_at.is_(None))).first()
                if row is None:
                    continue
                if row.status == TaskStatus.completed:
                    self._move(conn, row, TaskStatus.expired, {"expired_at": now}, events)
                else:
                    conn.execute(update(T).where(T.c.seq == row.seq).values(
                        expired_at=now, updated_at=now, version=T.c.version + 1))
                    events.append((TASK, task_id))
            handled.append(task_id)
        return handled

    # ------------------------------------------------------------------------ group registry
    def register_group(self, group_id: str, *, supervisor: str, host: str, state: GroupState,
                       lease_owner: str | None, supervisor_pid: int | None = None, pids: Sequence[int] = (),
                       devices: Sequence[Any] = (), restarts: int = 0, last_error: str | None = None) -> None:
        """Create or reset a group's row (the supervisor, when it starts or restarts a group)."""
        now = time.time()
        values: dict[str, Any] = {
            "supervisor": supervisor, "host": host, "supervisor_pid": supervisor_pid, "state": state,
            "lease_owner": lease_owner, "pids": list(pids), "devices": list(devices), "restarts": restarts,
            "last_error": last_error, "current_task_id": None, "started_at": now, "heartbeat_at": now,
            "last_step_at": None, "updated_at": now, "stats": None,  # new processes report afresh
        }
        with self._write() as (conn, _):
            if not conn.execute(update(G).where(G.c.id == group_id).values(**values)).rowcount:
                conn.execute(insert(G).values(id=group_id, task_types=[], tasks_served=0, **values))

    def set_group_state(self, group_id: str, state: GroupState | None, *, last_error: str | None = None,
                        pids: Sequence[int] | None = None) -> None:
        """Record a group's state (None: unchanged), last error and process ids."""
        values: dict[str, Any] = {"updated_at": time.time()}
        if state is not None:
            values["state"] = state
        if last_error is not None:
            values["last_error"] = last_error
        if pids is not None:
            values["pids"] = list(pids)
        if state in (GroupState.restarting, GroupState.failed, GroupState.stopped):
            # Its processes are gone: their memory figures would only mislead.
            values.update(current_task_id=None, lease_owner=None, stats=None)
        with self._write() as (conn, _):
            conn.execute(update(G).where(G.c.id == group_id).values(**values))

    def group_ready(self, lease_owner: str, *, model_label: str, variant: str, task_types: Sequence[str],
                    pids: Sequence[int] | None = None) -> None:
        """The group loaded its model and waits for tasks (state idle)."""
        now = time.time()
        values: dict[str, Any] = {"state": GroupState.idle, "model_label": model_label, "variant": variant,
                                  "task_types": list(task_types), "heartbeat_at": now, "updated_at": now}
        if pids is not None:
            values["pids"] = list(pids)
        with self._write() as (conn, _):
            conn.execute(update(G).where(G.c.lease_owner == lease_owner).values(**values))

    def report_memory(self, lease_owner: str, rank: int, memory: dict[str, Any]) -> None:
        """Record one rank's device memory in its group's row (`stats.memory[rank]`): `memory` is
        {"device": "cuda:0", "used_bytes", "peak_bytes", "free_bytes", "total_bytes"} (see
        records.DeviceMemory). Ignored once `lease_owner` is no longer the group's incarnation."""
        with self._write() as (conn, _):
            self._merge_memory(conn, lease_owner, rank, memory)

    def _merge_memory(self, conn: Connection, lease_owner: str, rank: int, memory: dict[str, Any]) -> None:
        # Read-modify-write of one JSON value: the row lock (PostgreSQL) / the database write
        # lock (SQLite) keeps two ranks reporting at once from dropping each other's rows.
        row = conn.execute(
            select(G.c.id, G.c.stats).where(G.c.lease_owner == lease_owner).with_for_update()
        ).first()
        if row is None:
            return
        stats = dict(row.stats or {})
        stats["memory"] = {**(stats.get("memory") or {}), str(rank): {**memory, "at": time.time()}}
        conn.execute(update(G).where(G.c.id == row.id, G.c.lease_owner == lease_owner).values(stats=stats))

    def remove_group(self, group_id: str) -> None:
        """Forget a group (a supervisor that now runs fewer groups than before)."""
        with self._write() as (conn, _):
            conn.execute(G.delete().where(G.c.id == group_id))

    def get_group(self, group_id: str) -> GroupRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(G).where(G.c.id == group_id)).first()
        return None if row is None else GroupRecord.from_row(row, time.time(), self.settings.lease_seconds)


__all__ = ["StepAck", "TaskStore"]

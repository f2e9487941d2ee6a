"""The states of a task and of a worker group, and which moves between them are allowed."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    queued = "queued"  # accepted and waiting for a worker group
    running = "running"  # claimed by a group, which holds a lease on it
    completed = "completed"  # video and thumbnail written; `result` says where
    failed = "failed"  # ended with `error` (code + user-facing message)
    cancelled = "cancelled"  # stopped by its owner before it completed
    expired = "expired"  # completed, and its files were deleted after RESULT_TTL


ACTIVE = frozenset({TaskStatus.queued, TaskStatus.running})
TERMINAL = frozenset({TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled, TaskStatus.expired})

# Every status change the store makes is one of these (checked in TaskStore._move).
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.queued: frozenset({TaskStatus.running, TaskStatus.cancelled}),
    # running -> queued: its group died, was stopped by the watchdog, or gave it back at shutdown.
    TaskStatus.running: frozenset({TaskStatus.queued, TaskStatus.completed, TaskStatus.failed, TaskStatus.cancelled}),
    TaskStatus.completed: frozenset({TaskStatus.expired}),
    TaskStatus.failed: frozenset(),
    TaskStatus.cancelled: frozenset(),
    TaskStatus.expired: frozenset(),
}


def can_move(source: TaskStatus, target: TaskStatus) -> bool:
    return target in TRANSITIONS[source]


class GroupState(StrEnum):
    starting = "starting"  # processes started, model loading
    idle = "idle"  # loaded, waiting for a task
    busy = "busy"  # running `current_task_id`
    restarting = "restarting"  # died; the supervisor starts it again after a backoff
    failed = "failed"  # failed to start too many times in a row; needs an operator
    stopped = "stopped"  # its supervisor shut down cleanly


class ErrorCode(StrEnum):
    """Stable `error.code` values of failed tasks (clients may branch on them)."""

    invalid_request = "invalid_request"  # the request cannot run as asked; `error.field` names the input
    task_not_supported = "task_not_supported"  # the model does not serve this task type
    out_of_memory = "out_of_memory"  # the device ran out of memory; the message says what to lower
    timeout = "timeout"  # ran longer than TASK_TIMEOUT
    watchdog_timeout = "watchdog_timeout"  # stuck inside one step beyond WATCHDOG_SECONDS, on every attempt
    worker_lost = "worker_lost"  # its worker group died on every attempt (MAX_ATTEMPTS)
    write_failed = "write_failed"  # the video or thumbnail could not be written (disk full, permissions)
    internal_error = "internal_error"  # an unexpected error; the message carries its text

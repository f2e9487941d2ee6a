"""Errors of the task store, named for what went wrong (the API maps each to an HTTP status)."""

from __future__ import annotations


class TaskStoreError(Exception):
    """Base of the errors below."""


class TaskNotFound(TaskStoreError):
    """No such task (or it belongs to another owner). HTTP 404."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r}")
        self.task_id = task_id


class QueueFullError(TaskStoreError):
    """MAX_CONCURRENT_TASKS tasks are already queued or running. HTTP 429 with Retry-After."""

    def __init__(self, limit: int, active: int, retry_after: int) -> None:
        super().__init__(
            f"the service is at its limit of {limit} queued + running tasks (MAX_CONCURRENT_TASKS); "
            f"retry in about {retry_after} s"
        )
        self.limit = limit
        self.active = active
        self.retry_after = retry_after


class IdempotencyConflict(TaskStoreError):
    """The idempotency key was already used by this owner for a different request. HTTP 409."""

    def __init__(self, key: str, task_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for a different request (task {task_id})"
        )
        self.key = key
        self.task_id = task_id


class TaskStateError(TaskStoreError):
    """The task is in a state that does not allow the action. HTTP 409."""

    def __init__(self, task_id: str, status: str, action: str, hint: str = "") -> None:
        super().__init__(f"cannot {action} task {task_id}: it is {status}" + (f"; {hint}" if hint else ""))
        self.task_id = task_id
        self.status = status
        self.action = action


class SchemaError(TaskStoreError):
    """The database's schema is newer than this wanserve (or otherwise unknown to it)."""

"""Durable tasks: records, state machine, queue, leases, results retention, worker-group registry.

Never imports torch (the API imports this package). Entry point: `TaskStore`.
"""

from wanserve.tasks.errors import (
    IdempotencyConflict,
    QueueFullError,
    SchemaError,
    TaskNotFound,
    TaskStateError,
    TaskStoreError,
)
from wanserve.tasks.records import (
    DeviceMemory,
    GroupRecord,
    Progress,
    TaskError,
    TaskPage,
    TaskRecord,
    TaskResult,
)
from wanserve.tasks.status import ACTIVE, TERMINAL, ErrorCode, GroupState, TaskStatus
from wanserve.tasks.store import StepAck, TaskStore

__all__ = [
    "ACTIVE", "TERMINAL", "DeviceMemory", "ErrorCode", "GroupRecord", "GroupState", "IdempotencyConflict",
    "Progress", "QueueFullError", "SchemaError", "StepAck", "TaskError", "TaskNotFound", "TaskPage", "TaskRecord",
    "TaskResult", "TaskStateError", "TaskStatus", "TaskStore", "TaskStoreError",
]

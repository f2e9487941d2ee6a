"""What every route needs, built once per app (see app.create_app)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import Request

from wanserve.api.errors import ApiError, not_found
from wanserve.api.events import TaskChangeFeed
from wanserve.api.inputs import RemoteFetcher
from wanserve.api.metrics import ApiMetrics
from wanserve.api.served_model import ServedModels
from wanserve.settings import Settings
from wanserve.tasks import TaskStore

_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class ApiState:
    settings: Settings
    store: TaskStore
    models: ServedModels
    fetcher: RemoteFetcher
    feed: TaskChangeFeed
    metrics: ApiMetrics


def api_state(request: Request) -> ApiState:
    return request.app.state.api


def checked_task_id(task_id: str) -> str:
    """Task ids are short [A-Za-z0-9_-] strings; anything else cannot exist (404 without a query)."""
    if not _TASK_ID.match(task_id):
        raise not_found(task_id[:80])
    return task_id


def checked_cursor(after: str | None, name: str = "after") -> str | None:
    if after is not None and not _TASK_ID.match(after):
        raise ApiError(422, "invalid_request", f"{name}: not a task id", name)
    return after

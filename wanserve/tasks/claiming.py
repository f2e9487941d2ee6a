"""How a claimer (a worker group's leader) waits for its next task: woken, not polling.

It claims, and when the queue has nothing for it, sleeps on the store's wake-ups (PostgreSQL
LISTEN/NOTIFY or a local datagram). A short adaptive poll, 0.1 s growing to 2 s, only backs up a
wake-up that was lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from sqlalchemy.exc import SQLAlchemyError

from wanserve.tasks.records import TaskRecord
from wanserve.tasks.store import TaskStore
from wanserve.tasks.wakeup import Listener

log = logging.getLogger("wanserve.tasks")

IDLE_POLL_MIN, IDLE_POLL_MAX = 0.1, 2.0


def next_task(store: TaskStore, listener: Listener, *, lease_owner: str, task_types: Iterable[str],
              models: Iterable[str], keep_going: Callable[[], bool]) -> TaskRecord | None:
    """The next task claimed for `lease_owner`, waiting as long as `keep_going()`; None once it is false.

    `listener` must listen to the queue topic. A database error while claiming is logged and
    retried after the next wait (the database may be restarting)."""
    task_types, models = list(task_types), list(models)
    poll = IDLE_POLL_MIN
    while keep_going():
        try:
            task = store.claim(lease_owner=lease_owner, task_types=task_types, models=models)
        except SQLAlchemyError as e:
            log.warning("claim failed (%s); retrying", e)
            task = None
        if task is not None:
            listener.poll()  # wake-ups that arrived before this claim are about other tasks
            return task
        listener.wait(poll)
        poll = min(poll * 1.5, IDLE_POLL_MAX)
    return None

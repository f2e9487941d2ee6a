"""Rank 0's heartbeat thread: renews the group's registry row and its running task's lease.

It runs beside the engine, so a long step never lets the lease lapse. What it cannot see is a
step that never ends: the supervisor's watchdog compares the last *step* time instead. Each beat
also carries rank 0's device memory (`measure`), so /health and /metrics see it live, mid-task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from wanserve.tasks import TaskStore

log = logging.getLogger("wanserve.worker")


class Heartbeat:
    def __init__(self, store: TaskStore, lease_owner: str, lease_seconds: float,
                 measure: Callable[[], dict[str, Any]] | None = None) -> None:
        self._store = store
        self._measure = measure
        self._lease_owner = lease_owner
        self._lease_seconds = lease_seconds
        self.interval = max(0.2, min(lease_seconds / 3, 10.0))
        self._task_id: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lease_lost = threading.Event()  # the current task was taken from this group
        self._thread = threading.Thread(target=self._run, name="wanserve-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def track(self, task_id: str | None) -> None:
        """Renew the lease of `task_id` from now on (None: no task)."""
        with self._lock:
            self._task_id = task_id
            self.lease_lost.clear()

    def _run(self) -> None:
        first = True  # beat at once: the registry shows the loaded model's memory without waiting
        while first or not self._stop.wait(self.interval):
            first = False
            with self._lock:
                task_id = self._task_id
            try:
                held = self._store.heartbeat(self._lease_owner, task_id, self._lease_seconds, self.memory())
            except SQLAlchemyError as e:  # the database is unreachable for a moment: try again
                log.warning("heartbeat failed: %s", e)
                continue
            if task_id is not None and not held:
                with self._lock:
                    if self._task_id == task_id:
                        log.warning("lost the lease of task %s (it was given to another group)", task_id)
                        self.lease_lost.set()

    def memory(self) -> dict[str, Any] | None:
        """Rank 0's device memory now (None without `measure`, or when it cannot be read)."""
        if self._measure is None:
            return None
        try:
            return self._measure()
        except Exception as e:  # noqa: BLE001 - a driver hiccup must not stop the lease renewals
            log.warning("device memory not readable: %s", e)
            return None

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

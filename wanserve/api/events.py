"""GET /events/{task_id}: Server-Sent Events, one `status` event per change of the task, ending
after a terminal status.

The store's wake-ups (a datagram per change on one machine, NOTIFY on PostgreSQL) are heard by
ONE thread per API process (`TaskChangeFeed`), which sets an asyncio.Event per subscribed task on
the event loop. A stream therefore costs no thread and no database connection while it waits;
reading the task after a wake-up is one short query on the threadpool. Wake-ups are hints, so a
stream also re-reads its task every FALLBACK_POLL seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import anyio.to_thread

from wanserve.tasks import TaskNotFound, TaskRecord, TaskStore
from wanserve.tasks.wakeup import TASK

log = logging.getLogger("wanserve.api")

FALLBACK_POLL = 5.0  # seconds between re-reads when no wake-up came
KEEPALIVE = 15.0  # seconds between comments that keep proxies from closing an idle stream


class TaskChangeFeed:
    """Wake-ups of changed tasks, delivered to asyncio waiters (see the module docstring)."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Start listening (call from the event loop that will wait)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._listen, name="wanserve-api-events", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _listen(self) -> None:
        try:
            listener = self.store.listen([TASK])
        except Exception:  # noqa: BLE001 - streams still work by their fallback poll
            log.exception("cannot listen for task wake-ups; events fall back to polling")
            return
        try:
            while not self._stop.is_set():
                events = listener.wait(1.0)
                ids = {payload for topic, payload in events if topic == TASK}
                if ids and self._loop is not None and not self._loop.is_closed():
                    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                        self._loop.call_soon_threadsafe(self._wake, ids)
        finally:
            listener.close()

    def _wake(self, ids: set[str]) -> None:
        # "" means "something may have changed" (a reconnected PostgreSQL listener): wake all.
        targets = self._waiters.keys() if "" in ids else ids & self._waiters.keys()
        for task_id in list(targets):
            for event in self._waiters.get(task_id, ()):
                event.set()

    @contextlib.contextmanager
    def subscribe(self, task_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever `task_id` may have changed (the caller clears it)."""
        event = asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._waiters.get(task_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[task_id]

    @property
    def subscribers(self) -> int:
        return sum(len(v) for v in self._waiters.values())


def sse(event: str, data: str, event_id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return ("\n".join(lines) + "\n\n").encode()


async def status_events(
    store: TaskStore, first: TaskRecord, scope: str | None, changed: asyncio.Event,
    render: Callable[[TaskRecord], str], last_event_id: int | None = None,
) -> AsyncIterator[bytes]:
    """The stream of one task, from `first` (already read after subscribing, so no change is
    missed between the read and the subscription). `render(record) -> JSON text`."""
    yield b"retry: 2000\n\n"
    record = first
    sent = last_event_id if last_event_id is not None and last_event_id <= record.version else -1
    last_write = time.monotonic()
    while True:
        if record.version > sent:
            yield sse("status", render(record), str(record.version))
            sent = record.version
            last_write = time.monotonic()
        if record.terminal:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(FALLBACK_POLL, max(0.1, KEEPALIVE - (time.monotonic() - last_write)))):
                await changed.wait()
        changed.clear()
        try:
            record = await anyio.to_thread.run_sync(store.get, record.id, scope)
        except TaskNotFound:
            body = {"error": {"code": "not_found", "message": f"task {record.id} was deleted", "field": "task_id"}}
            yield sse("error", json.dumps(body))
            return
        if record.version <= sent and time.monotonic() - last_write >= KEEPALIVE:
            yield b": keep-alive\n\n"
            last_write = time.monotonic()

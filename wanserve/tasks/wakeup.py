"""Wake-ups between processes, so nobody polls the database on a fixed clock.

Topics: `queue` (a task became claimable), `task` (payload: the id of a task that changed),
`cancel` (payload: the id of a running task whose owner asked to stop it), and `group.<token>`
(rank 0 of a group waking its followers; local only).

- PostgreSQL: LISTEN/NOTIFY. `pg_notify` runs inside the writing transaction, so listeners hear
  it only once the change is committed, on any machine sharing the database.
- One machine (SQLite): Unix datagram sockets. Each listener binds a socket in a directory
  derived from the database file and registers itself per topic; a publisher sends one datagram
  to every registered listener after its transaction commits. Dead listeners are pruned.

Wake-ups are hints: a listener that misses one still finds the work by its (adaptive, short)
fallback poll, so correctness never depends on them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import select
import socket
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from sqlalchemy import Connection, text
from sqlalchemy.engine import URL

log = logging.getLogger("wanserve.tasks")

Event = tuple[str, str]  # (topic, payload)
QUEUE = "queue"
TASK = "task"
CANCEL = "cancel"
_PG_PREFIX = "wanserve_"


def group_topic(token: str) -> str:
    """The private topic of one group incarnation (rank 0 -> followers)."""
    return "group." + hashlib.sha256(token.encode()).hexdigest()[:16]


class Listener(ABC):
    """Receives the events of some topics. Not thread-safe: one consumer."""

    @abstractmethod
    def wait(self, timeout: float) -> list[Event]:
        """Block until at least one event arrives or `timeout` seconds pass; return all pending."""

    def poll(self) -> list[Event]:
        """Pending events, without blocking."""
        return self.wait(0.0)

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Wakeup(ABC):
    """Publishes events from write transactions and makes listeners."""

    @abstractmethod
    def publish(self, conn: Connection | None, events: Iterable[Event]) -> None:
        """Called inside the writing transaction (`conn`) before commit."""

    def after_commit(self, events: Iterable[Event]) -> None:
        """Called once the transaction that produced `events` committed."""

    @abstractmethod
    def listen(self, topics: Iterable[str]) -> Listener: ...

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- one machine
class LocalWakeup(Wakeup):
    """Datagram sockets under /tmp/wanserve-<hash of key>/ (short: socket paths max ~104 bytes)."""

    def __init__(self, key: str) -> None:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
        self.root = base / f"wanserve-{os.getuid()}-{digest}"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "s").mkdir(mode=0o700, exist_ok=True)
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._lock = threading.Lock()

    def publish(self, conn: Connection | None, events: Iterable[Event]) -> None:
        pass  # sent after commit, so a woken listener sees the change

    def after_commit(self, events: Iterable[Event]) -> None:
        self.send(events)

    def send(self, events: Iterable[Event]) -> None:
        by_topic: dict[str, list[bytes]] = {}
        for topic, payload in events:
            by_topic.setdefault(topic, []).append(f"{topic}\n{payload}".encode())
        for topic, messages in by_topic.items():
            folder = self.root / topic
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for name in names:
                address = str(self.root / "s" / name)
                for message in messages:
                    if not self._send_one(address, message):
                        # The listener is gone (its process died without unregistering).
                        with contextlib.suppress(FileNotFoundError):
                            (folder / name).unlink()
                        break

    def _send_one(self, address: str, message: bytes) -> bool:
        with self._lock:
            try:
                self._sender.sendto(message, address)
            except BlockingIOError:
                pass  # its buffer is full: it has wake-ups pending already
            except (ConnectionRefusedError, FileNotFoundError):
                return False
            except OSError as e:
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    log.debug("wake-up to %s failed: %s", address, e)
        return True

    def listen(self, topics: Iterable[str]) -> LocalListener:
        return LocalListener(self, list(topics))

    def close(self) -> None:
        self._sender.close()


class LocalListener(Listener):
    def __init__(self, wakeup: LocalWakeup, topics: list[str]) -> None:
        self.name = secrets.token_hex(8)
        self._root = wakeup.root
        self._address = wakeup.root / "s" / self.name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self._address))
        self._sock.setblocking(False)
        self._registrations = []
        for topic in topics:
            folder = wakeup.root / topic
            folder.mkdir(mode=0o700, exist_ok=True)
            entry = folder / self.name
            entry.touch()
            self._registrations.append(entry)

    def wait(self, timeout: float) -> list[Event]:
        if self._sock.fileno() < 0:
            return []
        events = self._drain()
        if events or timeout <= 0:
            return events
        ready, _, _ = select.select([self._sock], [], [], timeout)
        return self._drain() if ready else []

    def _drain(self) -> list[Event]:
        events: list[Event] = []
        while True:
            try:
                data = self._sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return events
            except OSError:
                return events
            topic, _, payload = data.decode(errors="replace").partition("\n")
            events.append((topic, payload))

    def close(self) -> None:
        for entry in self._registrations:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        self._registrations = []
        with contextlib.suppress(FileNotFoundError):
            self._address.unlink()
        self._sock.close()


# --------------------------------------------------------------------------- PostgreSQL
class PostgresWakeup(Wakeup):
    """LISTEN/NOTIFY on channels wanserve_<topic> (group topics stay local: see LocalWakeup)."""

    def __init__(self, url: URL, local: LocalWakeup) -> None:
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._local = local

    def publish(self, conn: Connection | None, events: Iterable[Event]) -> None:
        assert conn is not None
        for topic, payload in events:
            conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": _PG_PREFIX + topic.replace(".", "_"), "p": payload})

    def listen(self, topics: Iterable[str]) -> Listener:
        topics = list(topics)
        local = [t for t in topics if t.startswith("group.")]
        remote = [t for t in topics if not t.startswith("group.")]
        if local and not remote:
            return self._local.listen(local)
        if local:
            raise ValueError("a listener takes either group topics or database topics")
        return PostgresListener(self._conninfo, remote)

    @property
    def local(self) -> LocalWakeup:
        return self._local


class PostgresListener(Listener):
    """A dedicated autocommit connection; reconnects (and reports a wake-up) after a failure."""

    def __init__(self, conninfo: str, topics: list[str]) -> None:
        self._conninfo = conninfo
        self._topics = topics
        self._conn = None
        self._retry_at = 0.0
        self._connect()

    def _connect(self) -> bool:
        import psycopg

        try:
            self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            for topic in self._topics:
                self._conn.execute(f'LISTEN "{_PG_PREFIX}{topic}"')
            return True
        except psycopg.Error as e:
            log.warning("LISTEN connection failed (%s); falling back to polling until it is back", e)
            self._conn = None
            self._retry_at = time.monotonic() + 2.0
            return False

    def wait(self, timeout: float) -> list[Event]:
        import psycopg

        if self._conn is None:
            if time.monotonic() < self._retry_at or not self._connect():
                time.sleep(max(0.0, min(timeout, 0.5)))
                return []
            return [(t, "") for t in self._topics]  # we may have missed events while down
        try:
            events = [(n.channel[len(_PG_PREFIX):], n.payload)
                      for n in self._conn.notifies(timeout=timeout, stop_after=1)]
            if events:
                events += [(n.channel[len(_PG_PREFIX):], n.payload) for n in self._conn.notifies(timeout=0)]
            return events
        except psycopg.Error as e:
            log.warning("LISTEN connection lost (%s)", e)
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            self._retry_at = time.monotonic() + 1.0
            return []

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


# --------------------------------------------------------------------------- many waiters
class EventHub:
    """One listener thread per process, fanned out to any number of waiting threads.

    The API's Server-Sent-Event handlers wait here for changes of one task each, without a
    database connection or socket per client."""

    def __init__(self, wakeup: Wakeup, topics: Iterable[str] = (TASK,)) -> None:
        self._wakeup = wakeup
        self._topics = list(topics)
        self._lock = threading.Lock()
        self._waiters: dict[Event, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def wait(self, topic: str, payload: str, timeout: float) -> bool:
        """Block until `topic` fires with `payload` ("*": any payload) or `timeout`; True if it fired."""
        self._start()
        flag = threading.Event()
        key = (topic, payload)
        with self._lock:
            self._waiters.setdefault(key, set()).add(flag)
        try:
            return flag.wait(timeout)
        finally:
            with self._lock:
                waiting = self._waiters.get(key)
                if waiting is not None:
                    waiting.discard(flag)
                    if not waiting:
                        del self._waiters[key]

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wanserve-event-hub", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        listener = self._wakeup.listen(self._topics)
        try:
            while not self._stop.is_set():
                events = listener.wait(1.0)
                if not events:
                    continue
                with self._lock:
                    for topic, payload in events:
                        for key in ((topic, payload), (topic, "*")):
                            for flag in self._waiters.get(key, ()):
                                flag.set()
        finally:
            listener.close()

    def close(self) -> None:
        self._stop.set()

"""One SQLAlchemy engine for SQLite or PostgreSQL, write/read transactions, and migrations.

SQLite: WAL journal (readers never block the writer), and every write transaction starts with
BEGIN IMMEDIATE so concurrent writers queue on the busy timeout instead of failing on a lock
upgrade. PostgreSQL: plain READ COMMITTED transactions; claims use FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from wanserve.tasks.errors import SchemaError

log = logging.getLogger("wanserve.tasks")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
# pg_advisory_xact_lock keys ("wanserve" in ASCII, +n): serialise migrations and enqueues.
MIGRATION_LOCK = 0x77616E7365727665
ENQUEUE_LOCK = MIGRATION_LOCK + 1


class Database:
    """An engine plus `write()` / `read()` transactions that behave the same on both databases."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if not (self.is_postgres or self.is_sqlite):
            raise SchemaError(f"DATABASE_URL: unsupported database {self.url.get_backend_name()!r} "
                              "(use sqlite:///path or postgresql+psycopg://...)")
        if self.is_sqlite:
            self.engine = self._sqlite_engine()
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True, pool_size=5, max_overflow=10)

    def _sqlite_engine(self) -> Engine:
        database = self.url.database
        if not database or database == ":memory:":
            raise SchemaError("DATABASE_URL: an SQLite queue must be a file (several processes share it)")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            self.url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("wanserve_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that will write; committed on success, rolled back on error."""
        with self.engine.connect() as conn:
            conn.execution_options(wanserve_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def migrate(self) -> str:
        """Bring the schema to the newest revision shipped in this package; returns it.

        Several processes may start at once: the upgrade runs under a write lock (SQLite) or an
        advisory lock (PostgreSQL), and re-checks the revision once it holds the lock."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        script = ScriptDirectory.from_config(config)
        head = script.get_current_head()
        assert head is not None
        known = {rev.revision for rev in script.walk_revisions()}

        def current(conn: Connection) -> str | None:
            return MigrationContext.configure(conn).get_current_revision()

        with self.read() as conn:
            if current(conn) == head:
                return head
        with self.write() as conn:
            if self.is_postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            revision = current(conn)
            if revision is not None and revision not in known:
                raise SchemaError(
                    f"the queue database is at schema revision {revision!r}, which this wanserve does not "
                    "know (it was created by a newer version); upgrade wanserve"
                )
            if revision != head:
                log.info("migrating the queue schema from %s to %s", revision or "empty", head)
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        return head

    def dispose(self) -> None:
        self.engine.dispose()

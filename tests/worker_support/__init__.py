"""Helpers for the task-service tests: queue databases per test, a real service in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

HOOKS_DIR = Path(__file__).parent / "hooks"
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- databases
def postgres_schema_url(base_url: str, schema: str) -> str:
    """The same database, with every table in `schema` (its own search_path)."""
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}options=-csearch_path%3D{schema}"


def create_schema(base_url: str) -> tuple[str, str]:
    import sqlalchemy as sa

    schema = f"wanserve_test_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(base_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return schema, postgres_schema_url(base_url, schema)


def drop_schema(base_url: str, schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(base_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


# ----------------------------------------------------------------------------- a service
class ServiceProcess:
    """`wanserve worker` (or `serve`) in its own session, with the test fault hooks available."""

    def __init__(self, data_dir: Path, env: dict[str, str], command: str = "worker") -> None:
        self.data_dir = data_dir
        self.env = env
        self.command = command
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir / f"service-{uuid.uuid4().hex[:6]}.log"

    @property
    def worker_id(self) -> str:
        return self.env["WORKER_ID"]

    def start(self) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WANSERVE_", "DATABASE_URL"))}
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join([str(HOOKS_DIR), str(REPO)])
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "wanserve", self.command], env=env, cwd=self.data_dir,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM the supervisor; its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill_everything(self) -> None:
        """kill -9 the supervisor and every process it started (the whole session)."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def stop(self) -> None:
        if self.alive():
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)


def service_env(data_dir: Path, model_dir: Path, database_url: str | None, **settings: Any) -> dict[str, str]:
    from conftest import free_port

    env = {
        "DATA_DIR": str(data_dir), "MODEL_CKPT_DIR": str(model_dir), "LOG_LEVEL": "info",
        "WORKER_ID": f"test-{uuid.uuid4().hex[:6]}", "DEVICES": "auto",
        "SERVER_PORT": str(free_port()),  # `serve` also starts the HTTP API
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update({k.upper(): str(v) for k, v in settings.items()})
    return env


def ready_groups(store: Any, worker_id: str, count: int = 1) -> list[Any]:
    groups = [g for g in store.list_groups(worker_id) if g.state in ("idle", "busy")]
    return groups if len(groups) >= count else []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

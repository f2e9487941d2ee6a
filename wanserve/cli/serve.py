"""`wanserve serve` (HTTP API + supervisor) and `wanserve worker` (a supervisor alone).

Several machines can serve one queue: run `wanserve serve` on one (or behind a load balancer)
and `wanserve worker` on the others, all with the same DATABASE_URL (PostgreSQL) and a results
path they share (RESULTS_DIR).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Annotated, Any

import typer

from wanserve.cli.common import console, fail, settings_or_exit
from wanserve.settings import Settings, SettingsError


def _settings(**overrides: Any) -> Settings:
    return settings_or_exit(**overrides)


def worker(
    model: Annotated[Path | None, typer.Option(help="Model folder (MODEL_CKPT_DIR); default: the demo.")] = None,
    devices: Annotated[str | None, typer.Option(help="DEVICES: 'auto', '0,1,2,3', or on a CPU a count.")] = None,
    worker_groups: Annotated[int | None, typer.Option(help="WORKER_GROUPS (0: devices / group size).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="DATA_DIR (queue database, results).")] = None,
    database_url: Annotated[str | None, typer.Option(help="DATABASE_URL (PostgreSQL to share a queue).")] = None,
    worker_id: Annotated[str | None, typer.Option(help="WORKER_ID shown in /health (default: host name).")] = None,
) -> None:
    """Run a supervisor and its worker groups, without the HTTP API (e.g. on another machine)."""
    settings = _settings(model_ckpt_dir=model, devices=devices, worker_groups=worker_groups, data_dir=data_dir,
                         database_url=database_url, worker_id=worker_id)
    raise typer.Exit(run_supervisor(settings))


def run_supervisor(settings: Settings) -> int:
    """The supervisor in this process; its exit code (2: a setting or the database is wrong)."""
    from sqlalchemy.exc import OperationalError

    from wanserve.tasks import SchemaError
    from wanserve.worker.logs import configure_logging
    from wanserve.worker.supervisor import Supervisor, SupervisorError

    configure_logging(settings.log_level, "supervisor")
    try:
        return Supervisor(settings).run()
    except (SupervisorError, SettingsError, SchemaError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    except OperationalError as e:
        console.print(f"[red]error:[/red] cannot use the queue database (DATABASE_URL / DATA_DIR): {e.orig}")
        return 2


def _supervisor_process(settings: Settings) -> None:
    if sys.platform.startswith("linux"):  # die with `serve` (kill -9 included): no orphaned supervisor
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    raise SystemExit(run_supervisor(settings))


def serve(
    host: Annotated[str | None, typer.Option(help="SERVER_HOST to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="SERVER_PORT.")] = None,
    model: Annotated[Path | None, typer.Option(help="Model folder (MODEL_CKPT_DIR); default: the demo.")] = None,
    devices: Annotated[str | None, typer.Option(help="DEVICES: 'auto', '0,1,2,3', or on a CPU a count.")] = None,
    worker_groups: Annotated[int | None, typer.Option(help="WORKER_GROUPS (0: devices / group size).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="DATA_DIR (queue database, results).")] = None,
    database_url: Annotated[str | None, typer.Option(help="DATABASE_URL (PostgreSQL to share a queue).")] = None,
) -> None:
    """Run the service: the HTTP API and a supervisor with its worker groups, each in its own process."""
    settings = _settings(server_host=host, server_port=port, model_ckpt_dir=model, devices=devices,
                         worker_groups=worker_groups, data_dir=data_dir, database_url=database_url)
    from sqlalchemy.exc import OperationalError

    from wanserve.tasks import SchemaError, TaskStore

    try:  # create / migrate the queue once, before any process uses it
        TaskStore(settings).close()
    except SchemaError as e:
        raise fail(str(e), 2) from None
    except OperationalError as e:
        raise fail(f"cannot use the queue database (DATABASE_URL / DATA_DIR): {e.orig}", 2) from None
    service = Service(settings)
    raise typer.Exit(service.run())


class Service:
    """The processes of `wanserve serve`; SIGTERM / SIGINT are passed on and awaited."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes: dict[str, BaseProcess] = {}
        self._signals = 0

    def start_supervisor(self) -> None:
        context = multiprocessing.get_context("spawn")
        process = context.Process(target=_supervisor_process, args=(self.settings,), name="wanserve-supervisor")
        process.start()
        self.processes["supervisor"] = process

    def start_api(self) -> None:
        """The HTTP API process (uvicorn serving wanserve.api, torch-free) on SERVER_HOST:SERVER_PORT."""
        from wanserve.api.server import start_api_process

        self.processes["api"] = start_api_process(self.settings)

    def run(self) -> int:
        """Until every process exited; a process that exits unexpectedly stops the others."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.start_supervisor()
        self.start_api()
        forwarded = 0
        while True:
            if self._signals > forwarded:  # pass each SIGTERM / Ctrl-C on (a second one hurries them)
                forwarded = self._signals
                self._send_all(signal.SIGTERM)
            exited = {name: p.exitcode for name, p in self.processes.items() if not p.is_alive()}
            if exited and not self._signals:
                name, code = next(iter(exited.items()))
                console.print(f"[red]error:[/red] the {name} process exited (code {code}); stopping the service")
                self._signals = forwarded = 1
                self._send_all(signal.SIGTERM)
            if len(exited) == len(self.processes):
                codes = [128 - c if c and c < 0 else (c or 0) for c in exited.values()]
                return max(codes)
            alive = [p.sentinel for p in self.processes.values() if p.is_alive()]
            multiprocessing.connection.wait(alive, 0.5)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals += 1

    def _send_all(self, signum: signal.Signals) -> None:
        for process in self.processes.values():
            if process.is_alive() and process.pid:
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

"""The API process: uvicorn serving `create_app(settings)` on SERVER_HOST:SERVER_PORT.

`run_api(settings)` runs it in this process (`wanserve api`); `start_api_process(settings)`
starts it as a child process (what `wanserve serve` does next to its supervisor). Neither
imports torch: the API process never touches a device.
"""

from __future__ import annotations

import logging
import multiprocessing
from multiprocessing.process import BaseProcess

from wanserve.settings import Settings

log = logging.getLogger("wanserve.api")

# Open event streams would otherwise hold a SIGTERM'd server for as long as their tasks run.
GRACEFUL_SHUTDOWN_SECONDS = 5


def run_api(settings: Settings) -> int:
    """Serve until SIGTERM / Ctrl-C; the exit code (1 if the port cannot be bound)."""
    import uvicorn

    from wanserve.api.app import create_app

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s [api] %(name)s: %(message)s")
    logging.getLogger("wanserve").setLevel(settings.log_level.upper())
    config = uvicorn.Config(
        create_app(settings), host=settings.server_host, port=settings.server_port,
        log_level=settings.log_level, proxy_headers=True, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        access_log=settings.log_level == "debug",
    )
    server = uvicorn.Server(config)
    shown = f"[{settings.server_host}]" if ":" in settings.server_host else settings.server_host
    log.info("wanserve API on http://%s:%d (web page at /, API docs at /docs)", shown, settings.server_port)
    server.run()
    return 0 if server.started else 1


def _api_process(settings: Settings) -> None:
    raise SystemExit(run_api(settings))


def start_api_process(settings: Settings) -> BaseProcess:
    """The API in a new (spawned, torch-free) process, started."""
    process = multiprocessing.get_context("spawn").Process(target=_api_process, args=(settings,), name="wanserve-api")
    process.start()
    return process

"""Helpers for the API tests: the API on a real port (uvicorn in a thread), a local image server,
test images, and a worker service in subprocesses (the task-service engineer's ServiceProcess)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from conftest import free_port
from PIL import Image
from worker_support import ServiceProcess, service_env, wait_for

from wanserve.settings import Settings


class LiveApi:
    """`create_app(settings)` served by uvicorn on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, settings: Settings, **app_options: Any) -> None:
        from wanserve.api.app import create_app

        self.settings = settings
        self.app = create_app(settings, **app_options)
        self.port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=2, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LiveApi":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def client(self, key: str | None = None, **options: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=options.pop("timeout", 30.0), **options)


def png_bytes(width: int = 48, height: int = 40, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of an error answer, checking the shape every error must have."""
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "field"} <= set(error), error
    assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str), error
    return error


class ImageServer:
    """A local HTTP server: `routes` maps a path to (status, headers, body) or a callable of the
    handler (for slow or redirecting answers). Counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Any] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                outer.hits[path] = outer.hits.get(path, 0) + 1
                route = outer.routes.get(path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if callable(route):
                    route(self)
                    return
                status, headers, body = route
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any], float]]:
    """(event name, data, arrival time) of each event of a streaming SSE response."""
    name, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield name, json.loads("\n".join(data)), time.perf_counter()
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def poll_status(client: httpx.Client, task_id: str, timeout: float = 90.0) -> dict[str, Any]:
    """GET /status until the task is terminal (as the original clients do)."""
    def done() -> dict[str, Any] | None:
        status = client.get(f"/status/{task_id}").json()
        return status if status["status"] in ("completed", "failed", "cancelled") else None

    return wait_for(done, timeout, f"task {task_id}", interval=0.1)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def running_service(data: Path, demo_model: Path, **settings: Any) -> Iterator[tuple[ServiceProcess, str]]:
    """`wanserve serve` (API + one worker group on the demo model) on a free port, once /health is 200."""
    port = free_port()
    svc = ServiceProcess(data, service_env(data, demo_model, None, server_port=port, **settings),
                         command="serve").start()
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        if not svc.alive():
            raise AssertionError(f"the service exited:\n{svc.log()[-3000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(serving, 120, "the service to serve", interval=0.25)
        yield svc, url
    finally:
        svc.stop()

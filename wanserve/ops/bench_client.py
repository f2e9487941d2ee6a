"""Load generator for any server that speaks the original API (POST /submit, GET /status/{id}).

Each simulated user submits a request, polls its status until it ends, and records what it saw:
submit latency, end-to-end latency, queue wait and the server's own time per stage (when the
status reports `timings`). The summary gives success rate, latency p50/p95/max and throughput.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import httpx

TERMINAL = {"completed", "failed", "cancelled"}


@dataclass
class BenchConfig:
    url: str = "http://127.0.0.1:8088"
    requests: int = 3
    users: int = 1
    prompt: str = "A cat walks on the grass, realistic style."
    image_url: str | None = None
    image_size: str = "512*512"
    num_frames: int = 41
    infer_steps: int = 30
    guidance_scale: float = 3.0
    seed: int | None = 42
    api_key: str | None = None
    timeout: float = 1800.0
    poll_interval: float = 0.5


@dataclass
class RequestRecord:
    index: int
    task_id: str | None = None
    status: str = "not_submitted"
    http_status: int | None = None
    error: str | None = None
    submit_seconds: float | None = None
    latency_seconds: float | None = None
    queue_seconds: float | None = None
    server_timings: dict[str, float] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _payload(config: BenchConfig, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": config.prompt,
        "image_size": config.image_size,
        "num_frames": config.num_frames,
        "guidance_scale": config.guidance_scale,
        "infer_steps": config.infer_steps,
    }
    if config.image_url:
        body["image_url"] = config.image_url
    if config.seed is not None:
        body["seed"] = config.seed + index
    return body


def run_one(client: httpx.Client, config: BenchConfig, index: int) -> RequestRecord:
    record = RequestRecord(index=index)
    start = time.perf_counter()
    try:
        response = client.post("/submit", json=_payload(config, index))
    except httpx.HTTPError as e:
        record.status, record.error = "submit_error", f"{type(e).__name__}: {e}"
        return record
    record.submit_seconds = time.perf_counter() - start
    record.http_status = response.status_code
    if response.status_code >= 400:
        record.status = "rejected"
        record.error = response.text[:500]
        return record
    record.task_id = str(response.json().get("task_id"))
    record.status = "submitted"
    deadline = start + config.timeout
    status: dict[str, Any] = {}
    while time.perf_counter() < deadline:
        try:
            reply = client.get(f"/status/{record.task_id}")
        except httpx.HTTPError as e:
            record.error = f"status poll: {type(e).__name__}: {e}"
            time.sleep(config.poll_interval)
            continue
        if reply.status_code == 200:
            status = reply.json()
            record.status = str(status.get("status", "unknown"))
            if record.status in TERMINAL:
                break
        time.sleep(config.poll_interval)
    else:
        record.status = "client_timeout"
    record.latency_seconds = time.perf_counter() - start
    if record.status == "failed":
        error = status.get("error") or {}
        record.error = error.get("message") if isinstance(error, dict) else str(error)
    created, started = _parse_time(status.get("created_at")), _parse_time(status.get("started_at"))
    if created and started:
        record.queue_seconds = max(0.0, (started - created).total_seconds())
    timings = status.get("timings")
    if isinstance(timings, dict):
        record.server_timings = {str(k): float(v) for k, v in timings.items() if isinstance(v, int | float)}
    return record


def run_bench(config: BenchConfig, on_record: Callable[[RequestRecord], None] | None = None) -> dict[str, Any]:
    """Send `config.requests` requests from `config.users` concurrent users; the summary and records."""
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    lock = threading.Lock()
    records: list[RequestRecord] = []

    def task(index: int) -> None:
        with httpx.Client(base_url=config.url, headers=headers, timeout=60.0) as client:
            record = run_one(client, config, index)
        with lock:
            records.append(record)
            if on_record:
                on_record(record)

    wall_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, config.users)) as pool:
        list(pool.map(task, range(config.requests)))
    wall = time.perf_counter() - wall_start
    records.sort(key=lambda r: r.index)
    return {"config": asdict(config), "summary": summarize(records, wall), "requests": [asdict(r) for r in records]}


def summarize(records: list[RequestRecord], wall_seconds: float) -> dict[str, Any]:
    done = [r for r in records if r.status == "completed"]
    latencies = [r.latency_seconds for r in done if r.latency_seconds is not None]
    queue = [r.queue_seconds for r in done if r.queue_seconds is not None]
    stages: dict[str, list[float]] = {}
    for r in done:
        for stage, seconds in r.server_timings.items():
            stages.setdefault(stage, []).append(seconds)
    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r.status] = outcomes.get(r.status, 0) + 1
    return {
        "requests": len(records),
        "completed": len(done),
        "success_rate": len(done) / len(records) if records else 0.0,
        "outcomes": outcomes,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_max_s": max(latencies) if latencies else None,
        "queue_wait_p50_s": percentile(queue, 50),
        "throughput_per_min": 60.0 * len(done) / wall_seconds if wall_seconds > 0 else 0.0,
        "wall_seconds": wall_seconds,
        "server_stage_mean_s": {k: sum(v) / len(v) for k, v in stages.items()},
    }

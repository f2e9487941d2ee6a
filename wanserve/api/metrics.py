"""GET /metrics: Prometheus text.

- HTTP: requests by method, route template and status; time to the response's first byte.
- Queue: tasks per status now (queued and running are the queue depth), worker groups per state.
- Outcomes and durations: each scrape reads the tasks that finished since the previous one
  (`TaskStore.finished_since`) and counts / observes them, so the counters and histograms are
  the usual "since this process started" series without the API watching every task.
- Step time: from the same finished tasks (denoise seconds / steps, recorded by the workers).
- Device memory: what each live group's processes last reported to the registry (heartbeat).
The API never touches a device: everything here comes from the task store.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wanserve.tasks import GroupState, TaskRecord, TaskStatus, TaskStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))
# From a tiny model on a CPU (~0.05 s) to a 14B model at 720p on one device (~30-60 s).
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, float("inf"))
MEMORY_LABELS = ("group", "device")


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("wanserve_http_requests", "HTTP requests answered.",
                                     ["method", "route", "status"], registry=r)
        self.http_latency = Histogram("wanserve_http_request_duration_seconds",
                                      "Seconds from request to the first byte of the answer.",
                                      ["method", "route"], buckets=HTTP_BUCKETS, registry=r)
        self.tasks = Gauge("wanserve_tasks", "Tasks in the store per status (queued + running = queue depth).",
                           ["status"], registry=r)
        self.queue_depth = Gauge("wanserve_queue_depth", "Tasks waiting or running.", ["state"], registry=r)
        self.groups = Gauge("wanserve_worker_groups", "Worker groups per state.", ["state"], registry=r)
        self.finished = Counter("wanserve_tasks_finished", "Tasks that reached a final state, by outcome.",
                                ["outcome"], registry=r)
        self.failed = Counter("wanserve_tasks_failed", "Failed tasks by error code.", ["code"], registry=r)
        self.task_seconds = Histogram("wanserve_task_duration_seconds",
                                      "Seconds from submission to completion (completed tasks).",
                                      buckets=DURATION_BUCKETS, registry=r)
        self.stage_seconds = Histogram("wanserve_task_stage_seconds",
                                       "Seconds per stage of completed tasks (queue, encode, denoise, ...).",
                                       ["stage"], buckets=DURATION_BUCKETS, registry=r)
        self.step_seconds = Histogram("wanserve_denoise_step_seconds",
                                      "Seconds per denoising step of completed tasks (each task's steps "
                                      "observed at its mean: denoise seconds / steps).",
                                      buckets=STEP_BUCKETS, registry=r)
        self.memory_used = Gauge("wanserve_device_memory_used_bytes",
                                 "Memory a worker group's processes hold on a device (allocator reserve on a "
                                 "GPU / NPU, resident memory on the CPU).", MEMORY_LABELS, registry=r)
        self.memory_peak = Gauge("wanserve_device_memory_peak_bytes",
                                 "The most memory a worker group's processes have held on a device since they "
                                 "started.", MEMORY_LABELS, registry=r)
        self.memory_free = Gauge("wanserve_device_memory_free_bytes",
                                 "Free memory of the whole device (all processes), as the group last saw it.",
                                 MEMORY_LABELS, registry=r)
        self.memory_total = Gauge("wanserve_device_memory_total_bytes",
                                  "Memory capacity of the device (system memory for the CPU).",
                                  MEMORY_LABELS, registry=r)
        self._lock = threading.Lock()
        self._since = time.time()  # tasks finishing from now on are counted
        self._seen_at_since: set[str] = set()

    def render(self, store: TaskStore) -> bytes:
        """Refresh the store-derived series and render every series (blocking: run off the loop)."""
        with self._lock:
            self._refresh_gauges(store)
            self._follow_outcomes(store)
            return generate_latest(self.registry)

    def _refresh_gauges(self, store: TaskStore) -> None:
        counts = store.counts()
        for status in TaskStatus:
            self.tasks.labels(status.value).set(counts.get(status, 0))
        for state in (TaskStatus.queued, TaskStatus.running):
            self.queue_depth.labels(state.value).set(counts.get(state, 0))
        states = {state: 0 for state in GroupState}
        groups = store.list_groups()
        for group in groups:
            states[group.state] += 1
        for state, count in states.items():
            self.groups.labels(state.value).set(count)
        # Only the groups that report now: a removed or stopped group's series disappear.
        gauges = (self.memory_used, self.memory_peak, self.memory_free, self.memory_total)
        for gauge in gauges:
            gauge.clear()
        for group in groups:
            if not group.responsive:  # its machine may be gone: last figures would pass for current
                continue
            for device in group.memory:
                labels = (group.id, device.device)
                self.memory_used.labels(*labels).set(device.used_bytes)
                self.memory_peak.labels(*labels).set(device.peak_bytes)
                if device.free_bytes is not None:
                    self.memory_free.labels(*labels).set(device.free_bytes)
                if device.total_bytes is not None:
                    self.memory_total.labels(*labels).set(device.total_bytes)

    def _follow_outcomes(self, store: TaskStore) -> None:
        while True:
            batch = store.finished_since(self._since)
            fresh = [t for t in batch if t.id not in self._seen_at_since]
            for task in fresh:
                outcome = TaskStatus.completed if task.status is TaskStatus.expired else task.status
                self.finished.labels(outcome.value).inc()
                if task.status is TaskStatus.failed and task.error is not None:
                    self.failed.labels(task.error.code).inc()
                if outcome is TaskStatus.completed and task.finished_at is not None:
                    self.task_seconds.observe(max(0.0, (task.finished_at - task.created_at).total_seconds()))
                    for stage, seconds in task.timings.items():
                        self.stage_seconds.labels(stage).observe(max(0.0, float(seconds)))
                    self._observe_steps(task)
            if not batch:
                return
            # Move the watermark to the newest finish seen; remember who finished exactly then
            # (the next query starts at that instant again).
            newest = max(t.finished_at.timestamp() for t in batch if t.finished_at is not None)
            at_newest = {t.id for t in batch if t.finished_at is not None and t.finished_at.timestamp() == newest}
            self._seen_at_since = at_newest | (self._seen_at_since if newest == self._since else set())
            self._since = newest
            if not fresh:
                return


    def _observe_steps(self, task: TaskRecord) -> None:
        steps = task.result.steps if task.result is not None else 0
        denoise = task.timings.get("denoise")
        if steps > 0 and denoise is not None:
            # One observation per step keeps _count = steps and _sum = denoise seconds exact.
            per_step = max(0.0, float(denoise)) / steps
            for _ in range(steps):
                self.step_seconds.observe(per_step)


class HttpMetricsMiddleware:
    """Counts requests and times them to the first byte (so long streams do not skew latency)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.metrics.http_latency.labels(_method_of(scope), _route_of(scope)).observe(
                    time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.http_requests.labels(_method_of(scope), _route_of(scope), str(status)).inc()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method_of(scope: Scope) -> str:
    method = str(scope.get("method", ""))
    return method if method in _METHODS else "OTHER"


def _route_of(scope: Scope) -> str:
    """The route template ('/status/{task_id}'), never the raw path (bounded label values)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    raw = scope.get("path", "")
    return "/static" if raw.startswith("/static/") else "unmatched"

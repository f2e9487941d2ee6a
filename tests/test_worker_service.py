"""A real service (supervisor + one worker group process) on the demo model, on SQLite and on
PostgreSQL: what a user sees for good, bad, cancelled, slow, out-of-memory and stuck tasks.

Faults come from tests/worker_support/hooks (prompt markers [oom], [slow=S], [hang]) loaded into
the worker process through PYTHONPATH; the service code is the production code.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import decode_mp4
from worker_support import ServiceProcess, create_schema, drop_schema, ready_groups, service_env, wait_for

from wanserve.request import GenerationRequest
from wanserve.settings import load_settings
from wanserve.tasks import GroupState, TaskRecord, TaskStatus, TaskStore

pytestmark = pytest.mark.slow  # real processes

TASK_TIMEOUT = 6.0
WATCHDOG_SECONDS = 5.0
RESULT_TTL = 12.0  # short: the last test waits for the first result to expire


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def service(request, tmp_path_factory, demo_data_dir):
    """One service for the module; tests run in file order and leave its group idle."""
    data = tmp_path_factory.mktemp(f"service-{request.param}")
    url, schema, base = None, None, None
    if request.param == "postgres":
        base = request.getfixturevalue("postgres_url")
        schema, url = create_schema(base)
    env = service_env(data, demo_data_dir / "demo-model", url, task_timeout=TASK_TIMEOUT,
                      watchdog_seconds=WATCHDOG_SECONDS, max_attempts=1, lease_seconds=5, result_ttl=RESULT_TTL)
    # `wanserve serve` on PostgreSQL (the supervisor in a child process), `wanserve worker` on SQLite.
    svc = ServiceProcess(data, env, command="serve" if request.param == "postgres" else "worker").start()
    # The API side's settings match the service's (MAX_ATTEMPTS is recorded on each task at submit).
    store = TaskStore(load_settings(data_dir=data, database_url=url, max_attempts=1))
    try:
        wait_for(lambda: ready_groups(store, svc.worker_id) or not svc.alive(), 120, "the worker group")
        assert svc.alive(), svc.log()
        yield svc, store
    finally:
        svc.stop()
        store.close()
        if schema:
            drop_schema(base, schema)


def submit(store: TaskStore, prompt: str = "a red fox", **fields) -> TaskRecord:
    values: dict = {"size": "32*32", "num_frames": 5, "infer_steps": 3, "seed": 7}
    values.update(fields)
    return store.enqueue(GenerationRequest(prompt=prompt, **values))


def finished(store: TaskStore, task_id: str, timeout: float = 60) -> TaskRecord:
    return wait_for(lambda: (r := store.get(task_id)).terminal and r, timeout, f"task {task_id} to finish")


def the_group(store: TaskStore, svc: ServiceProcess):
    [group] = store.list_groups(svc.worker_id)
    return group


def test_task_completes_with_a_playable_video(service):
    svc, store = service
    task = submit(store, size="64*32", num_frames=9)
    done = finished(store, task.id)
    assert done.status is TaskStatus.completed, done.error
    result = done.result
    frames, info = decode_mp4(result.video_path)
    assert frames.shape == (9, 32, 64, 3) and info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert (result.frames, result.width, result.height, result.seed) == (9, 64, 32, 7)
    assert result.bytes == Path(result.video_path).stat().st_size
    assert Path(result.thumbnail_path).stat().st_size == result.thumbnail_bytes > 0
    assert Path(result.video_path).parent == svc.data_dir / "results" / task.id
    assert "random weights" in result.model_label
    assert {"queue", "encode", "denoise", "decode", "write", "total"} <= set(done.timings)
    assert done.progress.step == done.progress.total == 3 and done.attempts == 1
    group = the_group(store, svc)
    assert group.state is GroupState.idle and group.tasks_served >= 1 and group.pids


def test_idle_group_starts_a_task_within_100_ms(service):
    _, store = service
    latencies = []
    for i in range(6):
        time.sleep(0.4)  # idle: waiting for a wake-up
        done = finished(store, submit(store, f"latency {i}", infer_steps=1).id)
        latencies.append((done.started_at - done.created_at).total_seconds())
    assert statistics.median(latencies) < 0.1, latencies


def test_request_the_model_cannot_run_fails_naming_the_field(service):
    _, store = service
    done = finished(store, submit(store, image="/no/such/image.png").id)
    assert done.status is TaskStatus.failed
    assert (done.error.code, done.error.field) == ("invalid_request", "image")
    assert "image" in done.error.message


def test_out_of_memory_fails_the_task_and_the_group_keeps_serving(service):
    svc, store = service
    pid = the_group(store, svc).pids
    oom = finished(store, submit(store, "[oom] too big").id)
    assert oom.status is TaskStatus.failed and oom.error.code == "out_of_memory"
    assert "Lower the size or num_frames" in oom.error.message and "T5_CPU" in oom.error.message
    after = finished(store, submit(store, "fine again").id)
    assert after.status is TaskStatus.completed
    assert the_group(store, svc).pids == pid  # same process: no restart


def test_write_error_fails_the_task_clearly(service):
    svc, store = service
    task_id = store.new_task_id()
    blocker = svc.data_dir / "results" / task_id
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the task's results folder should be")
    done = finished(store, store.enqueue(GenerationRequest(prompt="x", size="32*32", num_frames=5, infer_steps=2),
                                         task_id=task_id).id)
    assert done.status is TaskStatus.failed and done.error.code == "write_failed"
    assert str(blocker) in done.error.message and "RESULTS_DIR" in done.error.message


def test_cancel_stops_a_running_task_within_a_step_and_frees_the_group(service):
    svc, store = service
    task = submit(store, "[slow=0.3] long", infer_steps=40)
    wait_for(lambda: store.get(task.id).progress.step >= 2, 30, "the task to run")
    asked = time.monotonic()
    store.cancel(task.id)
    done = finished(store, task.id)
    stopped_after = time.monotonic() - asked
    assert done.status is TaskStatus.cancelled and done.result is None and done.error is None
    assert done.progress.step < 10 and stopped_after < 2.0  # within a step (0.3 s) plus bookkeeping
    assert not (svc.data_dir / "results" / task.id / "video.mp4").exists()
    assert finished(store, submit(store, "next").id).status is TaskStatus.completed


def test_task_timeout_fails_at_the_next_step(service):
    _, store = service
    done = finished(store, submit(store, "[slow=0.4] too slow", infer_steps=60).id)
    assert done.status is TaskStatus.failed and done.error.code == "timeout"
    assert "TASK_TIMEOUT=6" in done.error.message and "stopped at step" in done.error.message
    ran = (done.finished_at - done.started_at).total_seconds()
    assert TASK_TIMEOUT <= ran < TASK_TIMEOUT + 3


def test_watchdog_kills_a_stuck_group_and_restarts_it(service):
    svc, store = service
    if svc.command == "serve":
        pytest.skip("the watchdog reads the group registry the same way on both databases; "
                    "run on SQLite only to keep the suite short")
    before = the_group(store, svc)
    stuck = submit(store, "[hang] stuck in a step")
    done = finished(store, stuck.id, timeout=60)
    assert done.status is TaskStatus.failed and done.error.code == "watchdog_timeout"
    assert "WATCHDOG_SECONDS=5" in done.error.message and "MAX_ATTEMPTS=1" in done.error.message
    after = wait_for(lambda: (g := the_group(store, svc)).restarts > before.restarts
                     and g.state is GroupState.idle and g, 120, "the restarted group")
    assert after.restarts == before.restarts + 1 and after.pids != before.pids
    assert "WATCHDOG_SECONDS" in after.last_error
    assert finished(store, submit(store, "after the restart").id).status is TaskStatus.completed


def test_results_are_deleted_after_result_ttl(service):
    svc, store = service
    first = store.list_tasks(status=["completed", "expired"], oldest_first=True, limit=1).items[0]
    expired = wait_for(lambda: (r := store.get(first.id)).status is TaskStatus.expired and r, RESULT_TTL + 30,
                       "the first result to expire")
    assert expired.expired_at is not None
    assert not Path(first.result.video_path).exists() and not (svc.data_dir / "results" / first.id).exists()
    assert np.isfinite((expired.expired_at - expired.finished_at).total_seconds())

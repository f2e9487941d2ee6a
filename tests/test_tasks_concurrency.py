"""Several processes on one queue: no task runs twice, migrations race safely, wake-ups are fast."""

from __future__ import annotations

import multiprocessing
import statistics
import time

import pytest
from worker_support import claimers, create_schema, drop_schema

from wanserve.request import GenerationRequest
from wanserve.settings import load_settings
from wanserve.tasks import TaskStatus, TaskStore

pytestmark = pytest.mark.slow  # real processes

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(params=["sqlite", "postgres"])
def settings_kwargs(request, tmp_path):
    kwargs = {"data_dir": tmp_path / "data", "max_concurrent_tasks": 1000}
    if request.param == "sqlite":
        yield kwargs
        return
    base = request.getfixturevalue("postgres_url")
    schema, url = create_schema(base)
    yield {**kwargs, "database_url": url}
    drop_schema(base, schema)


def run_all(target, args_list, timeout: float = 120) -> None:
    processes = [SPAWN.Process(target=target, args=args) for args in args_list]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout)
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"


def test_concurrent_claims_never_run_a_task_twice(settings_kwargs, tmp_path):
    store = TaskStore(load_settings(**settings_kwargs))
    ids = {store.enqueue(GenerationRequest(prompt=f"p{i}")).id for i in range(90)}
    outs = [tmp_path / f"claims-{i}.txt" for i in range(3)]
    start = SPAWN.Barrier(len(outs))  # every claimer imported and connected, then all go at once
    args = [(settings_kwargs, f"proc{i}", 2, str(out), start) for i, out in enumerate(outs)]
    processes = [SPAWN.Process(target=claimers.drain_queue, args=a) for a in args]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
        assert p.exitcode == 0
    claims = [line for out in outs for line in out.read_text().split("\n") if line]
    assert len(claims) == len(ids) and set(claims) == ids  # each task claimed exactly once
    assert sum(1 for out in outs if out.read_text()) >= 2  # the claimers really competed
    records = [store.get(task_id) for task_id in ids]
    assert all(r.status is TaskStatus.completed and r.attempts == 1 for r in records)
    store.close()


def test_schema_is_created_once_when_processes_start_together(settings_kwargs):
    run_all(claimers.open_store, [(settings_kwargs,)] * 4)
    store = TaskStore(load_settings(**settings_kwargs))
    assert store.db.migrate() == "0002"
    assert store.counts()[TaskStatus.queued] == 0
    store.close()


def test_idle_group_picks_up_a_task_within_100_ms(settings_kwargs):
    store = TaskStore(load_settings(**settings_kwargs))
    ready, stop = SPAWN.Event(), SPAWN.Event()
    group = SPAWN.Process(target=claimers.idle_group, args=(settings_kwargs, ready, stop))
    group.start()
    try:
        assert ready.wait(60)
        latencies = []
        for i in range(12):
            time.sleep(0.3)  # the group is idle, deep in its fallback wait
            task = store.enqueue(GenerationRequest(prompt=f"p{i}"))
            deadline = time.monotonic() + 10
            while (record := store.get(task.id)).started_at is None and time.monotonic() < deadline:
                time.sleep(0.005)
            latencies.append((record.started_at - record.created_at).total_seconds())
    finally:
        stop.set()
        group.join(10)
    assert statistics.median(latencies) < 0.1, latencies
    store.close()


def test_a_cancel_racing_a_claim_is_never_lost(settings_kwargs):
    """Every cancel ends as `cancelled` or as a running task with `cancel_requested` (its group
    stops it at the next step), even while claimers take tasks at the same moment."""
    import threading

    store = TaskStore(load_settings(**settings_kwargs))
    ids = [store.enqueue(GenerationRequest(prompt=f"p{i}")).id for i in range(40)]
    claimed: list[str] = []

    def claimer() -> None:
        while (task := store.claim(lease_owner="race/g0#x", task_types=["t2v"], models=["demo"])) is not None:
            claimed.append(task.id)

    threads = [threading.Thread(target=claimer) for _ in range(2)]
    for t in threads:
        t.start()
    for task_id in ids:
        store.cancel(task_id)
    for t in threads:
        t.join()
    for task_id in ids:
        record = store.get(task_id)
        assert record.status is TaskStatus.cancelled or (
            record.status is TaskStatus.running and record.cancel_requested and task_id in claimed
        ), record
    store.close()

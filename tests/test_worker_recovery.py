"""Crashes and shutdowns of a real service lose nothing (SQLite and PostgreSQL).

kill -9 of a worker group mid-task, kill -9 of the whole service mid-queue followed by a restart
on the same data, and SIGTERM with one task that finishes within the grace period and one that
is given back to the queue.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from worker_support import ServiceProcess, create_schema, drop_schema, ready_groups, service_env, wait_for

from wanserve.request import GenerationRequest
from wanserve.settings import load_settings
from wanserve.tasks import GroupState, TaskRecord, TaskStatus, TaskStore

pytestmark = pytest.mark.slow  # real processes


@pytest.fixture(params=["sqlite", "postgres"])
def queue(request, tmp_path):
    """(backend, DATABASE_URL or None, a store on it)."""
    url, schema, base = None, None, None
    if request.param == "postgres":
        base = request.getfixturevalue("postgres_url")
        schema, url = create_schema(base)
    store = TaskStore(load_settings(data_dir=tmp_path / "data", database_url=url))
    yield request.param, url, store
    store.close()
    if schema:
        drop_schema(base, schema)


@pytest.fixture
def services():
    started: list[ServiceProcess] = []
    yield started
    for svc in started:
        svc.stop()


def submit(store: TaskStore, prompt: str, **fields) -> TaskRecord:
    values: dict = {"size": "32*32", "num_frames": 5, "infer_steps": 3, "seed": 3}
    values.update(fields)
    return store.enqueue(GenerationRequest(prompt=prompt, **values))


def finished(store: TaskStore, task_id: str, timeout: float = 90) -> TaskRecord:
    return wait_for(lambda: (r := store.get(task_id)).terminal and r, timeout, f"task {task_id} to finish")


def running_at_step(store: TaskStore, task_id: str, step: int = 2) -> TaskRecord:
    return wait_for(lambda: (r := store.get(task_id)).status is TaskStatus.running and r.progress.step >= step
                    and r, 90, f"task {task_id} to reach step {step}")


def test_killed_group_and_killed_service_lose_no_task(queue, services, tmp_path, demo_data_dir):
    backend, url, store = queue
    data = tmp_path / "data"
    env = service_env(data, demo_data_dir / "demo-model", url, lease_seconds=3, max_attempts=3)
    svc = ServiceProcess(data, env).start()
    services.append(svc)
    [group] = wait_for(lambda: ready_groups(store, svc.worker_id), 120, "the worker group")

    # 1. kill -9 the group in the middle of a task: it is restarted and the task completes there.
    task = submit(store, "[slow=0.25] killed mid-task", infer_steps=16)
    running_at_step(store, task.id)
    os.kill(group.pids[0], signal.SIGKILL)
    done = finished(store, task.id)
    assert done.status is TaskStatus.completed and done.attempts == 2
    restarted = store.list_groups(svc.worker_id)[0]
    assert restarted.restarts == 1 and restarted.pids != group.pids and "SIGKILL" in restarted.last_error

    # 2. kill -9 the whole service (supervisor and group) with a task running and three queued.
    tasks = [submit(store, "[slow=0.25] running when killed", infer_steps=16)]
    tasks += [submit(store, f"queued {i}") for i in range(3)]
    running_at_step(store, tasks[0].id)
    svc.kill_everything()
    assert store.get(tasks[0].id).status is TaskStatus.running  # nobody is left to say otherwise
    assert [store.get(t.id).status for t in tasks[1:]] == [TaskStatus.queued] * 3

    # 3. Start again on the same data. SQLite: same WORKER_ID, so the supervisor gives its previous
    #    life's task back at once. PostgreSQL: a new WORKER_ID (as if another machine took over),
    #    so the task comes back when its lease (LEASE_SECONDS=3) expires.
    if backend == "postgres":
        env = {**env, "WORKER_ID": env["WORKER_ID"] + "-b"}
    restarted_at = time.monotonic()
    again = ServiceProcess(data, env).start()
    services.append(again)
    results = [finished(store, t.id, timeout=120) for t in tasks]
    assert [r.status for r in results] == [TaskStatus.completed] * 4, [r.error for r in results]
    assert results[0].attempts == 2 and all(r.attempts == 1 for r in results[1:])
    assert time.monotonic() - restarted_at < 60  # everything left running recovered within a minute


# The shutdown path writes through the same store calls on both databases: SQLite only, to keep
# the suite short (two groups load the model).
@pytest.mark.parametrize("queue", ["sqlite"], indirect=True)
def test_sigterm_finishes_short_tasks_and_gives_long_ones_back(queue, services, tmp_path, demo_data_dir):
    _, url, store = queue
    data = tmp_path / "data"
    env = service_env(data, demo_data_dir / "demo-model", url, worker_groups=2, shutdown_grace=15)
    svc = ServiceProcess(data, env).start()
    services.append(svc)
    wait_for(lambda: ready_groups(store, svc.worker_id, count=2), 180, "two worker groups")
    long = submit(store, "[slow=1.0] longer than the grace period", infer_steps=60)
    short = submit(store, "[slow=0.5] finishes within the grace period", infer_steps=12)
    running_at_step(store, long.id, 1)
    running_at_step(store, short.id, 1)
    asked = time.monotonic()
    assert svc.terminate(timeout=60) == 0
    assert time.monotonic() - asked < 15 + 10  # the grace period, not the long task's 60 s
    assert store.get(short.id).status is TaskStatus.completed
    back = store.get(long.id)
    assert back.status is TaskStatus.queued and back.attempts == 0 and back.lease_owner is None
    assert back.progress.step == 0
    assert {g.state for g in store.list_groups(svc.worker_id)} == {GroupState.stopped}


def test_a_model_that_cannot_load_is_reported_and_the_supervisor_keeps_going(services, tmp_path):
    data, broken = tmp_path / "data", tmp_path / "not-a-model"
    broken.mkdir()
    (broken / "README.txt").write_text("no weights here")
    store = TaskStore(load_settings(data_dir=data))
    svc = ServiceProcess(data, service_env(data, broken, None)).start()
    services.append(svc)
    try:
        [group] = wait_for(lambda: [g for g in store.list_groups(svc.worker_id)
                                    if g.state is GroupState.restarting and g.last_error], 120, "the failed start")
        assert "could not load the model" in group.last_error and str(broken) in group.last_error
        assert svc.alive()  # the supervisor keeps serving the registry and retries with a backoff
        task = submit(store, "waits for a working group")
        assert store.get(task.id).status is TaskStatus.queued
    finally:
        store.close()

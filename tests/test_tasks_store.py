"""TaskStore on real SQLite files and real PostgreSQL schemas: the state machine a user relies on."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from worker_support import create_schema, drop_schema

from wanserve.request import Adjustment, GenerationRequest
from wanserve.settings import load_settings
from wanserve.tasks import (
    ErrorCode,
    GroupState,
    IdempotencyConflict,
    QueueFullError,
    SchemaError,
    TaskError,
    TaskNotFound,
    TaskResult,
    TaskStateError,
    TaskStatus,
    TaskStore,
)

T2V = ["t2v"]
MODELS = ["wan2.2-ti2v-5b", "demo"]


@pytest.fixture(params=["sqlite", "postgres"])
def queue_url(request, tmp_path):
    """None: the default SQLite file under DATA_DIR; otherwise a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield None
        return
    base = request.getfixturevalue("postgres_url")
    schema, url = create_schema(base)
    yield url
    drop_schema(base, schema)


@pytest.fixture
def make_store(tmp_path, queue_url):
    stores: list[TaskStore] = []

    def make(**overrides) -> TaskStore:
        settings = load_settings(data_dir=tmp_path / "data", database_url=queue_url, **overrides)
        store = TaskStore(settings)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store) -> TaskStore:
    return make_store()


def request(prompt: str = "a cat", **fields) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, size="32*32", num_frames=5, infer_steps=2, seed=1, **fields)


def claim(store: TaskStore, owner: str = "host/g0#a", task_types=T2V, models=MODELS, lease: float | None = None):
    return store.claim(lease_owner=owner, task_types=task_types, models=models, lease_seconds=lease)


def result_for(store: TaskStore, task_id: str) -> TaskResult:
    folder = store.results_dir(task_id)
    folder.mkdir(parents=True, exist_ok=True)  # the inputs may already be in it
    (folder / "video.mp4").write_bytes(b"mp4")
    (folder / "thumbnail.jpg").write_bytes(b"jpg")
    return TaskResult(video_path=str(folder / "video.mp4"), thumbnail_path=str(folder / "thumbnail.jpg"),
                      frames=5, width=32, height=32, fps=24, bytes=3, thumbnail_bytes=3, seed=1, steps=2,
                      model_label="demo")


def test_queue_order_is_priority_then_fifo_with_positions(store):
    low = [store.enqueue(request(f"low {i}")) for i in range(3)]
    high = store.enqueue(request("high"), priority=5)
    assert [t.queue_position for t in low] == [1, 2, 3]
    assert high.queue_position == 1
    assert [store.get(t.id).queue_position for t in low] == [2, 3, 4]
    order = [claim(store).id for _ in range(4)]
    assert order == [high.id] + [t.id for t in low]
    assert claim(store) is None
    running = store.get(high.id)
    assert running.status is TaskStatus.running and running.queue_position is None
    assert running.attempts == 1 and running.lease_owner == "host/g0#a" and running.group_id == "host/g0"


def test_claim_takes_only_what_the_group_can_serve(store):
    i2v = store.enqueue(request(image="/in/cat.png"))
    other_model = store.enqueue(request("for another model"), model="wan2.1-t2v-14b")
    mine = store.enqueue(request("for this model"), model="wan2.2-ti2v-5b")
    assert claim(store).id == mine.id  # i2v and the other model's task are not for a t2v-only demo group
    assert claim(store) is None
    assert claim(store, task_types=["t2v", "i2v"]).id == i2v.id
    assert store.get(other_model.id).status is TaskStatus.queued


def test_idempotency_key_returns_the_first_task_and_rejects_another_request(store):
    first = store.enqueue(request(), idempotency_key="k1", owner="alice")
    again = store.enqueue(request(), idempotency_key="k1", owner="alice", task_id=store.new_task_id())
    assert again.id == first.id
    other_owner = store.enqueue(request(), idempotency_key="k1", owner="bob")
    assert other_owner.id != first.id
    with pytest.raises(IdempotencyConflict) as info:
        store.enqueue(request("something else"), idempotency_key="k1", owner="alice")
    assert info.value.task_id == first.id
    assert store.counts()[TaskStatus.queued] == 2


def test_backpressure_refuses_beyond_max_concurrent_tasks(make_store):
    store = make_store(max_concurrent_tasks=2)
    a = store.enqueue(request("a"))
    store.enqueue(request("b"))
    with pytest.raises(QueueFullError) as info:
        store.enqueue(request("c"))
    assert info.value.limit == 2 and info.value.retry_after >= 1
    assert "MAX_CONCURRENT_TASKS" in str(info.value)
    task = claim(store)
    assert task.id == a.id
    store.complete(task.id, "host/g0#a", result_for(store, task.id))
    assert store.enqueue(request("c")).status is TaskStatus.queued  # a slot was freed


def test_cancel_queued_at_once_and_running_through_its_group(store):
    queued = store.enqueue(request("q"))
    running = store.enqueue(request("r"))
    cancelled = store.cancel(queued.id)
    assert cancelled.status is TaskStatus.cancelled and cancelled.finished_at is not None
    task = claim(store)
    assert task.id == running.id
    listener = store.listen(["cancel"])
    try:
        asked = store.cancel(task.id)
        assert asked.status is TaskStatus.running and asked.cancel_requested
        assert ("cancel", task.id) in listener.wait(2.0)  # the group hears it without polling
    finally:
        listener.close()
    ack = store.report_progress(task.id, "host/g0#a", 1, 2, "denoise")
    assert ack.lease_held and ack.cancel_requested
    assert store.finish_cancelled(task.id, "host/g0#a")
    assert store.get(task.id).status is TaskStatus.cancelled
    assert store.cancel(task.id).status is TaskStatus.cancelled  # finished: unchanged
    with pytest.raises(TaskNotFound):
        store.cancel("no-such-task")


def test_expired_lease_requeues_then_fails_after_max_attempts(make_store):
    store = make_store(max_attempts=2)
    task = store.enqueue(request())
    first = claim(store, owner="a/g0#1", lease=0.05)
    time.sleep(0.1)
    [back] = store.recover_expired_leases()
    assert back.status is TaskStatus.queued and back.attempts == 1 and back.lease_owner is None
    second = claim(store, owner="b/g0#2", lease=0.05)
    assert second.id == first.id == task.id and second.attempts == 2
    assert not store.complete(task.id, "a/g0#1", result_for(store, task.id))  # the first group lost it
    time.sleep(0.1)
    [failed] = store.recover_expired_leases()
    assert failed.status is TaskStatus.failed
    assert failed.error.code == ErrorCode.worker_lost
    assert "MAX_ATTEMPTS=2" in failed.error.message and "LEASE_SECONDS" in failed.error.message


def test_release_gives_back_without_counting_at_shutdown_and_cancel_wins(store):
    a = store.enqueue(request("a"))
    claim(store, owner="h/g0#1")
    [back] = store.release("h/g0#1", code=ErrorCode.worker_lost, reason="shutdown", count_attempt=False)
    assert back.id == a.id and back.status is TaskStatus.queued and back.attempts == 0
    claim(store, owner="h/g0#2")
    store.cancel(a.id)
    [ended] = store.release("h/g0#2", code=ErrorCode.worker_lost, reason="group died")
    assert ended.status is TaskStatus.cancelled
    b = store.enqueue(request("b"))
    claim(store, owner="h/g1#3")
    [orphan] = store.release(group_id="h/g1", code=ErrorCode.worker_lost, reason="service killed")
    assert orphan.id == b.id and orphan.status is TaskStatus.queued and orphan.attempts == 1


def test_complete_and_fail_record_what_the_api_shows(store):
    done = store.enqueue(request("done"), adjustments=[Adjustment(field="size", requested="30*30", used="32*32",
                                                                  reason="grid")])
    bad = store.enqueue(request("bad"))
    task = claim(store)
    assert store.heartbeat("host/g0#a", task.id)
    result = result_for(store, task.id)
    assert store.complete(task.id, "host/g0#a", result, timings={"denoise": 1.5})
    record = store.get(done.id)
    assert record.status is TaskStatus.completed and record.result == result
    assert record.timings == {"denoise": 1.5} and record.adjustments[0].used == "32*32"
    assert record.finished_at >= record.started_at >= record.created_at
    assert record.lease_owner is None
    task = claim(store)
    assert store.fail(task.id, "host/g0#a", TaskError(code="invalid_request", message="unreadable", field="image"))
    failed = store.get(bad.id)
    assert failed.status is TaskStatus.failed
    assert (failed.error.code, failed.error.field, failed.error.message) == ("invalid_request", "image", "unreadable")
    assert not store.heartbeat("host/g0#a", task.id)  # finished: the lease is gone


def test_list_pages_filters_owner_and_counts(store):
    ids = [store.enqueue(request(f"t{i}"), owner="alice" if i % 2 else "bob").id for i in range(7)]
    page = store.list_tasks(limit=3)
    assert [t.id for t in page.items] == ids[::-1][:3] and page.has_more
    rest = store.list_tasks(limit=10, after=page.next_after)
    assert [t.id for t in rest.items] == ids[::-1][3:] and not rest.has_more
    alice = store.list_tasks(owner="alice", limit=10)
    assert {t.id for t in alice.items} == set(ids[1::2])
    assert all(t.queue_position is not None for t in alice.items)
    claim(store)
    assert [t.id for t in store.list_tasks(status="running").items] == [ids[0]]
    assert len(store.list_tasks(status=["queued", "running"], limit=50).items) == 7
    counts = store.counts()
    assert counts[TaskStatus.queued] == 6 and counts[TaskStatus.running] == 1 and counts[TaskStatus.failed] == 0
    assert store.counts(owner="alice")[TaskStatus.queued] == 3
    with pytest.raises(TaskNotFound):
        store.get(ids[0], owner="alice")  # bob's task is invisible to alice


def test_delete_removes_record_and_files(store):
    task = store.enqueue(request())
    inputs = store.inputs_dir(task.id)
    inputs.mkdir(parents=True)
    (inputs / "image.png").write_bytes(b"png")
    claim(store)
    with pytest.raises(TaskStateError, match="cancel it first"):
        store.delete(task.id)
    store.complete(task.id, "host/g0#a", result_for(store, task.id))
    store.delete(task.id)
    assert not inputs.exists() and not store.results_dir(task.id).exists()
    with pytest.raises(TaskNotFound):
        store.get(task.id)


def test_results_expire_after_result_ttl(make_store):
    store = make_store(result_ttl=0.2)
    done = store.enqueue(request("done"))
    bad = store.enqueue(request("bad"))
    claim(store)
    store.complete(done.id, "host/g0#a", result_for(store, done.id))
    claim(store)
    store.fail(bad.id, "host/g0#a", TaskError(code="timeout", message="too long"))
    assert store.expire_results() == []  # not old enough yet
    time.sleep(0.3)
    assert sorted(store.expire_results()) == sorted([done.id, bad.id])
    assert not store.results_dir(done.id).exists()
    expired = store.get(done.id)
    assert expired.status is TaskStatus.expired and expired.expired_at is not None
    kept = store.get(bad.id)
    assert kept.status is TaskStatus.failed and kept.expired_at is not None and kept.error.code == "timeout"
    assert store.expire_results() == []


def test_wait_for_change_wakes_on_progress_without_polling(store):
    task = store.enqueue(request())
    claim(store)
    seen = store.get(task.id)

    def progress_later() -> None:
        time.sleep(0.3)
        store.report_progress(task.id, "host/g0#a", 1, 2, "denoise")

    thread = threading.Thread(target=progress_later)
    start = time.monotonic()
    thread.start()
    changed = store.wait_for_change(task.id, seen.version, timeout=10)
    waited = time.monotonic() - start
    thread.join()
    assert changed.version > seen.version and changed.progress.step == 1 and changed.progress.stage == "denoise"
    assert waited < 0.25 + 0.3  # the first fallback poll would only come at 0.25 s: the wake-up did it
    same = store.wait_for_change(task.id, changed.version, timeout=0.2)
    assert same.version == changed.version


def test_group_registry_follows_the_group(store):
    store.register_group("h/g0", supervisor="h", host="h", state=GroupState.starting, lease_owner="h/g0#a",
                         supervisor_pid=123, devices=[0])
    store.set_group_state("h/g0", None, pids=[456])
    store.group_ready("h/g0#a", model_label="demo (random weights)", variant="wan2.2-ti2v-5b", task_types=["t2v"])
    [group] = store.list_groups()
    assert (group.state, group.pids, group.variant, group.responsive) == (GroupState.idle, [456], "wan2.2-ti2v-5b", True)
    task = store.enqueue(request())
    claim(store, owner="h/g0#a")
    busy = store.get_group("h/g0")
    assert busy.state is GroupState.busy and busy.current_task_id == task.id
    store.complete(task.id, "h/g0#a", result_for(store, task.id))
    idle = store.get_group("h/g0")
    assert idle.state is GroupState.idle and idle.current_task_id is None and idle.tasks_served == 1
    store.set_group_state("h/g0", GroupState.restarting, last_error="rank 0 was killed by SIGKILL", pids=[])
    assert store.get_group("h/g0").last_error == "rank 0 was killed by SIGKILL"
    assert store.list_groups(supervisor="other") == []


def test_group_memory_is_per_device_from_each_rank_and_forgotten_with_the_processes(store):
    store.register_group("h/g0", supervisor="h", host="h", state=GroupState.starting, lease_owner="h/g0#a")
    store.group_ready("h/g0#a", model_label="demo", variant="wan2.2-ti2v-5b", task_types=["t2v"])
    cpu = {"device": "cpu", "free_bytes": 6 << 30, "total_bytes": 8 << 30}
    store.report_memory("h/g0#a", 1, {**cpu, "used_bytes": 300, "peak_bytes": 500})
    assert store.heartbeat("h/g0#a", memory={**cpu, "used_bytes": 100, "peak_bytes": 200})
    store.report_memory("h/g0#a", 2, {"device": "cuda:1", "used_bytes": 7, "peak_bytes": 9,
                                      "free_bytes": 1, "total_bytes": 10})
    store.report_memory("h/g0#stale", 0, {**cpu, "used_bytes": 1 << 40, "peak_bytes": 1 << 40})  # old incarnation
    [host, cuda] = store.get_group("h/g0").memory  # sorted by device
    assert (host.device, host.ranks, host.used_bytes, host.peak_bytes) == ("cpu", [0, 1], 400, 700)
    assert (host.free_bytes, host.total_bytes) == (6 << 30, 8 << 30) and host.updated_at is not None
    assert (cuda.device, cuda.ranks, cuda.used_bytes, cuda.total_bytes) == ("cuda:1", [2], 7, 10)
    assert store.heartbeat("h/g0#a", memory={**cpu, "used_bytes": 150, "peak_bytes": 200})
    assert store.get_group("h/g0").memory[0].used_bytes == 450  # rank 0 replaced, rank 1 kept
    store.set_group_state("h/g0", GroupState.restarting, last_error="killed")
    assert store.get_group("h/g0").memory == []


def test_tasks_survive_a_new_store_on_the_same_database(make_store):
    first = make_store()
    task = first.enqueue(request("durable"))
    first.close()
    second = make_store()
    assert second.get(task.id).request.prompt == "durable"
    assert second.claim(lease_owner="x/g0#1", task_types=T2V, models=MODELS).id == task.id


def test_migrated_schema_matches_the_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from wanserve.tasks.schema import Base

    with store.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert store.db.migrate() == "0002"  # idempotent


def test_unknown_schema_revision_is_refused(tmp_path):
    settings = load_settings(data_dir=tmp_path)
    TaskStore(settings).close()
    import sqlalchemy as sa

    engine = sa.create_engine(settings.queue_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaError, match="newer version"):
        TaskStore(settings)


def test_tasks_package_never_imports_torch():
    code = ("import sys, wanserve.tasks, wanserve.tasks.store, wanserve.tasks.wakeup; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent,
                         check=False)
    assert out.returncode == 0, out.stderr

"""Task-service numbers: claim throughput, pickup latency and the service overhead of one task.

    python benchmarks/queue.py                                    # SQLite (+ PostgreSQL if reachable)
    python benchmarks/queue.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
    python benchmarks/queue.py --skip-service                     # the queue only, no model

1. claim throughput: N queued tasks, P processes x T threads claiming and completing them
   (what worker groups do, minus the work), tasks per second.
2. pickup latency: an idle claimer waiting for wake-ups as a group does; a task is submitted
   every ~0.2 s; latency = the task's started_at - created_at (both written by the store).
3. service overhead: a real `wanserve worker` on the demo model runs small tasks one after the
   other; overhead = end-to-end (created -> finished, and as a client waiting on the store sees
   it) minus the engine's own time (encode + denoise + decode).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named queue.py: keep its folder off sys.path so `import queue` finds the stdlib's.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any

from wanserve.request import GenerationRequest
from wanserve.settings import load_settings
from wanserve.tasks import TaskResult, TaskStore
from wanserve.tasks.claiming import next_task
from wanserve.tasks.wakeup import QUEUE

SPAWN = multiprocessing.get_context("spawn")
TYPES, MODELS = ["t2v"], ["bench"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _fake_result(task_id: str) -> TaskResult:
    return TaskResult(video_path=f"/bench/{task_id}.mp4", thumbnail_path=f"/bench/{task_id}.jpg", frames=1, width=2,
                      height=2, fps=1, bytes=1, thumbnail_bytes=1, seed=0, steps=1, model_label="bench")


def _claimer(kwargs: dict[str, Any], name: str, threads: int, start: Any) -> None:
    store = TaskStore(load_settings(**kwargs), migrate=False)
    start.wait()

    def run(i: int) -> None:
        owner = f"{name}-{i}/g0#b"
        while (task := store.claim(lease_owner=owner, task_types=TYPES, models=MODELS)) is not None:
            store.complete(task.id, owner, _fake_result(task.id))

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    store.close()


def _idle_group(kwargs: dict[str, Any], ready: Any, stop: Any) -> None:
    store = TaskStore(load_settings(**kwargs), migrate=False)
    listener = store.listen([QUEUE])
    ready.set()
    # The worker groups' own wait-and-claim, so the latency measured is theirs.
    while (task := next_task(store, listener, lease_owner="idle/g0#b", task_types=TYPES, models=MODELS,
                             keep_going=lambda: not stop.is_set())) is not None:
        store.complete(task.id, "idle/g0#b", _fake_result(task.id))
    listener.close()
    store.close()


def bench_claims(kwargs: dict[str, Any], tasks: int, processes: int, threads: int) -> None:
    store = TaskStore(load_settings(**kwargs))
    start = time.perf_counter()
    for i in range(tasks):
        store.enqueue(GenerationRequest(prompt=f"bench {i}"))
    enqueue_rate = tasks / (time.perf_counter() - start)
    go = SPAWN.Event()
    procs = [SPAWN.Process(target=_claimer, args=(kwargs, f"p{i}", threads, go)) for i in range(processes)]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let them import and connect before the clock starts
    start = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - start
    done = store.counts()["completed"]
    store.close()
    print(f"  enqueue: {enqueue_rate:7.0f} tasks/s (one client)")
    print(f"  claim + complete: {done / elapsed:7.0f} tasks/s ({processes} processes x {threads} threads, "
          f"{done} tasks, {elapsed:.2f} s)")


def bench_pickup(kwargs: dict[str, Any], samples: int) -> None:
    store = TaskStore(load_settings(**kwargs))
    ready, stop = SPAWN.Event(), SPAWN.Event()
    group = SPAWN.Process(target=_idle_group, args=(kwargs, ready, stop))
    group.start()
    ready.wait(60)
    latencies = []
    for i in range(samples):
        time.sleep(0.2)
        task = store.enqueue(GenerationRequest(prompt=f"pickup {i}"))
        while (record := store.get(task.id)).started_at is None:
            time.sleep(0.002)
        latencies.append((record.started_at - record.created_at).total_seconds() * 1000)
    stop.set()
    group.join(10)
    store.close()
    print(f"  pickup latency: p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, "
          f"max {max(latencies):.1f} ms ({samples} tasks, idle group waiting on wake-ups)")


def bench_service(kwargs: dict[str, Any], samples: int) -> None:
    data = Path(kwargs["data_dir"])
    env = {**os.environ, "DATA_DIR": str(data), "WORKER_ID": f"bench-{uuid.uuid4().hex[:6]}", "LOG_LEVEL": "warning"}
    if kwargs.get("database_url"):
        env["DATABASE_URL"] = kwargs["database_url"]
    service = subprocess.Popen([sys.executable, "-m", "wanserve", "worker"], env=env, start_new_session=True)
    store = TaskStore(load_settings(**kwargs))
    try:
        while not any(g.state in ("idle", "busy") for g in store.list_groups(env["WORKER_ID"])):
            if service.poll() is not None:
                raise SystemExit("the service exited")
            time.sleep(0.2)
        rows = []
        for i in range(samples + 1):
            time.sleep(0.3)
            submitted = time.perf_counter()
            task = store.enqueue(GenerationRequest(prompt=f"overhead {i}", size="32*32", num_frames=5,
                                                   infer_steps=3, seed=i))
            record = task
            while not record.terminal:
                record = store.wait_for_change(task.id, record.version, timeout=30)
            client = time.perf_counter() - submitted
            if i == 0:
                continue  # the first task also builds the pipelines: not representative
            assert record.status == "completed", record.error
            engine = sum(record.timings.get(k, 0.0) for k in ("encode", "denoise", "decode"))
            e2e = (record.finished_at - record.created_at).total_seconds()
            rows.append((e2e, client, engine, record.timings.get("write", 0.0)))
        e2e, client, engine, write = (statistics.median(c) for c in zip(*rows))
        print(f"  one demo task (32*32, 5 frames, 3 steps), median of {samples}:")
        print(f"    engine (encode+denoise+decode) {engine * 1000:6.1f} ms | mp4+thumbnail write {write * 1000:6.1f} ms")
        print(f"    end to end (store timestamps) {e2e * 1000:6.1f} ms -> overhead {1000 * (e2e - engine):6.1f} ms "
              f"({1000 * (e2e - engine - write):.1f} ms without the write)")
        print(f"    end to end (client waiting on the store) {client * 1000:6.1f} ms -> overhead "
              f"{1000 * (client - engine):6.1f} ms")
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
        store.close()


def postgres_schema(url: str) -> tuple[str, str]:
    import sqlalchemy as sa

    schema = f"wanserve_bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return schema, f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def drop_schema(url: str, schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--service-samples", type=int, default=10)
    parser.add_argument("--skip-service", action="store_true")
    args = parser.parse_args()

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, python "
          f"{platform.python_version()}")
    backends: list[tuple[str, str | None]] = [("SQLite (WAL)", None)]
    try:
        import sqlalchemy as sa

        sa.create_engine(args.postgres, connect_args={"connect_timeout": 2}).connect().close()
        backends.append(("PostgreSQL", args.postgres))
    except Exception as e:  # noqa: BLE001
        print(f"PostgreSQL not reachable ({type(e).__name__}: {e}); SQLite only")

    for name, url in backends:
        print(f"\n{name}")
        for part in ("claims", "pickup", "service"):
            if part == "service" and args.skip_service:
                continue
            folder = Path(tempfile.mkdtemp(prefix="wanserve-bench-"))
            schema = None
            kwargs: dict[str, Any] = {"data_dir": folder, "max_concurrent_tasks": 100_000}
            if url:
                schema, kwargs["database_url"] = postgres_schema(url)
            try:
                if part == "claims":
                    bench_claims(kwargs, args.tasks, args.processes, args.threads)
                elif part == "pickup":
                    bench_pickup(kwargs, args.samples)
                else:
                    bench_service(kwargs, args.service_samples)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                if schema and url:
                    drop_schema(url, schema)


if __name__ == "__main__":
    main()

"""Processes that claim from a queue like worker groups do (module-level: spawn can start them)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from wanserve.settings import load_settings
from wanserve.tasks import TaskResult, TaskStore
from wanserve.tasks.claiming import next_task
from wanserve.tasks.wakeup import QUEUE

TYPES, MODELS = ["t2v"], ["demo"]


def fake_result(task_id: str) -> TaskResult:
    return TaskResult(video_path=f"/nowhere/{task_id}.mp4", thumbnail_path=f"/nowhere/{task_id}.jpg", frames=1,
                      width=2, height=2, fps=1, bytes=1, thumbnail_bytes=1, seed=0, steps=1, model_label="demo")


def drain_queue(settings: dict[str, Any], name: str, threads: int, out: str, start: Any) -> None:
    """`threads` claimers, each claiming and completing until nothing is queued; the ids each
    claimed are written to `out` (one per line). All processes begin together (`start`: a Barrier)."""
    store = TaskStore(load_settings(**settings), migrate=False)
    store.counts()  # connected before the start
    start.wait(120)
    claimed: list[str] = []
    lock = threading.Lock()

    def run(index: int) -> None:
        owner = f"{name}-{index}/g0#x"
        while True:
            task = store.claim(lease_owner=owner, task_types=TYPES, models=MODELS)
            if task is None:
                if store.counts()["queued"] == 0:
                    return
                continue
            with lock:
                claimed.append(task.id)
            assert store.complete(task.id, owner, fake_result(task.id))

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    Path(out).write_text("\n".join(claimed))
    store.close()


def open_store(settings: dict[str, Any]) -> None:
    """Create / migrate the schema (several of these start at once)."""
    TaskStore(load_settings(**settings)).close()


def idle_group(settings: dict[str, Any], ready: Any, stop: Any) -> None:
    """An idle group's loop: wait for a wake-up (or the fallback poll), claim, complete."""
    store = TaskStore(load_settings(**settings), migrate=False)
    listener = store.listen([QUEUE])
    ready.set()
    while (task := next_task(store, listener, lease_owner="idle/g0#x", task_types=TYPES, models=MODELS,
                             keep_going=lambda: not stop.is_set())) is not None:
        store.complete(task.id, "idle/g0#x", fake_result(task.id))
    listener.close()
    store.close()

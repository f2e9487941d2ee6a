"""A worker group of two gloo ranks on the CPU (ULYSSES_SIZE=2, DEVICES=2) in the real service:
its video equals one process's, and a killed follower rank restarts the group and retries."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import decode_mp4, psnr
from worker_support import ServiceProcess, ready_groups, service_env, wait_for

from wanserve.request import GenerationRequest
from wanserve.settings import load_settings
from wanserve.tasks import TaskStatus, TaskStore

pytestmark = pytest.mark.slow  # real processes


def test_two_rank_group_serves_and_survives_a_killed_follower(tmp_path, demo_data_dir):
    from wanserve import media
    from wanserve.engine.engine import WanEngine

    data = tmp_path / "data"
    model = demo_data_dir / "demo-model"
    env = service_env(data, model, None, devices=2, ulysses_size=2, max_attempts=3, lease_seconds=5)
    svc = ServiceProcess(data, env).start()
    store = TaskStore(load_settings(data_dir=data))
    try:
        [group] = wait_for(lambda: ready_groups(store, svc.worker_id) or not svc.alive(), 180, "the 2-rank group")
        assert svc.alive(), svc.log()
        assert len(group.pids) == 2 and group.devices == [0, 0]

        request = GenerationRequest(prompt="two ranks", size="64*32", num_frames=9, infer_steps=3, seed=11)
        task_id = store.enqueue(request).id
        done = wait_for(lambda: (r := store.get(task_id)).terminal and r, 120, "the task")
        assert done.status is TaskStatus.completed, done.error
        served, _ = decode_mp4(done.result.video_path)
        # Both ranks' memory in the registry: rank 0 by heartbeat, the follower after each task.
        [memory] = wait_for(lambda: [m for m in store.get_group(group.id).memory if m.ranks == [0, 1]], 10,
                            "both ranks' memory")
        assert memory.device == "cpu" and memory.used_bytes > 2 * 50 * 1024 * 1024  # two processes with a model

        engine = WanEngine.from_settings(load_settings(model_ckpt_dir=model, data_dir=data))  # one process
        reference = engine.generate(engine.resolve(request)).frames
        media.write_mp4(reference, tmp_path / "reference.mp4", done.result.fps)
        expected, _ = decode_mp4(tmp_path / "reference.mp4")
        assert served.shape == expected.shape
        assert psnr(served, expected) > 40

        task = store.enqueue(GenerationRequest(prompt="[slow=0.25] follower dies", size="32*32", num_frames=5,
                                               infer_steps=16, seed=2))
        wait_for(lambda: store.get(task.id).progress.step >= 2, 90, "the task to run")
        os.kill(group.pids[1], signal.SIGKILL)
        retried = wait_for(lambda: (r := store.get(task.id)).terminal and r, 180, "the retried task")
        assert retried.status is TaskStatus.completed and retried.attempts == 2, retried.error
        [restarted] = store.list_groups(svc.worker_id)
        assert restarted.restarts == 1 and set(restarted.pids).isdisjoint(group.pids)
        assert Path(retried.result.video_path).is_file()
    finally:
        svc.stop()
        store.close()

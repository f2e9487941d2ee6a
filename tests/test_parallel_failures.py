"""A group never hangs: a rank that dies takes the group down at once, a rank that hangs ends the
group after COLLECTIVE_TIMEOUT (also on the mesh's subgroups). Real processes, gloo, no model run."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from wanserve.settings import load_settings
from wanserve.worker.launch import spawn_group

pytestmark = pytest.mark.slow


def _wait_for_peer(rank: int, world_size: int, master_addr: str, master_port: int, settings, out_dir: str) -> None:
    """Rank 0 waits in a collective; rank 1 never joins it (it hangs or is killed). The collective
    runs on a group made after `init_rank`, as device-mesh dimensions, diffusers' flattened
    context-parallel mesh and FSDP make them: those get torch's 30-minute default unless told."""
    import torch
    import torch.distributed as dist

    from wanserve.engine.distributed import init_rank

    init_rank(settings, rank, world_size, master_addr, master_port)
    later_group = dist.new_group([0, 1])
    Path(out_dir, f"ready{rank}").write_text(str(os.getpid()))
    if rank == 1:
        time.sleep(600)
        return
    tensor = torch.zeros(4)
    try:
        dist.all_gather([torch.empty(4), torch.empty(4)], tensor, group=later_group)
    except Exception as e:  # noqa: BLE001 - the point of the test is what this error says
        Path(out_dir, "error0").write_text(f"{type(e).__name__}: {e}")
        raise SystemExit(3) from None


@pytest.fixture
def groups():
    started: list = []
    yield started
    for group in started:  # a failed assertion must not leave ranks behind
        group.kill(grace=0.5)


def start(tmp_path: Path, tiny_models, timeout: float, groups: list):
    settings = load_settings(model_ckpt_dir=tiny_models["wan2.1-t2v"], device="cpu", cfg_parallel=2,
                             collective_timeout=timeout)
    group = spawn_group(_wait_for_peer, (settings, str(tmp_path)), 2, settings, kill_grace=2.0)
    groups.append(group)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{r}").exists() for r in range(2)):
        assert group.any_alive() and time.monotonic() < deadline, f"group did not start: {group.exitcodes}"
        time.sleep(0.1)
    return group


def test_a_killed_rank_ends_the_group_at_once(tmp_path, tiny_models, groups):
    group = start(tmp_path, tiny_models, timeout=300, groups=groups)  # the timeout is not what ends it here
    time.sleep(0.5)
    assert group.alive()
    os.kill(group.pids[1], signal.SIGKILL)
    killed = time.monotonic()
    codes = group.join(timeout=30)
    assert time.monotonic() - killed < 15, "the survivor outlived its killed peer"
    assert not group.any_alive()
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    assert group.failure is not None and "rank 1" in group.failure


def test_a_hung_rank_ends_the_group_after_the_collective_timeout(tmp_path, tiny_models, groups):
    group = start(tmp_path, tiny_models, timeout=3, groups=groups)
    started = time.monotonic()
    codes = group.join(timeout=60)
    elapsed = time.monotonic() - started
    assert not group.any_alive(), "the group hung past its collective timeout"
    assert 2.5 <= elapsed < 25
    error = (tmp_path / "error0").read_text()
    assert "timed out" in error.lower() or "timeout" in error.lower()
    # The waiting rank failed (3, or SIGABRT when gloo's threads die with the interpreter); the
    # launcher stopped the hung one.
    assert codes[0] in (3, -signal.SIGABRT) and codes[1] != 0
    assert group.failure is not None and "rank 0" in group.failure

"""Start the rank processes of one worker group on this machine.

`spawn_group(target, args, world_size, settings)` runs `target(rank, world_size, master_addr,
master_port, *args)` in `world_size` fresh processes (multiprocessing "spawn": no CUDA/NPU state
is inherited), each bound to its device from DEVICES before `target` runs. The ranks rendezvous
on MASTER_PORT (+ the group's index), or on a free port when it is 0. A rank that exits
abnormally takes the group with it: a monitor thread stops the survivors within seconds
(SIGTERM, then SIGKILL), and every rank dies with this launcher's process. Collective timeouts
(COLLECTIVE_TIMEOUT) end the ranks that wait on a peer that hangs without exiting.

Used by `wanserve generate` for a group size > 1 and by the task service's supervisor.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from wanserve.settings import Settings

log = logging.getLogger("wanserve.launch")

DEFAULT_EXIT_GRACE = 3.0  # seconds the other ranks get to exit by themselves after one failed
DEFAULT_KILL_GRACE = 5.0  # seconds they then get to exit on SIGTERM before SIGKILL


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the group's rendezvous store binds it next)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the launcher dies, so no rank is orphaned."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _rank_main(target: Callable[..., Any], rank: int, world_size: int, master_addr: str, master_port: int,
               device_index: int, parent_pid: int, args: tuple) -> None:
    _die_with_parent()
    if os.getppid() != parent_pid:  # the launcher died before prctl took effect
        os._exit(1)
    from wanserve.engine.distributed import assign_device

    assign_device(device_index)
    target(rank, world_size, master_addr, master_port, *args)


@dataclass
class GroupProcesses:
    """The running ranks of one group (index = rank)."""

    processes: list[BaseProcess]
    master_addr: str
    master_port: int
    device_indices: list[int]
    kill_grace: float = DEFAULT_KILL_GRACE
    exit_grace: float = DEFAULT_EXIT_GRACE
    failure: str | None = None  # the first rank that exited abnormally, and how
    # Reaping a child (waitpid) from two threads loses its exit code for one of them: every
    # look at a process's state goes through this lock (the monitor thread looks too).
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _monitor: threading.Thread | None = field(default=None, repr=False)

    @property
    def world_size(self) -> int:
        return len(self.processes)

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self.processes]

    @property
    def exitcodes(self) -> list[int | None]:
        with self._lock:
            return [p.exitcode for p in self.processes]

    def alive(self) -> bool:
        """True while every rank runs (a group missing a rank cannot do any work)."""
        with self._lock:
            return all(p.is_alive() for p in self.processes)

    def any_alive(self) -> bool:
        with self._lock:
            return any(p.is_alive() for p in self.processes)

    def join(self, timeout: float | None = None) -> list[int | None]:
        """Wait until every rank exited (or `timeout` seconds); the exit codes, None for running ones."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = [p.sentinel for p in self.processes]
        while pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            for ready in multiprocessing.connection.wait(pending, left):
                pending.remove(ready)  # type: ignore[arg-type]
        with self._lock:
            for p in self.processes:
                if p.sentinel not in pending:
                    # Its sentinel closes an instant before the kernel can report the exit status:
                    # a blocking join (not a poll) collects it.
                    p.join()
        return self.exitcodes

    def kill(self, grace: float | None = None) -> None:
        """Stop every rank: SIGTERM, then SIGKILL for those still running after `grace` seconds."""
        grace = self.kill_grace if grace is None else grace
        with self._lock:
            for p in self.processes:
                if p.is_alive():
                    p.terminate()
            deadline = time.monotonic() + grace
            for p in self.processes:
                p.join(max(0.0, deadline - time.monotonic()))
            for p in self.processes:
                if p.is_alive():
                    p.kill()
            for p in self.processes:
                p.join(5.0)

    def _watch(self) -> None:
        """Stop the whole group once one rank exits with an error (or a signal). Ranks that stop in
        an orderly way (a refused request, a failed load) all exit within moments: they get
        `exit_grace` seconds to do so before the others are stopped."""
        pending = {p.sentinel: rank for rank, p in enumerate(self.processes)}
        while pending:
            for sentinel in multiprocessing.connection.wait(list(pending)):
                rank = pending.pop(sentinel)  # type: ignore[call-overload]
                process = self.processes[rank]
                with self._lock:
                    process.join(1.0)
                    code = process.exitcode
                if code in (0, None):
                    continue
                self.failure = f"rank {rank} (pid {process.pid}) exited with code {code}"
                self.join(self.exit_grace)
                if not self.any_alive():
                    return
                log.error("%s: stopping the other ranks of the group", self.failure)
                self.kill()
                return


def spawn_group(target: Callable[..., Any], args: tuple, world_size: int, settings: Settings, *,
                group_index: int = 0, device_indices: Sequence[int] | None = None,
                master_addr: str | None = None, exit_grace: float = DEFAULT_EXIT_GRACE,
                kill_grace: float = DEFAULT_KILL_GRACE) -> GroupProcesses:
    """Start `target(rank, world_size, master_addr, master_port, *args)` in `world_size` processes.

    `target` and `args` must be picklable (a module-level function). Devices: `device_indices`,
    or group `group_index`'s slice of DEVICES. The group's layout is validated first (SettingsError)."""
    from wanserve.engine import devices
    from wanserve.engine.distributed import group_device_indices, validate_layout

    info = devices.detect(settings.device)
    validate_layout(settings, world_size, info)
    indices = list(device_indices) if device_indices is not None else group_device_indices(settings, info, group_index)
    if len(indices) != world_size:
        raise ValueError(f"{world_size} ranks need {world_size} device indices, got {indices}")
    addr = master_addr or settings.master_addr
    # A fixed MASTER_PORT is the first group's; group g rendezvous on MASTER_PORT + g.
    port = settings.master_port + group_index if settings.master_port else free_port(addr)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_rank_main, name=f"wanserve-rank-{rank}",
            args=(target, rank, world_size, addr, port, indices[rank], os.getpid(), args),
        )
        for rank in range(world_size)
    ]
    group = GroupProcesses(processes, addr, port, indices, kill_grace=kill_grace, exit_grace=exit_grace)
    for p in processes:
        p.start()
    group._monitor = threading.Thread(target=group._watch, name="wanserve-group-monitor", daemon=True)
    group._monitor.start()
    return group

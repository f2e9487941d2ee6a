"""The supervisor: starts this machine's worker groups and keeps them serving.

- Starts `devices / group size` groups (or WORKER_GROUPS) and records each one's state and pids.
- A group that dies gives its task back to the queue (attempt counted) and is restarted after a
  backoff (0.5 s doubling to 60 s; reset once a group stayed up a minute). A group that cannot
  even load its model 5 times in a row is marked `failed` and left alone.
- Watchdog: a busy group with no step for WATCHDOG_SECONDS is killed and restarted; its task is
  retried (or failed with `watchdog_timeout` after MAX_ATTEMPTS).
- Maintenance: tasks whose lease expired (their group or machine died) go back to the queue;
  results older than RESULT_TTL are deleted.
- SIGTERM / SIGINT: groups stop claiming; running tasks get SHUTDOWN_GRACE seconds to finish,
  then are given back to the queue (attempt not counted). A second signal stops at once.
- On start, tasks left running by this WORKER_ID's previous life (kill -9, power loss) are given
  back at once rather than after their lease expires.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from wanserve.settings import Settings, SettingsError
from wanserve.tasks import ErrorCode, GroupRecord, GroupState, TaskStore
from wanserve.worker.group import EXIT_START_FAILED, GroupSpec, group_main
from wanserve.worker.launch import GroupProcesses, spawn_group
from wanserve.worker.placement import GroupPlacement, plan_groups

log = logging.getLogger("wanserve.supervisor")

TICK = 0.5  # seconds between checks when nothing wakes the supervisor (a group exiting does)
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 60.0
STABLE_AFTER = 60.0  # a group up this long is healthy again: its next crash restarts at once
MAX_START_FAILURES = 5
DRAIN_MARGIN = 5.0  # beyond SHUTDOWN_GRACE, for groups to give their tasks back themselves


class SupervisorError(RuntimeError):
    """The supervisor cannot start (the message says what to change)."""


@dataclass
class GroupSlot:
    placement: GroupPlacement
    group_id: str
    handle: GroupProcesses | None = None
    lease_owner: str | None = None
    state: GroupState = GroupState.starting
    restarts: int = 0
    failures: int = 0  # consecutive deaths without a stable period
    next_start: float = 0.0  # monotonic
    started_at: float = 0.0
    ready_at: float | None = None
    killed_for: str | None = None  # why the supervisor killed it (watchdog), if it did
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def describe_exit(codes: list[int | None]) -> str:
    parts = []
    for rank, code in enumerate(codes):
        if code is None or code == 0:
            continue
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            parts.append(f"rank {rank} was killed by {name}")
        else:
            parts.append(f"rank {rank} exited with code {code}")
    return ", ".join(parts) or "its processes exited"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Supervisor:
    def __init__(self, settings: Settings, *, target: Callable[..., Any] = group_main) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self.worker_id = settings.worker_id or self.host
        self.target = target
        self.slots: list[GroupSlot] = []
        self.store: TaskStore | None = None
        self._signals = 0
        self._draining_until: float | None = None
        self._next_maintenance = 0.0
        self._next_retention = 0.0

    # ------------------------------------------------------------------ life cycle
    def run(self) -> int:
        """Serve until SIGTERM / SIGINT; returns the process exit code."""
        model = self.settings.model_ckpt_dir
        if model is not None and not model.is_dir():
            raise SupervisorError(f"MODEL_CKPT_DIR: {model} is not a folder")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.store = TaskStore(self.settings)
        try:
            placements = plan_groups(self.settings)
            self._adopt_previous_life(placements)
            self.slots = [GroupSlot(p, f"{self.worker_id}/g{p.index}") for p in placements]
            log.info("supervisor %s: %d group(s) of %d rank(s) on %s", self.worker_id, len(self.slots),
                     self.settings.group_size, placements[0].device_kind if placements else "-")
            self._loop()
        finally:
            self._stop_all()
            self.store.close()
        log.info("supervisor %s stopped", self.worker_id)
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals += 1

    def _loop(self) -> None:
        store = self.store
        assert store is not None
        while True:
            now = time.monotonic()
            if self._signals and self._draining_until is None:
                self._begin_drain()
            if self._draining_until is not None:
                if self._signals > 1:
                    self._draining_until = now  # second signal: stop now
                if not any(s.handle is not None and s.handle.any_alive() for s in self.slots):
                    return
                if now >= self._draining_until:
                    return
            else:
                for slot in self.slots:
                    if slot.handle is None and slot.state is not GroupState.failed and now >= slot.next_start:
                        self._start(slot)
            self._wait(TICK)
            for slot in self.slots:
                if slot.handle is not None and not slot.handle.alive():
                    self._reap(slot)
            try:
                self._watch()
                self._maintain()
            except SQLAlchemyError as e:
                log.warning("queue database unreachable: %s", e)

    def _wait(self, timeout: float) -> None:
        sentinels = [p.sentinel for s in self.slots if s.handle is not None for p in s.handle.processes]
        if sentinels:
            multiprocessing.connection.wait(sentinels, timeout)
        else:
            time.sleep(timeout)

    # ------------------------------------------------------------------ groups
    def _start(self, slot: GroupSlot) -> None:
        store = self.store
        assert store is not None
        slot.lease_owner = f"{slot.group_id}#{secrets.token_hex(4)}"
        slot.started_at, slot.ready_at, slot.killed_for = time.monotonic(), None, None
        store.register_group(slot.group_id, supervisor=self.worker_id, host=self.host, state=GroupState.starting,
                             lease_owner=slot.lease_owner, supervisor_pid=os.getpid(),
                             devices=list(slot.placement.device_indices), restarts=slot.restarts,
                             last_error=slot.last_error)
        spec = GroupSpec(slot.group_id, slot.lease_owner, self.settings, slot.placement, os.getpid())
        try:
            slot.handle = spawn_group(self.target, (spec,), slot.placement.world_size, self.settings,
                                      group_index=slot.placement.index,
                                      device_indices=list(slot.placement.device_indices))
        except SettingsError as e:
            self._give_up(slot, f"the group cannot start: {e}")
            return
        except OSError as e:
            self._schedule_restart(slot, f"the group could not be started: {e}")
            return
        slot.state = GroupState.starting
        store.set_group_state(slot.group_id, None, pids=[p for p in slot.handle.pids if p])
        log.info("group %s starting (pids %s)", slot.group_id, slot.handle.pids)

    def _reap(self, slot: GroupSlot) -> None:
        """A rank of `slot` exited: stop the rest, give its task back, restart (or not)."""
        store = self.store
        assert store is not None and slot.handle is not None
        handle = slot.handle
        codes = handle.exitcodes
        handle.kill(0.0 if slot.killed_for else 2.0)
        codes = [c if c is not None else h for c, h in zip(codes, handle.exitcodes)]
        slot.handle = None
        if self._draining_until is not None and all(c == 0 for c in codes):
            slot.state = GroupState.stopped
            store.set_group_state(slot.group_id, GroupState.stopped, pids=[])
            return
        why = slot.killed_for or f"its worker group stopped unexpectedly ({describe_exit(codes)})"
        released = store.release(slot.lease_owner, code=ErrorCode.worker_lost, reason=why)
        for task in released:
            log.warning("task %s is %s after group %s stopped", task.id, task.status.value, slot.group_id)
        if self._draining_until is not None:
            slot.state = GroupState.stopped
            store.set_group_state(slot.group_id, GroupState.stopped, last_error=why, pids=[])
            return
        if codes and codes[0] == EXIT_START_FAILED and slot.ready_at is None:
            record = store.get_group(slot.group_id)
            why = (record.last_error if record and record.last_error else "the model could not be loaded")
        self._schedule_restart(slot, why)

    def _schedule_restart(self, slot: GroupSlot, why: str) -> None:
        store = self.store
        assert store is not None
        now = time.monotonic()
        stable = slot.ready_at is not None and now - slot.ready_at >= STABLE_AFTER
        slot.failures = 1 if stable else slot.failures + 1
        slot.last_error = why
        if slot.ready_at is None and slot.failures >= MAX_START_FAILURES:
            self._give_up(slot, f"{why} (failed to start {slot.failures} times in a row)")
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (slot.failures - 1))
        slot.next_start = now + delay
        slot.restarts += 1
        slot.state = GroupState.restarting
        store.set_group_state(slot.group_id, GroupState.restarting, last_error=why, pids=[])
        log.error("group %s: %s; restarting in %.1f s", slot.group_id, why, delay)

    def _give_up(self, slot: GroupSlot, why: str) -> None:
        assert self.store is not None
        slot.state, slot.last_error, slot.handle = GroupState.failed, why, None
        self.store.set_group_state(slot.group_id, GroupState.failed, last_error=why, pids=[])
        log.error("group %s failed for good: %s", slot.group_id, why)

    def _watch(self) -> None:
        """Note groups that became ready; kill those stuck inside one step (the watchdog)."""
        store = self.store
        assert store is not None
        rows: dict[str, GroupRecord] = {g.id: g for g in store.list_groups(self.worker_id)}
        now_wall = time.time()
        limit = self.settings.watchdog_seconds
        for slot in self.slots:
            row = rows.get(slot.group_id)
            if slot.handle is None or row is None:
                continue
            if row.state in (GroupState.idle, GroupState.busy):
                if slot.ready_at is None:
                    slot.ready_at = time.monotonic()
                    log.info("group %s ready (%s)", slot.group_id, row.model_label)
                slot.state = row.state
            stuck_for = now_wall - row.last_step_at.timestamp() if row.last_step_at else 0.0
            if row.state is GroupState.busy and row.current_task_id and stuck_for > limit and not slot.killed_for:
                slot.killed_for = (f"its worker group was stuck inside one step for more than WATCHDOG_SECONDS="
                                   f"{limit:g} s and was restarted")
                log.error("group %s: no step for %.0f s on task %s: killing it", slot.group_id, stuck_for,
                          row.current_task_id)
                store.release(slot.lease_owner, code=ErrorCode.watchdog_timeout, reason=slot.killed_for)
                slot.handle.kill(0.0)

    def _maintain(self) -> None:
        store = self.store
        assert store is not None
        now = time.monotonic()
        if now >= self._next_maintenance:
            self._next_maintenance = now + min(5.0, max(0.5, self.settings.lease_seconds / 4))
            for task in store.recover_expired_leases():
                log.warning("task %s: lease expired, now %s", task.id, task.status.value)
        if now >= self._next_retention:
            self._next_retention = now + min(60.0, max(1.0, self.settings.result_ttl / 4))
            expired = store.expire_results()
            if expired:
                log.info("deleted the results of %d task(s) older than RESULT_TTL", len(expired))

    def _adopt_previous_life(self, placements: list[GroupPlacement]) -> None:
        """Refuse a WORKER_ID that a live supervisor uses; give back tasks our last life left."""
        store = self.store
        assert store is not None
        wanted = {f"{self.worker_id}/g{p.index}" for p in placements}
        for group in store.list_groups(self.worker_id):
            pid = group.supervisor_pid
            if (group.host == self.host and pid and pid != os.getpid() and pid_alive(pid)
                    and group.state is not GroupState.stopped):
                raise SupervisorError(
                    f"WORKER_ID {self.worker_id!r} is used by a running supervisor (pid {pid}) on this host; "
                    "stop it, or give each supervisor its own WORKER_ID"
                )
            if group.host != self.host and group.responsive and group.state in (GroupState.idle, GroupState.busy):
                raise SupervisorError(
                    f"WORKER_ID {self.worker_id!r} is used by a live supervisor on host {group.host}; "
                    "give each machine its own WORKER_ID"
                )
            for task in store.release(group_id=group.id, code=ErrorCode.worker_lost,
                                      reason="its worker group stopped when the service was stopped abruptly"):
                log.warning("task %s left running by a previous run: now %s", task.id, task.status.value)
            if group.id not in wanted:
                store.remove_group(group.id)

    def _begin_drain(self) -> None:
        self._draining_until = time.monotonic() + self.settings.shutdown_grace + DRAIN_MARGIN
        log.info("shutting down: no new tasks; running tasks get %.0f s", self.settings.shutdown_grace)
        for slot in self.slots:
            if slot.handle is not None and slot.handle.pids and slot.handle.pids[0]:
                try:
                    os.kill(slot.handle.pids[0], signal.SIGTERM)  # rank 0 drains and tells its followers
                except ProcessLookupError:
                    pass

    def _stop_all(self) -> None:
        """Kill what is still running and give its tasks back (shutdown, or an error above)."""
        store = self.store
        if store is None:
            return
        for slot in self.slots:
            if slot.handle is not None:
                slot.handle.kill(0.0)
                slot.handle = None
            try:
                if slot.lease_owner:
                    for task in store.release(slot.lease_owner, code=ErrorCode.worker_lost, count_attempt=False,
                                              reason="the service shut down while running it"):
                        log.info("task %s given back to the queue (shutdown)", task.id)
                if slot.state is not GroupState.failed:
                    store.set_group_state(slot.group_id, GroupState.stopped, pids=[])
            except SQLAlchemyError as e:
                log.warning("could not record the shutdown of %s: %s", slot.group_id, e)

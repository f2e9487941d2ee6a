"""The processes of one worker group: rank 0 (the leader) and its followers.

Rank 0 claims tasks its model serves, runs them through `TaskRun`, and heartbeats. Followers
sleep on a local wake-up (a datagram from rank 0, never an idle collective that would hit the
collective timeout); once woken they receive the resolved request by `broadcast_object` and
run the same engine call. Between tasks no traffic crosses the group.

Exit codes tell the supervisor what happened: 0 shut down on request, 3 the model could not be
loaded (last_error is in the registry), 4 the group is broken and must be restarted.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from wanserve.settings import Settings
from wanserve.tasks import TaskStore
from wanserve.tasks.claiming import IDLE_POLL_MAX, next_task
from wanserve.tasks.wakeup import CANCEL, QUEUE, group_topic
from wanserve.worker.heartbeat import Heartbeat
from wanserve.worker.logs import configure_logging
from wanserve.worker.placement import GroupPlacement
from wanserve.worker.task_run import Drain, Outcome, TaskRun

log = logging.getLogger("wanserve.worker")

EXIT_OK = 0
EXIT_START_FAILED = 3
EXIT_BROKEN = 4


@dataclass(frozen=True)
class GroupSpec:
    """Everything a rank process needs (picklable: it crosses the spawn boundary)."""

    group_id: str
    lease_owner: str  # this incarnation's token: "<group id>#<random>"
    settings: Settings
    placement: GroupPlacement
    supervisor_pid: int


def group_main(rank: int, world_size: int, master_addr: str, master_port: int, spec: GroupSpec) -> None:
    """Entry point of every rank process (the `target` of the group launcher)."""
    settings = spec.settings
    configure_logging(settings.log_level, f"{spec.group_id} rank {rank}")
    drain = Drain()
    if rank == 0:
        def on_signal(signum: int, _frame: Any) -> None:
            if drain.deadline is None:
                log.info("signal %d: no more claims; the running task gets %.0f s", signum, settings.shutdown_grace)
                drain.deadline = time.monotonic() + settings.shutdown_grace

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    else:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: rank 0 decides and tells us

    store = TaskStore(settings, migrate=False)
    try:
        engine, plan = _load(settings, spec, rank, world_size, master_addr, master_port)
    except Exception as e:  # any load error: reported to the supervisor, which decides on restarts
        log.exception("could not load the model")
        if rank == 0:
            try:
                store.set_group_state(spec.group_id, _starting_state(), last_error=f"could not load the model: {e}")
            except SQLAlchemyError:
                pass
        sys.exit(EXIT_START_FAILED)
    if rank == 0:
        code = GroupLeader(spec, store, engine, plan, drain).run()
    else:
        code = Follower(spec, store, engine, plan, rank).run()
    store.close()
    log.info("exiting (code %d)", code)
    sys.exit(code)


def _starting_state():
    from wanserve.tasks import GroupState

    return GroupState.starting


def _load(settings: Settings, spec: GroupSpec, rank: int, world_size: int, master_addr: str, master_port: int):
    from wanserve.engine.engine import WanEngine
    from wanserve.engine.parallel_plan import SINGLE_PROCESS

    if world_size == 1:
        plan = SINGLE_PROCESS
    else:
        from wanserve.engine.distributed import init_rank

        plan = init_rank(settings, rank, world_size, master_addr, master_port)
    overrides: dict[str, Any] = {}
    if spec.placement.device_kind != "cpu":
        overrides["device_index"] = spec.placement.device_indices[rank]
    return WanEngine.from_settings(settings, plan=plan, **overrides), plan


class GroupLeader:
    """Rank 0: claim, run, finish; until SIGTERM (drain) or the supervisor is gone."""

    def __init__(self, spec: GroupSpec, store: TaskStore, engine: Any, plan: Any, drain: Drain) -> None:
        self.spec = spec
        self.settings = spec.settings
        self.store = store
        self.engine = engine
        self.plan = plan
        self.drain = drain
        self.world_size = spec.placement.world_size
        self.topic = group_topic(spec.lease_owner)
        self.heartbeat = Heartbeat(store, spec.lease_owner, self.settings.lease_seconds,
                                   measure=lambda: _device_memory(engine))
        variant = engine.variant
        self.task_types = [t.value for t in variant.tasks]
        self.models = [variant.name, engine.model_label]

    def run(self) -> int:
        if self.world_size > 1:
            self.plan.broadcast_object("ready")  # every follower listens for wake-ups by now
        self.store.group_ready(self.spec.lease_owner, model_label=self.engine.model_label,
                               variant=self.engine.variant.name, task_types=self.task_types)
        log.info("ready: %s (%s), tasks %s", self.engine.model_label, self.engine.variant.name,
                 ", ".join(self.task_types))
        self.heartbeat.start()
        listener = self.store.listen([QUEUE, CANCEL])
        outcome = Outcome.done
        try:
            while (task := next_task(
                self.store, listener, lease_owner=self.spec.lease_owner, task_types=self.task_types,
                models=self.models, keep_going=lambda: not self.drain.requested and self._supervisor_alive(),
            )) is not None:
                outcome = TaskRun(
                    task, engine=self.engine, store=self.store, lease_owner=self.spec.lease_owner,
                    task_timeout=self.settings.task_timeout, results_dir=self.settings.results_path,
                    drain=self.drain, heartbeat=self.heartbeat, listener=listener,
                    start_followers=self._start_followers, world_size=self.world_size,
                ).execute()
                if outcome is Outcome.group_broken:
                    return EXIT_BROKEN
            return EXIT_OK
        finally:
            self.heartbeat.stop()
            listener.close()
            if self.world_size > 1 and outcome is not Outcome.group_broken:
                self.store.wake_local(self.topic, "exit")

    def _start_followers(self, resolved: Any, task_id: str) -> None:
        if self.world_size > 1:
            self.store.wake_local(self.topic, "task")
            self.plan.broadcast_object({"task_id": task_id, "request": resolved.model_dump(mode="json")})

    def _supervisor_alive(self) -> bool:
        if os.getppid() != self.spec.supervisor_pid:
            log.warning("the supervisor (pid %d) is gone; stopping", self.spec.supervisor_pid)
            return False
        return True


class Follower:
    """Ranks 1..N-1: wait for rank 0's wake-up, then run the same request."""

    def __init__(self, spec: GroupSpec, store: TaskStore, engine: Any, plan: Any, rank: int) -> None:
        self.spec = spec
        self.store = store
        self.engine = engine
        self.plan = plan
        self.rank = rank

    def run(self) -> int:
        from wanserve.engine.errors import GenerationCancelled, GenerationError
        from wanserve.request import RequestError, ResolvedRequest
        from wanserve.tasks import TaskError

        listener = self.store.listen([group_topic(self.spec.lease_owner)])
        try:
            self.plan.broadcast_object(None)  # "ready": rank 0 wakes us only after this
            self._report_memory()
            while True:
                events = listener.wait(IDLE_POLL_MAX)
                if not events and os.getppid() != self.spec.supervisor_pid:
                    return EXIT_OK
                for _, payload in events:
                    if payload == "exit":
                        return EXIT_OK
                    message = self.plan.broadcast_object(None)
                    request = ResolvedRequest.model_validate(message["request"])
                    try:
                        self.engine.generate(request, None)
                    except (GenerationCancelled, RequestError):
                        pass  # every rank sees the same; rank 0 records it
                    except GenerationError as e:
                        # Rank 0 may be waiting in a collective for us: record why, restart the group.
                        log.error("rank %d: %s", self.rank, e.message)
                        failed = self.store.fail(message["task_id"], self.spec.lease_owner,
                                                 TaskError(code=e.code, message=e.message))
                        if failed:
                            return EXIT_BROKEN
                    self._report_memory()  # after the task: its peak included
        finally:
            listener.close()

    def _report_memory(self) -> None:
        """Followers do not heartbeat: they report their device memory when ready and after each task."""
        try:
            self.store.report_memory(self.spec.lease_owner, self.rank, _device_memory(self.engine))
        except Exception as e:  # noqa: BLE001 - the figures are informative; serving goes on
            log.warning("rank %d: device memory not reported: %s", self.rank, e)


def _device_memory(engine: Any) -> dict[str, Any]:
    from wanserve.engine.devices import memory_usage

    return dict(memory_usage(engine.device))

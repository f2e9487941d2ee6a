"""One task on rank 0 of a group: resolve, run the engine step by step, write the video, finish.

Every outcome ends in exactly one store call: complete, fail (with a code and a message a user
can act on), finish_cancelled, or release (give it back to the queue). The group survives all
of them except an unexpected error in a group of several ranks (its ranks may be out of step).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from wanserve import media
from wanserve.engine.errors import GenerationCancelled, GenerationError
from wanserve.request import Adjustment, RequestError, ResolvedRequest
from wanserve.tasks import ErrorCode, TaskError, TaskRecord, TaskResult, TaskStore
from wanserve.tasks.wakeup import CANCEL, Listener

if TYPE_CHECKING:
    from wanserve.engine.engine import GenerationResult, WanEngine
    from wanserve.worker.heartbeat import Heartbeat

log = logging.getLogger("wanserve.worker")

PROGRESS_INTERVAL = 0.2  # seconds between progress writes (cancel requests also arrive as wake-ups)
VIDEO_NAME = "video.mp4"
THUMBNAIL_NAME = "thumbnail.jpg"


class StopReason(StrEnum):
    cancel = "cancel"  # the owner cancelled it
    timeout = "timeout"  # TASK_TIMEOUT passed
    shutdown = "shutdown"  # SIGTERM and SHUTDOWN_GRACE passed: give it back
    lease_lost = "lease_lost"  # another group owns it now: drop it silently


class Outcome(StrEnum):
    done = "done"  # the task reached a final state or went back to the queue; keep serving
    group_broken = "group_broken"  # the ranks may be out of step: the group must restart


@dataclass
class Drain:
    """Set by SIGTERM: stop claiming; a running task gets until `deadline` (monotonic)."""

    deadline: float | None = None

    @property
    def requested(self) -> bool:
        return self.deadline is not None


@dataclass
class StepGate:
    """The engine's `on_step` on rank 0: progress, cancel, deadline, shutdown, lease."""

    store: TaskStore
    task_id: str
    lease_owner: str
    deadline: float  # monotonic; TASK_TIMEOUT from the claim
    drain: Drain
    heartbeat: Heartbeat
    listener: Listener
    reason: StopReason | None = None
    step: int = 0
    total: int = 0
    _last_report: float = 0.0
    _last_stage: str | None = None
    stage_seen: list[str] = field(default_factory=list)

    def __call__(self, step: int, total: int, stage: str) -> bool:
        self.step, self.total = step, total
        self.reason = self._decide(step, total, stage)
        return self.reason is not None

    def _decide(self, step: int, total: int, stage: str) -> StopReason | None:
        now = time.monotonic()
        if self.heartbeat.lease_lost.is_set():
            return StopReason.lease_lost
        if now >= self.deadline:
            return StopReason.timeout
        if self.drain.deadline is not None and now >= self.drain.deadline:
            return StopReason.shutdown
        cancel_hint = any(topic == CANCEL and payload == self.task_id for topic, payload in self.listener.poll())
        if cancel_hint or stage != self._last_stage or step >= total or now - self._last_report >= PROGRESS_INTERVAL:
            self._last_stage = stage
            self._last_report = now
            try:
                ack = self.store.report_progress(self.task_id, self.lease_owner, step, total, stage)
            except SQLAlchemyError as e:  # keep computing; the heartbeat decides about the lease
                log.warning("progress of task %s not recorded: %s", self.task_id, e)
                return None
            if not ack.lease_held:
                return StopReason.lease_lost
            if ack.cancel_requested:
                return StopReason.cancel
        return None


class TaskRun:
    """Runs `task` on `engine` (rank 0) and records how it ended."""

    def __init__(self, task: TaskRecord, *, engine: WanEngine, store: TaskStore, lease_owner: str,
                 task_timeout: float, results_dir: Path, drain: Drain, heartbeat: Heartbeat,
                 listener: Listener, start_followers, world_size: int) -> None:
        self.task = task
        self.engine = engine
        self.store = store
        self.lease_owner = lease_owner
        self.task_timeout = task_timeout
        self.results_dir = results_dir
        self.drain = drain
        self.heartbeat = heartbeat
        self.listener = listener
        self.start_followers = start_followers  # (ResolvedRequest, task id) -> None: wake + broadcast
        self.world_size = world_size
        self.claimed = time.monotonic()

    # ------------------------------------------------------------------ outcomes
    def _fail(self, code: str, message: str, field: str | None = None,
              timings: dict[str, float] | None = None) -> Outcome:
        log.info("task %s failed: %s: %s", self.task.id, code, message)
        if not self.store.fail(self.task.id, self.lease_owner, TaskError(code=code, message=message, field=field),
                               timings=timings):
            log.warning("task %s: could not record the failure (its lease was lost)", self.task.id)
        return Outcome.done

    def execute(self) -> Outcome:
        task = self.task
        self.heartbeat.track(task.id)
        try:
            return self._execute()
        finally:
            self.heartbeat.track(None)

    def _execute(self) -> Outcome:
        task = self.task
        log.info("task %s: %s, attempt %d of %d", task.id, task.task_type.value, task.attempts, task.max_attempts)
        try:
            resolved = self.engine.resolve(task.request)
        except RequestError as e:
            return self._fail(e.code, e.message, e.field)
        gate = StepGate(self.store, task.id, self.lease_owner, self.claimed + self.task_timeout, self.drain,
                        self.heartbeat, self.listener)
        try:
            self.start_followers(resolved, task.id)
            result = self.engine.generate(resolved, gate)
        except GenerationCancelled as e:
            return self._stopped(gate, e)
        except RequestError as e:
            return self._fail(e.code, e.message, e.field)
        except GenerationError as e:
            return self._fail(e.code, e.message)
        except Exception as e:  # anything else still ends the task clearly and keeps the group serving
            log.exception("task %s: unexpected error", task.id)
            text = f"{type(e).__name__}: {e}"
            if self.world_size > 1:
                # The other ranks may still wait in a collective: restart the group, retry the task.
                self.store.release(self.lease_owner, code=ErrorCode.internal_error,
                                   reason=f"the worker group failed while running it ({text})", task_id=task.id)
                return Outcome.group_broken
            return self._fail(ErrorCode.internal_error, f"the generation failed unexpectedly: {text}")
        return self._write_and_complete(resolved, result, gate)

    def _stopped(self, gate: StepGate, stop: GenerationCancelled) -> Outcome:
        task = self.task
        where = f"step {stop.step} of {stop.total}"
        if gate.reason is StopReason.cancel:
            log.info("task %s cancelled at %s", task.id, where)
            self.store.finish_cancelled(task.id, self.lease_owner)
        elif gate.reason is StopReason.timeout:
            self._fail(ErrorCode.timeout,
                       f"the task ran longer than TASK_TIMEOUT={self.task_timeout:g} s and was stopped at {where}; "
                       "lower infer_steps, num_frames or size, or raise TASK_TIMEOUT")
        elif gate.reason is StopReason.shutdown:
            log.info("task %s given back to the queue at %s (shutting down)", task.id, where)
            self.store.release(self.lease_owner, code=ErrorCode.worker_lost, count_attempt=False,
                               reason="the service shut down while running it", task_id=task.id)
        else:
            log.warning("task %s dropped at %s: another group owns it now", task.id, where)
        return Outcome.done

    def _write_and_complete(self, resolved: ResolvedRequest, result: GenerationResult, gate: StepGate) -> Outcome:
        task = self.task
        timings = {"queue": round((task.started_at - task.created_at).total_seconds(), 4)} if task.started_at else {}
        timings.update(result.timings)
        folder = self.results_dir / task.id
        video, thumbnail = folder / VIDEO_NAME, folder / THUMBNAIL_NAME
        start = time.perf_counter()
        try:
            self.store.report_progress(task.id, self.lease_owner, result.steps, result.steps, "write")
        except SQLAlchemyError as e:
            log.warning("progress of task %s not recorded: %s", task.id, e)
        try:
            video_bytes = media.write_mp4(result.frames, video, resolved.fps)
            thumbnail_bytes = media.write_thumbnail(result.frames[0], thumbnail)
        except Exception as e:  # disk full, permissions, an encoder error: the task fails, the group goes on
            detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            return self._fail(ErrorCode.write_failed,
                              f"the video could not be written to {folder}: {detail}; free disk space or fix "
                              "RESULTS_DIR, then submit again", timings=timings)
        timings["write"] = round(time.perf_counter() - start, 4)
        timings["total"] = round(time.monotonic() - self.claimed, 4)
        frames, height, width, _ = result.frames.shape
        outcome = TaskResult(
            video_path=str(video.resolve()), thumbnail_path=str(thumbnail.resolve()), frames=int(frames),
            width=int(width), height=int(height), fps=resolved.fps, bytes=video_bytes,
            thumbnail_bytes=thumbnail_bytes, seed=resolved.seed, steps=result.steps,
            model_label=self.engine.model_label,
        )
        if self.store.complete(task.id, self.lease_owner, outcome, timings=timings,
                               adjustments=merge_adjustments(task.adjustments, resolved.adjustments)):
            log.info("task %s completed in %.2f s", task.id, timings["total"])
        else:
            log.warning("task %s finished but its lease was lost; the result is not recorded", task.id)
        return Outcome.done


def merge_adjustments(recorded: list[Adjustment], applied: list[Adjustment]) -> list[Adjustment]:
    """The API's adjustments plus those the engine made (e.g. the demo's step limit)."""
    seen = {(a.field, str(a.used)) for a in recorded}
    return list(recorded) + [a for a in applied if (a.field, str(a.used)) not in seen]

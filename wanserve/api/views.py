"""Task records as clients see them: the original status object and OpenAI's video object."""

from __future__ import annotations

import time
from datetime import datetime

from fastapi import Request

from wanserve.api.schemas import (
    ErrorInfo,
    RequestSummary,
    ResultInfo,
    TaskStatusResponse,
    VideoError,
    VideoObject,
)
from wanserve.request import parse_size
from wanserve.settings import Settings
from wanserve.tasks import TaskRecord, TaskStatus

# Share of the progress bar each stage ends at (denoising is most of a task's time).
_STAGE_START = {"encode": 1.0, "denoise": 2.0, "decode": 90.0, "write": 95.0, "done": 99.0}
_DENOISE_SPAN = 88.0
_OPENAI_STATUS = {
    TaskStatus.queued: "queued", TaskStatus.running: "in_progress", TaskStatus.completed: "completed",
    TaskStatus.expired: "completed", TaskStatus.failed: "failed", TaskStatus.cancelled: "failed",
}


def base_url(request: Request, settings: Settings) -> str:
    """Where result links point: PUBLIC_URL, else the address the client used."""
    return (settings.public_url or str(request.base_url)).rstrip("/")


def progress_percent(record: TaskRecord) -> float:
    if record.status in (TaskStatus.completed, TaskStatus.expired):
        return 100.0
    if record.status is TaskStatus.queued:
        return 0.0
    stage, progress = record.progress.stage, record.progress
    if stage == "denoise" and progress.total:
        return round(_STAGE_START["denoise"] + _DENOISE_SPAN * min(progress.step, progress.total) / progress.total, 1)
    return _STAGE_START.get(stage or "", 0.0)


def elapsed_seconds(record: TaskRecord) -> float:
    end = record.finished_at.timestamp() if record.finished_at else time.time()
    return round(max(0.0, end - record.created_at.timestamp()), 3)


def _inputs(record: TaskRecord) -> list[str]:
    r = record.request
    return [name for name, value in (("image", r.image), ("last_image", r.last_image), ("video", r.video)) if value]


def status_view(record: TaskRecord, base: str) -> TaskStatusResponse:
    r = record.request
    completed = record.status is TaskStatus.completed and record.result is not None
    result = None
    if record.result is not None:
        res = record.result
        result = ResultInfo(width=res.width, height=res.height, frames=res.frames, fps=res.fps,
                            seconds=round(res.frames / res.fps, 3) if res.fps else 0.0, seed=res.seed,
                            steps=res.steps, bytes=res.bytes, model=res.model_label)
    error = None
    if record.error is not None:
        error = ErrorInfo(code=record.error.code, message=record.error.message, field=record.error.field)
    elif record.status is TaskStatus.cancelled:
        error = ErrorInfo(code="cancelled", message="the task was cancelled by its owner")
    return TaskStatusResponse(
        task_id=record.id,
        status=record.status,
        task=record.task_type,
        prompt=r.prompt,
        model=record.result.model_label if record.result else record.model,
        progress=progress_percent(record),
        current_step=record.progress.step,
        total_steps=record.progress.total or (r.infer_steps or 0),
        stage=record.progress.stage if record.status is TaskStatus.running else None,
        queue_position=record.queue_position,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        elapsed=elapsed_seconds(record),
        video_url=f"{base}/result/{record.id}" if completed else None,
        thumbnail_url=f"{base}/result/{record.id}/thumbnail" if completed else None,
        error=error,
        timings=record.timings,
        adjustments=record.adjustments,
        request=RequestSummary(
            task=record.task_type, prompt=r.prompt, negative_prompt=r.negative_prompt, size=r.size,
            num_frames=r.num_frames, infer_steps=r.infer_steps, guidance_scale=r.guidance_scale,
            guidance_scale_2=r.guidance_scale_2, sample_shift=r.sample_shift, sample_solver=r.sample_solver,
            strength=r.strength, seed=r.seed, fps=r.fps, resize_mode=r.resize_mode, inputs=_inputs(record),
        ),
        result=result,
        attempts=record.attempts,
        cancel_requested=record.cancel_requested,
        priority=record.priority,
    )


def _unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def _clip_seconds(frames: int | None, fps: int | None) -> str:
    if not frames or not fps:
        return "0"
    return f"{frames / fps:.2f}".rstrip("0").rstrip(".")


def video_view(record: TaskRecord, default_model: str, result_ttl: float) -> VideoObject:
    r = record.request
    status = _OPENAI_STATUS[record.status]
    if record.result is not None:
        width, height, frames, fps = record.result.width, record.result.height, record.result.frames, record.result.fps
    else:
        width, height = parse_size(r.size) if r.size else (0, 0)
        frames, fps = r.num_frames, r.fps
    error = None
    if record.error is not None:
        error = VideoError(code=record.error.code, message=record.error.message, param=record.error.field)
    elif record.status is TaskStatus.cancelled:
        error = VideoError(code="cancelled", message="the video was cancelled before it completed")
    expires = None
    if record.status is TaskStatus.expired:
        expires = _unix(record.expired_at)
    elif record.status is TaskStatus.completed and record.finished_at is not None:
        expires = int(record.finished_at.timestamp() + result_ttl)
    return VideoObject(
        id=record.id,
        created_at=int(record.created_at.timestamp()),
        completed_at=_unix(record.finished_at) if record.terminal else None,
        expires_at=expires,
        model=record.result.model_label if record.result else (record.model or default_model),
        progress=int(progress_percent(record)),
        prompt=r.prompt,
        seconds=_clip_seconds(frames, fps),
        size=f"{width}x{height}",
        status=status,  # type: ignore[arg-type]
        error=error,
    )

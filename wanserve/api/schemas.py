"""Request and response models of the HTTP API (what /openapi.json documents)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from wanserve.request import MAX_SEED, MAX_STEPS, Adjustment, ResizeMode, Solver, check_size_text
from wanserve.tasks import DeviceMemory, TaskStatus
from wanserve.variants import Task


def _storable(value: str) -> str:
    """Text the database can keep: no NUL characters, no lone UTF-16 surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


Text = Annotated[str, AfterValidator(_storable)]
Prompt = Annotated[str, Field(max_length=10_000), AfterValidator(_storable)]




class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_request, not_found, queue_full.")
    message: str = Field(description="What went wrong, for people.")
    field: str | None = Field(None, description="The request field (or header) the error is about.")
    type: str | None = Field(None, description="The same error in OpenAI's terms (invalid_request_error, ...).")
    param: str | None = Field(None, description="OpenAI's name for `field`.")


class ErrorResponse(BaseModel):
    """The shape of every error answer."""

    error: ErrorDetail


# ------------------------------------------------------------------ the original API
class SubmitRequest(BaseModel):
    """POST /submit, as JSON or as form fields (multipart adds the files image, last_image, video)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: Prompt = Field("", description="What the video shows.")
    negative_prompt: Prompt | None = Field(None, description="What to avoid; unset: the official Wan one.")
    image_url: Text | None = Field(None, description="First frame (i2v, flf2v): http(s) or data: URL.")
    last_image_url: Text | None = Field(None, description="Last frame (flf2v): http(s) or data: URL.")
    video_url: Text | None = Field(None, description="Input video (v2v): http(s) or data: URL.")
    task: Task | None = Field(None, description="t2v | i2v | flf2v | v2v; unset: from the inputs (no image: t2v).")
    image_size: Annotated[Text, AfterValidator(check_size_text)] = Field(
        "512*512", description="W*H (or WxH); snapped to the model's grid (see `adjustments`).")
    num_frames: int = Field(41, ge=1, le=1000, description="Snapped to 4n+1.")
    guidance_scale: float = Field(3.0, ge=0.0, le=50.0)
    guidance_scale_2: float | None = Field(None, ge=0.0, le=50.0, description="Low-noise expert (Wan2.2 A14B).")
    infer_steps: int = Field(30, ge=1, le=MAX_STEPS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Unset: random (reported in `result.seed`).")
    resize_mode: ResizeMode = Field("crop", description="How input images are fitted to the size.")
    sample_shift: float | None = Field(None, gt=0.0, le=100.0)
    sample_solver: Solver = "unipc"
    strength: float = Field(0.8, gt=0.0, le=1.0, description="v2v: how much of the input video is redrawn.")
    fps: int | None = Field(None, ge=1, le=120)
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first; first come first served within one.")


class SubmitForm(SubmitRequest):
    """POST /submit as multipart/form-data: the fields of SubmitRequest plus files."""

    image: bytes | None = Field(None, description="First-frame image file.", json_schema_extra={"format": "binary"})
    last_image: bytes | None = Field(None, description="Last-frame image file.", json_schema_extra={"format": "binary"})
    video: bytes | None = Field(None, description="Input video file (v2v).", json_schema_extra={"format": "binary"})


class ErrorInfo(BaseModel):
    code: str
    message: str
    field: str | None = None


class RequestSummary(BaseModel):
    """The request as it will run (after snapping); input files are named, not located."""

    task: Task
    prompt: str
    negative_prompt: str | None
    size: str | None
    num_frames: int | None
    infer_steps: int | None
    guidance_scale: float | None
    guidance_scale_2: float | None
    sample_shift: float | None
    sample_solver: str
    strength: float
    seed: int | None
    fps: int | None
    resize_mode: str
    inputs: list[str] = Field(description="Which inputs were given: image, last_image, video.")


class ResultInfo(BaseModel):
    width: int
    height: int
    frames: int
    fps: int
    seconds: float
    seed: int
    steps: int
    bytes: int
    model: str


class TaskStatusResponse(BaseModel):
    """A task as GET /status/{task_id} shows it (also each item of GET /tasks and each SSE event)."""

    task_id: str
    status: TaskStatus
    task: Task
    prompt: str
    model: str | None = Field(description="The model that ran it (or that it is pinned to).")
    progress: float = Field(ge=0, le=100, description="Percent done, 0-100.")
    current_step: int
    total_steps: int
    stage: str | None = Field(description="encode | denoise | decode | write | done while running.")
    queue_position: int | None = Field(description="1 = next to run (queued tasks only).")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed: float | None = Field(description="Seconds from submission to the end (or to now).")
    video_url: str | None
    thumbnail_url: str | None
    error: ErrorInfo | None
    timings: dict[str, float] = Field(description="Seconds per stage (queue, load, encode, denoise, decode, "
                                                  "write, total) once finished.")
    adjustments: list[Adjustment] = Field(description="Changes made so the model can run the request.")
    request: RequestSummary
    result: ResultInfo | None
    attempts: int
    cancel_requested: bool
    priority: int


class TaskListResponse(BaseModel):
    tasks: list[TaskStatusResponse] = Field(description="Newest first.")
    has_more: bool
    next_after: str | None = Field(description="Pass as `after` for the next page.")


class WorkerInfo(BaseModel):
    id: str
    state: str
    pids: list[int]
    current_task: str | None
    model: str | None
    host: str
    supervisor: str
    devices: list[Any]
    responsive: bool
    tasks_served: int
    restarts: int
    last_error: str | None
    heartbeat_at: datetime | None
    memory: list[DeviceMemory] = Field(
        default_factory=list, description="Per device: memory the group's processes hold now and at peak, "
                                          "and the device's free and total memory (bytes), as last reported.")


class QueueInfo(BaseModel):
    queued: int
    running: int


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded", "unhealthy"] = Field(
        description="ok: every group serves; degraded: some do; unhealthy (HTTP 503): none does.")
    model: str = Field(description="The model served; '(demo, random weights)' marks the demo model.")
    variant: str
    device_type: str
    device_count: int
    workers: list[WorkerInfo]
    queue: QueueInfo


# ------------------------------------------------------------------ OpenAI /v1/videos
class ImageReference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_url: Text | None = Field(None, description="http(s) or data: URL of the first frame.")
    file_id: Text | None = Field(None, description="Not supported (no Files API here).")


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds, e.g. '4'") from None
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 120:
        raise ValueError("must be more than 0 and at most 120")
    return seconds


class VideoCreateRequest(BaseModel):
    """POST /v1/videos as JSON (the OpenAI SDK sends the same fields as multipart form data, with
    `input_reference` as a file or as the form field `input_reference[image_url]`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: Prompt
    model: Text | None = Field(None, description="The served model's variant or label; unset: the served one.")
    seconds: str | float | None = Field(None, description="Clip length; frames = seconds x fps + 1, snapped to 4n+1.")
    size: Annotated[Text, AfterValidator(check_size_text)] | None = Field(None, description="WxH, e.g. 832x480.")
    input_reference: Text | ImageReference | None = Field(None, description="First frame: an image URL "
                                                                              "(http(s) or data:) or an upload.")
    negative_prompt: Prompt | None = None
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    guidance_scale_2: float | None = Field(None, ge=0.0, le=50.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_frames: int | None = Field(None, ge=1, le=1000)
    fps: int | None = Field(None, ge=1, le=120)
    sample_shift: float | None = Field(None, gt=0.0, le=100.0)
    sample_solver: Solver = "unipc"
    resize_mode: ResizeMode = "crop"

    @field_validator("seconds")
    @classmethod
    def _valid_seconds(cls, value: Any) -> Any:
        _seconds(value)
        return value

    @property
    def seconds_value(self) -> float | None:
        return _seconds(self.seconds)


class VideoCreateForm(VideoCreateRequest):
    """POST /v1/videos as multipart/form-data (what the OpenAI SDK sends)."""

    model_config = ConfigDict(populate_by_name=True)

    input_reference: bytes | None = Field(None, description="First-frame image file.",  # type: ignore[assignment]
                                          json_schema_extra={"format": "binary"})
    input_reference_image_url: Text | None = Field(
        None, alias="input_reference[image_url]", description="First frame as a URL (what the SDK sends for "
        "input_reference={'image_url': ...}).")


class VideoError(BaseModel):
    code: str
    message: str
    param: str | None = None


class VideoObject(BaseModel):
    """An OpenAI video job."""

    id: str
    object: Literal["video"] = "video"
    created_at: int = Field(description="Unix seconds.")
    completed_at: int | None = Field(description="Unix seconds, once finished.")
    expires_at: int | None = Field(description="Unix seconds when the files are deleted (RESULT_TTL).")
    model: str
    progress: int = Field(ge=0, le=100)
    prompt: str | None
    remixed_from_video_id: str | None = None
    seconds: str
    size: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    error: VideoError | None


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VideoObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool

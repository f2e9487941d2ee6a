"""What a user asks for (`GenerationRequest`) and what will actually run (`ResolvedRequest`).

Shared by every layer and free of torch: the API validates and snaps with it, the task store
keeps it as JSON, worker groups broadcast it, the engine runs it.
"""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wanserve.variants import Task, VariantSpec

# The official Wan negative prompt (Chinese, as the models were trained with it): over-saturated,
# over-exposed, static, blurry, subtitles, artwork, grey, worst quality, JPEG artefacts, extra
# fingers, badly drawn hands and faces, deformed limbs, cluttered background, walking backwards...
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

MAX_SIDE = 2048
MAX_STEPS = 200
MAX_SEED = 2**63 - 1
Solver = Literal["unipc", "euler", "dpm++"]
ResizeMode = Literal["crop", "pad", "stretch"]


class RequestError(ValueError):
    """A request that cannot run as asked; `field` names the offending input."""

    def __init__(self, field: str, message: str, code: str = "invalid_request") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code


_SIZE = re.compile(r"^\s*(\d{1,5})\s*[*xX×]\s*(\d{1,5})\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """'832*480' or '832x480' -> (width, height)."""
    match = _SIZE.match(text)
    if not match:
        raise RequestError("size", f"{text!r} is not a size; write it as W*H or WxH, e.g. 832*480")
    return int(match.group(1)), int(match.group(2))


def check_size_text(value: str | None) -> str | None:
    """Pydantic validator body for size fields: the text must parse as W*H (or be unset)."""
    if value is not None:
        try:
            parse_size(value)
        except RequestError as e:
            raise ValueError(e.message) from None
    return value


class GenerationRequest(BaseModel):
    """One video to generate. Unset fields take the model's recommended values."""

    model_config = ConfigDict(extra="forbid")

    task: Task | None = Field(None, description="t2v | i2v | flf2v | v2v; inferred from the inputs when unset.")
    prompt: str = Field("", max_length=10_000)
    negative_prompt: str | None = Field(None, max_length=10_000, description="Unset: the official Wan one.")
    image: str | None = Field(None, description="Path of the first-frame image (i2v, flf2v).")
    last_image: str | None = Field(None, description="Path of the last-frame image (flf2v).")
    video: str | None = Field(None, description="Path of the input video (v2v).")
    size: str | None = Field(None, description="W*H or WxH; snapped to the model's grid.")
    num_frames: int | None = Field(None, ge=1, le=1000, description="Snapped to 4n+1.")
    infer_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    guidance_scale_2: float | None = Field(None, ge=0.0, le=50.0, description="Low-noise expert (Wan2.2 A14B).")
    sample_shift: float | None = Field(None, gt=0.0, le=100.0)
    sample_solver: Solver = "unipc"
    strength: float = Field(0.8, gt=0.0, le=1.0, description="v2v: how much of the input video is redrawn.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    fps: int | None = Field(None, ge=1, le=120)
    resize_mode: ResizeMode = "crop"

    @field_validator("size")
    @classmethod
    def _size_format(cls, value: str | None) -> str | None:
        return check_size_text(value)

    def inferred_task(self) -> Task:
        if self.task is not None:
            return self.task
        if self.video:
            return Task.v2v
        if self.image and self.last_image:
            return Task.flf2v
        if self.image:
            return Task.i2v
        return Task.t2v


class Adjustment(BaseModel):
    """A change wanserve made to a request so that the model can run it."""

    field: str
    requested: int | str | float
    used: int | str | float
    reason: str


class ResolvedRequest(BaseModel):
    """A request with every value decided: exactly what the engine runs."""

    task: Task
    prompt: str
    negative_prompt: str
    image: str | None = None
    last_image: str | None = None
    video: str | None = None
    width: int
    height: int
    num_frames: int
    infer_steps: int
    guidance_scale: float
    guidance_scale_2: float | None = None
    sample_shift: float
    sample_solver: Solver
    strength: float
    seed: int
    fps: int
    resize_mode: ResizeMode
    adjustments: list[Adjustment] = Field(default_factory=list)

    @property
    def size(self) -> str:
        return f"{self.width}*{self.height}"

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0 or (self.guidance_scale_2 or 0.0) > 1.0


def snap_frames(n: int) -> int:
    """Nearest 4n+1 (the VAE packs 4 frames per latent after the first); ties go up."""
    return max(1, 4 * round((n - 1) / 4 + 1e-9) + 1)


def snap_side(value: int, grid: int) -> int:
    return max(grid, grid * round(value / grid + 1e-9))


def resolve(request: GenerationRequest, variant: VariantSpec) -> ResolvedRequest:
    """Decide every value, snap sizes and frame counts, or raise RequestError naming the field."""
    task = request.inferred_task()
    if task not in variant.tasks:
        served = ", ".join(t.value for t in variant.tasks)
        raise RequestError(
            "task", f"task '{task.value}' is not served by model {variant.name} (it serves: {served})",
            code="task_not_supported",
        )
    if task in (Task.i2v, Task.flf2v) and not request.image:
        raise RequestError("image", f"task '{task.value}' needs a first-frame image")
    if task is Task.flf2v and not request.last_image:
        raise RequestError("last_image", "task 'flf2v' needs a last-frame image")
    if task is Task.v2v and not request.video:
        raise RequestError("video", "task 'v2v' needs an input video")
    if task is not Task.flf2v and request.last_image:
        raise RequestError("last_image", f"task '{task.value}' takes no last-frame image (use task flf2v)")
    if task is Task.t2v and request.image:
        raise RequestError("image", "task 't2v' takes no image (use task i2v)")

    d = variant.defaults
    adjustments: list[Adjustment] = []
    width, height = parse_size(request.size) if request.size else (d.width, d.height)
    for name, value in (("width", width), ("height", height)):
        if value > MAX_SIDE:
            raise RequestError("size", f"{name} {value} is above the largest supported side ({MAX_SIDE})")
        if value < variant.grid // 2:
            raise RequestError("size", f"{name} {value} is below the smallest supported side ({variant.grid})")
    snapped_w, snapped_h = snap_side(width, variant.grid), snap_side(height, variant.grid)
    if (snapped_w, snapped_h) != (width, height):
        adjustments.append(Adjustment(
            field="size", requested=f"{width}*{height}", used=f"{snapped_w}*{snapped_h}",
            reason=f"width and height must be multiples of {variant.grid} for {variant.name}",
        ))

    frames = request.num_frames or d.num_frames
    snapped_frames = snap_frames(frames)
    if snapped_frames > variant.max_frames:
        raise RequestError("num_frames", f"{frames} frames is above the limit of {variant.max_frames} for {variant.name}")
    if snapped_frames != frames:
        adjustments.append(Adjustment(
            field="num_frames", requested=frames, used=snapped_frames,
            reason="the frame count must be 4n+1 (the VAE packs 4 frames per latent after the first)",
        ))

    guidance_2 = request.guidance_scale_2
    if variant.two_experts:
        guidance_2 = guidance_2 if guidance_2 is not None else (
            request.guidance_scale if request.guidance_scale is not None else d.guidance_scale_2
        )
    elif guidance_2 is not None:
        raise RequestError("guidance_scale_2", f"{variant.name} has one expert; guidance_scale_2 needs Wan2.2 A14B")

    return ResolvedRequest(
        task=task,
        prompt=request.prompt,
        negative_prompt=DEFAULT_NEGATIVE_PROMPT if request.negative_prompt is None else request.negative_prompt,
        image=request.image,
        last_image=request.last_image,
        video=request.video,
        width=snapped_w,
        height=snapped_h,
        num_frames=snapped_frames,
        infer_steps=request.infer_steps or d.infer_steps,
        guidance_scale=d.guidance_scale if request.guidance_scale is None else request.guidance_scale,
        guidance_scale_2=guidance_2,
        sample_shift=request.sample_shift or d.sample_shift,
        sample_solver=request.sample_solver,
        strength=request.strength,
        seed=request.seed if request.seed is not None else random.randrange(2**31),
        fps=request.fps or d.fps,
        resize_mode=request.resize_mode,
        adjustments=adjustments,
    )

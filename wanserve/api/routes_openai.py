"""OpenAI-compatible video API (/v1/videos), as the official `openai` SDK calls it:
videos.create / retrieve / list / delete / download_content.

Statuses map as queued -> queued, running -> in_progress, completed (and expired) -> completed,
failed and cancelled -> failed (error.code "cancelled"). Times are unix seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from wanserve.api.auth import Caller, require_caller
from wanserve.api.bodies import read_submission
from wanserve.api.errors import ApiError, error_responses
from wanserve.api.files import file_response, finished_result
from wanserve.api.schemas import ImageReference, VideoCreateRequest, VideoDeleted, VideoList, VideoObject
from wanserve.api.state import ApiState, api_state, checked_cursor, checked_task_id
from wanserve.api.submission import Submission, check_idempotency_key, submit
from wanserve.api.views import video_view
from wanserve.tasks import TaskNotFound, TaskRecord, TaskStatus

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible video API"], dependencies=[Depends(require_caller)])

POLL_AFTER_MS = {TaskStatus.queued: 2000, TaskStatus.running: 500}
DELETE_WAIT = 30.0  # seconds DELETE waits for a running video to stop after cancelling it
_FORM_ALIASES = {"input_reference[image_url]": ("input_reference", "image_url"),
                 "input_reference[file_id]": ("input_reference", "file_id")}


def _create_body_doc() -> dict:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/VideoCreateRequest"}},
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/VideoCreateForm"}},
    }}}


def to_submission(body: VideoCreateRequest, files: dict, idempotency_key: str | None) -> Submission:
    sources: dict = {}
    reference = body.input_reference
    if isinstance(reference, ImageReference):
        if reference.file_id:
            raise ApiError(422, "invalid_request", "input_reference.file_id is not supported here (there is no "
                           "Files API); upload the image or give input_reference.image_url", "input_reference")
        reference = reference.image_url
    upload = files.get("input_reference")
    if upload is not None and reference:
        raise ApiError(422, "invalid_request", "give input_reference as a file or as a URL, not both",
                       "input_reference")
    if upload is not None or reference:
        sources["image"] = upload if upload is not None else reference
    fields = dict(
        prompt=body.prompt, negative_prompt=body.negative_prompt, size=body.size, num_frames=body.num_frames,
        infer_steps=body.num_inference_steps, guidance_scale=body.guidance_scale,
        guidance_scale_2=body.guidance_scale_2, sample_shift=body.sample_shift, sample_solver=body.sample_solver,
        seed=body.seed, fps=body.fps, resize_mode=body.resize_mode,
    )
    return Submission(fields=fields, sources=sources, model=body.model, seconds=body.seconds_value,
                      idempotency_key=check_idempotency_key(idempotency_key),
                      names={"image": "input_reference", "infer_steps": "num_inference_steps"})


async def _default_model(state: ApiState) -> str:
    models, _ = await anyio.to_thread.run_sync(state.models.snapshot)
    return models[0].variant.name


async def _video(state: ApiState, record: TaskRecord, response: Response | None = None) -> VideoObject:
    if response is not None and record.status in POLL_AFTER_MS:
        response.headers["openai-poll-after-ms"] = str(POLL_AFTER_MS[record.status])
    return video_view(record, await _default_model(state), state.settings.result_ttl)


async def _get(state: ApiState, video_id: str, caller: Caller) -> TaskRecord:
    return await anyio.to_thread.run_sync(state.store.get, checked_task_id(video_id), caller.scope)


@router.post("/videos", response_model=VideoObject, openapi_extra=_create_body_doc(),
             responses=error_responses(409, 413, 415, 429), summary="Create a video")
async def create_video(request: Request, response: Response, caller: Annotated[Caller, Depends(require_caller)],
                       state: Annotated[ApiState, Depends(api_state)],
                       idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
                       ) -> VideoObject:
    """`seconds` sets the length (frames = seconds x fps + 1, snapped to 4n+1) unless `num_frames`
    is given; `size` is WxH, snapped to the model's grid. `input_reference` (a file, or an image
    URL) makes it image-to-video."""
    limit = state.settings.max_upload_bytes
    body, files = await read_submission(request, VideoCreateRequest, {"input_reference"}, limit * 4 // 3 + 1024,
                                        form_fields=_FORM_ALIASES)
    record = await submit(to_submission(body, files, idempotency_key), caller,
                          store=state.store, models=state.models, fetcher=state.fetcher)
    return await _video(state, record, response)


@router.get("/videos/{video_id}", response_model=VideoObject, responses=error_responses(404), summary="A video job")
async def retrieve_video(video_id: str, response: Response, caller: Annotated[Caller, Depends(require_caller)],
                         state: Annotated[ApiState, Depends(api_state)]) -> VideoObject:
    return await _video(state, await _get(state, video_id, caller), response)


@router.get("/videos", response_model=VideoList, responses=error_responses(), summary="List video jobs")
async def list_videos(caller: Annotated[Caller, Depends(require_caller)],
                      state: Annotated[ApiState, Depends(api_state)],
                      after: Annotated[str | None, Query(
                          description="Id of the last video of the previous page.")] = None,
                      limit: Annotated[int, Query(ge=1, le=100)] = 20,
                      order: Annotated[Literal["asc", "desc"], Query()] = "desc") -> VideoList:
    cursor = checked_cursor(after)
    try:
        page = await anyio.to_thread.run_sync(lambda: state.store.list_tasks(
            owner=caller.scope, limit=limit, after=cursor, oldest_first=order == "asc"))
    except TaskNotFound:
        raise ApiError(422, "invalid_request", "after: no such video", "after") from None
    default_model = await _default_model(state)
    data = [video_view(t, default_model, state.settings.result_ttl) for t in page.items]
    return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=page.has_more)


@router.delete("/videos/{video_id}", response_model=VideoDeleted, responses=error_responses(404, 409),
               summary="Delete a video (cancelling it first if it runs)")
async def delete_video(video_id: str, caller: Annotated[Caller, Depends(require_caller)],
                       state: Annotated[ApiState, Depends(api_state)]) -> VideoDeleted:
    record = await _get(state, video_id, caller)
    if record.status in (TaskStatus.queued, TaskStatus.running):
        record = await anyio.to_thread.run_sync(state.store.cancel, record.id, caller.scope)
    if record.status is TaskStatus.running:
        record = await _until_stopped(state, record, caller)
    await anyio.to_thread.run_sync(state.store.delete, record.id, caller.scope)
    return VideoDeleted(id=record.id, deleted=True)


async def _until_stopped(state: ApiState, record: TaskRecord, caller: Caller) -> TaskRecord:
    """Wait (on wake-ups, not polling) for a cancelled running task to stop; 409 after DELETE_WAIT."""
    deadline = time.monotonic() + DELETE_WAIT
    with state.feed.subscribe(record.id) as changed:
        while record.status is TaskStatus.running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApiError(409, "wrong_state", f"video {record.id} is still stopping (it stops at its next "
                               "step); delete it again shortly", "video_id")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 2.0)):
                    await changed.wait()
            changed.clear()
            record = await _get(state, record.id, caller)
    return record


@router.get("/videos/{video_id}/content", response_class=StreamingResponse, responses={
    200: {"content": {"video/mp4": {}, "image/jpeg": {}}, "description": "The video, or its thumbnail."},
    **error_responses(404, 409, 410, 416)}, summary="Download the video or its thumbnail")
async def video_content(video_id: str, request: Request, caller: Annotated[Caller, Depends(require_caller)],
                        state: Annotated[ApiState, Depends(api_state)],
                        variant: Annotated[Literal["video", "thumbnail"], Query()] = "video"):
    record = finished_result(await _get(state, video_id, caller))
    assert record.result is not None
    if variant == "thumbnail":
        return file_response(request, Path(record.result.thumbnail_path), "image/jpeg", f"{record.id}.jpg")
    return file_response(request, Path(record.result.video_path), "video/mp4", f"{record.id}.mp4")

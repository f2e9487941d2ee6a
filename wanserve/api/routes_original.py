"""The original service's endpoints, unchanged for its clients: POST /submit, GET /status/{id},
POST /cancel/{id}, GET /result/{id} (+ /thumbnail), GET /tasks, GET /events/{id}."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from wanserve.api.auth import Caller, require_caller
from wanserve.api.bodies import read_submission
from wanserve.api.errors import ApiError, error_responses
from wanserve.api.events import status_events
from wanserve.api.files import file_response, finished_result
from wanserve.api.schemas import SubmitRequest, TaskListResponse, TaskStatusResponse
from wanserve.api.state import ApiState, api_state, checked_cursor, checked_task_id
from wanserve.api.submission import Submission, check_idempotency_key, submit
from wanserve.api.views import base_url, status_view
from wanserve.tasks import TaskNotFound, TaskRecord, TaskStatus

router = APIRouter(tags=["original API"], dependencies=[Depends(require_caller)])

FILE_FIELDS = {"image", "last_image", "video"}
_URL_FIELDS = {"image": "image_url", "last_image": "last_image_url", "video": "video_url"}


def _submit_body_doc() -> dict:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/SubmitRequest"}},
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/SubmitForm"}},
    }}}


def to_submission(body: SubmitRequest, files: dict, idempotency_key: str | None) -> Submission:
    sources: dict = {}
    names = {"size": "image_size"}
    for name, url_field in _URL_FIELDS.items():
        upload, url = files.get(name), getattr(body, url_field)
        if upload is not None and url:
            raise ApiError(422, "invalid_request", f"give either the file {name} or {url_field}, not both", name)
        if upload is not None:
            sources[name] = upload
        elif url:
            sources[name] = url
            names[name] = url_field
    if not body.prompt.strip() and not sources:
        raise ApiError(422, "invalid_request", "prompt: give a prompt (or an image or video to start from)", "prompt")
    fields = dict(
        task=body.task, prompt=body.prompt, negative_prompt=body.negative_prompt, size=body.image_size,
        num_frames=body.num_frames, infer_steps=body.infer_steps, guidance_scale=body.guidance_scale,
        guidance_scale_2=body.guidance_scale_2, sample_shift=body.sample_shift, sample_solver=body.sample_solver,
        strength=body.strength, seed=body.seed, fps=body.fps, resize_mode=body.resize_mode,
    )
    return Submission(fields=fields, sources=sources, priority=body.priority,
                      idempotency_key=check_idempotency_key(idempotency_key), names=names)


@router.post("/submit", response_model=TaskStatusResponse, openapi_extra=_submit_body_doc(),
             responses=error_responses(409, 413, 415, 429), summary="Submit a video task")
async def submit_task(request: Request, caller: Annotated[Caller, Depends(require_caller)],
                      state: Annotated[ApiState, Depends(api_state)],
                      idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
                      ) -> TaskStatusResponse:
    """JSON or multipart (files image / last_image / video). The task type comes from the inputs
    when `task` is unset. Sizes are snapped to the model's grid and frame counts to 4n+1; what
    changed is listed in `adjustments`. A repeated `Idempotency-Key` returns the first task."""
    limit = state.settings.max_upload_bytes
    body, files = await read_submission(request, SubmitRequest, FILE_FIELDS, limit * 4 // 3 + 1024)
    record = await submit(to_submission(body, files, idempotency_key), caller,
                          store=state.store, models=state.models, fetcher=state.fetcher)
    return status_view(record, base_url(request, state.settings))


async def _get(state: ApiState, task_id: str, caller: Caller) -> TaskRecord:
    return await anyio.to_thread.run_sync(state.store.get, checked_task_id(task_id), caller.scope)


@router.get("/status/{task_id}", response_model=TaskStatusResponse, responses=error_responses(404),
            summary="A task's status, progress, timings and result links")
async def task_status(task_id: str, request: Request, caller: Annotated[Caller, Depends(require_caller)],
                      state: Annotated[ApiState, Depends(api_state)]) -> TaskStatusResponse:
    return status_view(await _get(state, task_id, caller), base_url(request, state.settings))


@router.post("/cancel/{task_id}", response_model=TaskStatusResponse, responses=error_responses(404, 409),
             summary="Cancel a queued or running task")
async def cancel_task(task_id: str, request: Request, caller: Annotated[Caller, Depends(require_caller)],
                      state: Annotated[ApiState, Depends(api_state)]) -> TaskStatusResponse:
    """Queued: cancelled at once. Running: `cancel_requested` is set and the task stops at its next
    denoising step (follow /events or /status). Finished: 409."""
    before = await _get(state, task_id, caller)
    if before.terminal:
        raise ApiError(409, "wrong_state", f"task {task_id} is already {before.status.value}", "task_id")
    record = await anyio.to_thread.run_sync(state.store.cancel, task_id, caller.scope)
    if record.status in (TaskStatus.completed, TaskStatus.failed, TaskStatus.expired):
        raise ApiError(409, "wrong_state", f"task {task_id} finished ({record.status.value}) before it "
                       "could be cancelled", "task_id")
    return status_view(record, base_url(request, state.settings))


_VIDEO_RESPONSES = {200: {"content": {"video/mp4": {}}, "description": "The video (Range requests supported)."},
                    **error_responses(404, 409, 410, 416)}


@router.get("/result/{task_id}", response_class=StreamingResponse, responses=_VIDEO_RESPONSES,
            summary="The video (mp4)")
async def task_result(task_id: str, request: Request, caller: Annotated[Caller, Depends(require_caller)],
                      state: Annotated[ApiState, Depends(api_state)]):
    record = finished_result(await _get(state, task_id, caller))
    return file_response(request, Path(record.result.video_path), "video/mp4", f"{record.id}.mp4")


@router.get("/result/{task_id}/thumbnail", response_class=StreamingResponse,
            responses={200: {"content": {"image/jpeg": {}}, "description": "The first frame."},
                       **error_responses(404, 409, 410, 416)}, summary="The video's thumbnail (jpeg)")
async def task_thumbnail(task_id: str, request: Request, caller: Annotated[Caller, Depends(require_caller)],
                         state: Annotated[ApiState, Depends(api_state)]):
    record = finished_result(await _get(state, task_id, caller))
    return file_response(request, Path(record.result.thumbnail_path), "image/jpeg", f"{record.id}.jpg")


@router.get("/tasks", response_model=TaskListResponse, responses=error_responses(), summary="List tasks, newest first")
async def list_tasks(request: Request, caller: Annotated[Caller, Depends(require_caller)],
                     state: Annotated[ApiState, Depends(api_state)],
                     status: Annotated[list[TaskStatus] | None, Query(
                         description="Only these statuses (repeat the parameter for several).")] = None,
                     limit: Annotated[int, Query(ge=1, le=200)] = 20,
                     after: Annotated[str | None, Query(description="`next_after` of the previous page.")] = None,
                     ) -> TaskListResponse:
    cursor = checked_cursor(after)
    try:
        page = await anyio.to_thread.run_sync(lambda: state.store.list_tasks(
            status=status or None, owner=caller.scope, limit=limit, after=cursor))
    except TaskNotFound:
        raise ApiError(422, "invalid_request", "after: no such task", "after") from None
    base = base_url(request, state.settings)
    return TaskListResponse(tasks=[status_view(t, base) for t in page.items], has_more=page.has_more,
                            next_after=page.next_after)


@router.get("/events/{task_id}", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}}, "description": "`status` events (data: the status object), "
          "ending after a terminal status."}, **error_responses(404)}, summary="Live status (Server-Sent Events)")
async def task_events(task_id: str, request: Request, caller: Annotated[Caller, Depends(require_caller)],
                      state: Annotated[ApiState, Depends(api_state)],
                      last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None):
    await _get(state, task_id, caller)  # 404 now, before the stream starts
    base = base_url(request, state.settings)
    resume = int(last_event_id) if last_event_id and last_event_id.isdigit() else None

    async def stream():
        # Subscribe, then read: a change between the two still wakes the stream.
        with state.feed.subscribe(task_id) as changed:
            try:
                first = await _get(state, task_id, caller)
            except TaskNotFound:
                return
            async for chunk in status_events(state.store, first, caller.scope, changed,
                                             lambda r: status_view(r, base).model_dump_json(), resume):
                yield chunk

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

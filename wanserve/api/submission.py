"""One submission, whichever API it came through: check it against the served model, read its
inputs, enqueue it. Order matters: everything that can be refused without network or disk is
refused first (a 422 for a wrong size never waits for an image download)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import anyio.to_thread
from pydantic import ValidationError

from wanserve.api.auth import Caller
from wanserve.api.errors import ApiError, field_of, validation_message
from wanserve.api.inputs import InputFolder, InputKind, InputSource, RemoteFetcher, read_source
from wanserve.api.served_model import ModelNotServed, ServedModels
from wanserve.request import GenerationRequest, RequestError, resolve
from wanserve.tasks import TaskRecord, TaskStore

INPUT_KINDS: dict[str, InputKind] = {"image": "image", "last_image": "image", "video": "video"}
_PLACEHOLDER = "(input given)"  # stands for an input file while the request is checked


@dataclass
class Submission:
    """What a client asked for, in the engine's terms.

    `fields`: GenerationRequest fields except the input paths. `sources`: input name (image,
    last_image, video) -> upload or URL. `names`: GenerationRequest field -> the name the client
    used for it (image_size, seconds, ...), so errors name the client's field."""

    fields: dict
    sources: dict[str, InputSource] = field(default_factory=dict)
    model: str | None = None
    priority: int = 0
    idempotency_key: str | None = None
    names: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None  # OpenAI's clip length: sets num_frames (at the model's fps) when that is unset

    def client_name(self, name: str | None) -> str | None:
        return self.names.get(name, name) if name else name


def check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    key = value.strip()
    if not key or len(key) > 200 or not key.isprintable():
        raise ApiError(422, "invalid_request", "Idempotency-Key must be 1 to 200 printable characters",
                       "Idempotency-Key")
    return key


def idempotent_task_id(owner: str, key: str) -> str:
    """Repeats of one key by one owner get one task id, so their input files get one folder."""
    return hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest()[:32]


def task_seed(task_id: str) -> int:
    """The seed of a request that gave none: random per task, stable for one task id."""
    return int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def _generation_request(submission: Submission, **values) -> GenerationRequest:
    try:
        return GenerationRequest(**{**submission.fields, **values})
    except ValidationError as e:
        first = e.errors()[0]
        name = submission.client_name(field_of(first.get("loc", ())))
        raise ApiError(422, "invalid_request", f"{name}: {validation_message(first)}", name) from None


async def submit(submission: Submission, caller: Caller, *, store: TaskStore, models: ServedModels,
                 fetcher: RemoteFetcher) -> TaskRecord:
    """Check, store inputs, enqueue; the queued task (or the earlier one for a repeated key)."""
    # 1. The request must run on the served model as asked (or snapped), before any input is read.
    draft = _generation_request(submission, **{name: _PLACEHOLDER for name in submission.sources})
    try:
        model, pinned = await anyio.to_thread.run_sync(models.pick, draft.inferred_task(), submission.model)
    except ModelNotServed as e:
        raise ApiError(422, "model_not_found", str(e), submission.client_name("model")) from None
    if submission.seconds is not None and submission.fields.get("num_frames") is None:
        fps = submission.fields.get("fps") or model.variant.defaults.fps
        submission.fields["num_frames"] = round(submission.seconds * fps) + 1
        submission.names["num_frames"] = "seconds"
        draft = _generation_request(submission, **{name: _PLACEHOLDER for name in submission.sources})
    try:
        resolved = resolve(draft, model.variant)
    except RequestError as e:
        raise ApiError(422, e.code, f"{submission.client_name(e.field)}: {e.message}",
                       submission.client_name(e.field)) from None

    # 2. Inputs: read (uploads, URLs), check, write under the task's inputs folder.
    task_id = (idempotent_task_id(caller.owner, submission.idempotency_key)
               if submission.idempotency_key else store.new_task_id())
    folder = InputFolder(store.inputs_dir(task_id))
    paths: dict[str, str] = {}
    try:
        for name, source in submission.sources.items():
            client_name = submission.client_name(name) or name
            data = await read_source(source, client_name, fetcher)
            paths[name] = await folder.store(data, client_name, INPUT_KINDS[name])
    except BaseException:
        folder.discard()
        raise

    # 3. The request as it will run: snapped values made explicit, and the seed fixed now, so that a
    #    retry after a crash makes the same video. Derived from the task id: a repeat of an
    #    idempotent request (same id) stays the same request.
    final = _generation_request(
        submission, task=resolved.task, size=resolved.size, num_frames=resolved.num_frames,
        infer_steps=resolved.infer_steps, guidance_scale=resolved.guidance_scale,
        guidance_scale_2=resolved.guidance_scale_2, sample_shift=resolved.sample_shift, fps=resolved.fps,
        seed=submission.fields.get("seed") if submission.fields.get("seed") is not None else task_seed(task_id),
        **paths,
    )
    try:
        record = await anyio.to_thread.run_sync(lambda: store.enqueue(
            final, model=model.variant.name if (pinned or submission.model) else None,
            priority=submission.priority, owner=caller.owner, idempotency_key=submission.idempotency_key,
            adjustments=resolved.adjustments, task_id=task_id,
        ))
    except BaseException:  # queue full, idempotency conflict, database down: keep no orphan files
        folder.discard()
        raise
    if record.terminal and folder.written:
        folder.discard()  # a repeat of a finished task whose inputs were already deleted
    return record

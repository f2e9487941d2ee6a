"""Reading a submission body that may be JSON, multipart (with files) or a urlencoded form, into
one pydantic model, with errors that name the field. Used by POST /submit and POST /v1/videos."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wanserve.api.errors import ApiError, from_validation_errors

M = TypeVar("M", bound=BaseModel)

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_FORM_FIELDS = 64
MAX_FORM_FILES = 4


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise ApiError(422, "invalid_request", "the body is empty; send a JSON object or form fields")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "invalid_request", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    return data


async def read_form(request: Request, file_fields: set[str],
                    max_part_bytes: int) -> tuple[dict[str, Any], dict[str, UploadFile]]:
    """(text fields, files). Empty text fields are left out (HTML forms send them for blank inputs)."""
    form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=max_part_bytes)
    fields: dict[str, Any] = {}
    files: dict[str, UploadFile] = {}
    for name, value in form.multi_items():
        if name in fields or name in files:
            raise ApiError(422, "invalid_request", f"{name}: given more than once", name)
        if isinstance(value, UploadFile):
            if name not in file_fields:
                raise ApiError(422, "invalid_request", f"{name}: must be a text field, not a file", name)
            files[name] = value
        elif name in file_fields:
            if value.strip():
                raise ApiError(422, "invalid_request", f"{name}: must be a file upload", name)
        elif value != "":
            fields[name] = value
    return fields, files


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation_errors(e.errors()) from None


async def read_submission(request: Request, model: type[M], file_fields: set[str], max_part_bytes: int,
                          form_fields: dict[str, tuple[str, str]] | None = None) -> tuple[M, dict[str, UploadFile]]:
    """The body as `model` plus uploaded files. `form_fields` maps bracketed form names to the
    nested JSON field they stand for (the OpenAI SDK sends {'input_reference': {'image_url': u}}
    as the form field 'input_reference[image_url]')."""
    kind = media_type(request)
    if kind in FORM_TYPES:
        fields, files = await read_form(request, file_fields, max_part_bytes)
        for source, (outer, inner) in (form_fields or {}).items():
            if source in fields:
                nested = fields.setdefault(outer, {})
                if not isinstance(nested, dict):
                    raise ApiError(422, "invalid_request", f"{outer}: given both as a value and as {source}", outer)
                nested[inner] = fields.pop(source)
        return validate(model, fields), files
    if kind == "application/json" or kind.endswith("+json") or kind == "":
        return validate(model, await read_json_object(request)), {}
    raise ApiError(415, "unsupported_media_type",
                   f"send application/json or multipart/form-data, not {kind!r}", "Content-Type")


class BodySizeLimit:
    """Refuses bodies over `limit` bytes with 413, from Content-Length or while reading, before a
    route (or the multipart parser) holds more than that."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(send, self.limit)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, "too_large", f"the request body is larger than {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _too_large(send: Send, limit: int) -> None:
    from wanserve.api.errors import error_body

    body = json.dumps(error_body(413, "too_large", f"the request body is larger than {limit} bytes")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

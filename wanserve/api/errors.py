"""One JSON error shape for every error the API returns, FastAPI's and Starlette's own included:

    {"error": {"code": "...", "message": "...", "field": "..." | null, "type": "...", "param": ...}}

`code` is stable (clients branch on it), `message` is for people, `field` names the offending
input. `type` and `param` repeat the same facts under OpenAI's names, so the official SDKs
report them too (`APIError.type`, `APIError.param`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from wanserve.media import MediaError
from wanserve.request import RequestError
from wanserve.tasks import IdempotencyConflict, QueueFullError, TaskNotFound, TaskStateError

log = logging.getLogger("wanserve.api")

# OpenAI's error `type` per HTTP status (what its SDKs expect to see).
_OPENAI_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error", 410: "not_found_error",
    413: "invalid_request_error", 415: "invalid_request_error", 416: "invalid_request_error",
    422: "invalid_request_error", 429: "rate_limit_error",
}

# Status -> code for errors raised by Starlette / FastAPI themselves (unknown route, wrong method...).
_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
    416: "range_not_satisfiable", 422: "invalid_request", 429: "queue_full",
}


class ApiError(Exception):
    """An error answer: HTTP status, stable code, message, and the input it is about."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def error_body(status: int, code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field,
                      "type": _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
                      "param": field}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error.status, error.code, error.message, error.field),
                        status_code=error.status, headers=error.headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route: 401 and 422 always, plus `statuses`, all ErrorResponse."""
    from wanserve.api.schemas import ErrorResponse

    return {status: {"model": ErrorResponse} for status in (401, 422, *statuses)}


# ------------------------------------------------------------------ conversions
def not_found(task_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no task with id {task_id!r}", "task_id")


def from_request_error(e: RequestError) -> ApiError:
    return ApiError(422, e.code, e.message, e.field)


def from_media_error(e: MediaError, field: str, code: str = "invalid_image") -> ApiError:
    return ApiError(422, code, f"{field}: {e}", field)


def field_of(location: Sequence[Any]) -> str | None:
    """'image_size' from FastAPI's ('body', 'image_size'); None when only the body is named."""
    parts = [str(p) for p in location if p not in ("body", "query", "path", "header", "form", "cookie")]
    return ".".join(parts) or None


def validation_message(error: dict[str, Any]) -> str:
    """pydantic's message for one error, without the "Value error, " it puts before our own validators'."""
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")


def from_validation_errors(errors: Sequence[dict[str, Any]]) -> ApiError:
    """The first validation error, named by its field; the others are summarised after it."""
    if not errors:
        return ApiError(422, "invalid_request", "the request is not valid")
    first = errors[0]
    field = field_of(first.get("loc", ()))
    message = validation_message(first)
    if first.get("type") == "extra_forbidden":
        message = "unknown field"
    if first.get("type") == "json_invalid":
        message = "the body is not valid JSON"
    text = f"{field}: {message}" if field else message
    if len(errors) > 1:
        others = [field_of(e.get("loc", ())) or "body" for e in errors[1:4]]
        text += f" (also invalid: {', '.join(others)}{', ...' if len(errors) > 4 else ''})"
    return ApiError(422, "invalid_request", text, field)


# ------------------------------------------------------------------ handlers
def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(from_validation_errors(e.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(e.status_code, "http_error")
        message = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404 and message == "Not Found":
            message = "no such route; see /docs for the API"
        return error_response(ApiError(e.status_code, code, message, None, dict(e.headers or {})))

    @app.exception_handler(RequestError)
    async def _request(_: Request, e: RequestError) -> JSONResponse:
        return error_response(from_request_error(e))

    @app.exception_handler(TaskNotFound)
    async def _not_found(_: Request, e: TaskNotFound) -> JSONResponse:
        return error_response(not_found(e.task_id))

    @app.exception_handler(TaskStateError)
    async def _state(_: Request, e: TaskStateError) -> JSONResponse:
        return error_response(ApiError(409, "wrong_state", str(e), "task_id"))

    @app.exception_handler(IdempotencyConflict)
    async def _idempotency(_: Request, e: IdempotencyConflict) -> JSONResponse:
        return error_response(ApiError(409, "idempotency_conflict", str(e), "Idempotency-Key"))

    @app.exception_handler(QueueFullError)
    async def _queue_full(_: Request, e: QueueFullError) -> JSONResponse:
        return error_response(ApiError(429, "queue_full", str(e), None, {"Retry-After": str(e.retry_after)}))

    @app.exception_handler(SQLAlchemyError)
    async def _database(_: Request, e: SQLAlchemyError) -> JSONResponse:
        log.error("queue database error: %s", e)
        return error_response(ApiError(503, "database_unavailable",
                                       "the task queue database is unavailable; retry shortly", None,
                                       {"Retry-After": "5"}))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(ApiError(500, "internal_error", f"unexpected error: {type(e).__name__}"))

"""Result files over HTTP with Range requests (video players seek with them).

Starlette's FileResponse serves ranges, but answers a malformed Range with a plain-text 400 and
an unsatisfiable one with a plain-text 416. Here a malformed or multi-part Range is ignored (the
whole file, as RFC 9110 allows) and an unsatisfiable one is a 416 in the API's error shape.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse

from wanserve.api.errors import ApiError
from wanserve.tasks import TaskRecord, TaskStatus

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _single_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """(start, end) for one satisfiable range; None to ignore the header; False if unsatisfiable."""
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
        return (start, end) if start < size else False
    suffix = int(last)
    return (max(0, size - suffix), size - 1) if suffix > 0 and size > 0 else False


def file_response(request: Request, path: Path, media_type: str, download_name: str) -> FileResponse:
    try:
        size = path.stat().st_size
    except OSError:
        raise ApiError(410, "gone", "the result file is no longer on disk", None) from None
    header = request.headers.get("range")
    if header is not None:
        verdict = _single_range(header, size)
        if verdict is False:
            raise ApiError(416, "range_not_satisfiable", f"the file has {size} bytes", "Range",
                           {"Content-Range": f"bytes */{size}"})
        if verdict is None:
            # Let FileResponse see no Range at all: it serves the whole file.
            request.scope["headers"] = [(k, v) for k, v in request.scope["headers"] if k != b"range"]
    return FileResponse(path, media_type=media_type, filename=download_name, content_disposition_type="inline")


def finished_result(record: TaskRecord) -> TaskRecord:
    """`record` if its result can be downloaded; else 409 (not finished, or failed) or 410 (expired)."""
    if record.status is TaskStatus.completed and record.result is not None:
        return record
    if record.status is TaskStatus.expired:
        raise ApiError(410, "expired", f"the result of task {record.id} was deleted after RESULT_TTL", "task_id")
    if record.status in (TaskStatus.queued, TaskStatus.running):
        raise ApiError(409, "not_ready", f"task {record.id} is {record.status.value}; the result is not ready yet",
                       "task_id")
    reason = f": {record.error.message}" if record.error else ""
    raise ApiError(409, "no_result", f"task {record.id} is {record.status.value}{reason}", "task_id")

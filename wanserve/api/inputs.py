"""Image and video inputs of a submission: uploaded files, http(s) URLs and data: URLs.

Every input is read with a size cap (MAX_UPLOAD_BYTES), its type sniffed from its bytes (never
from a name or a Content-Type), decoded once to prove it is usable (the image decoder carries
the decompression-bomb guard), and written under the task's inputs folder, named by a hash of
its bytes (so a repeated idempotent submission names the same files). Remote URLs go through
the SSRF guard in `ssrf.py`. Every failure is an ApiError naming the field (422 or 413).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread
import httpcore
from starlette.datastructures import UploadFile

from wanserve import media
from wanserve.api.errors import ApiError
from wanserve.api.ssrf import AddressPolicy, GuardedBackend, Resolver, URLNotAllowed, system_resolve
from wanserve.settings import Settings

InputKind = Literal["image", "video"]
MAX_REDIRECTS = 5
READ_CHUNK = 64 * 1024
USER_AGENT = "wanserve-image-fetch/1"

# Magic numbers of the formats we accept -> file extension.
_IMAGE_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"\x89PNG\r\n\x1a\n", ".png"),
    (0, b"\xff\xd8\xff", ".jpg"),
    (0, b"GIF87a", ".gif"),
    (0, b"GIF89a", ".gif"),
    (0, b"BM", ".bmp"),
]
_VIDEO_MAGIC: list[tuple[int, bytes, str]] = [
    (4, b"ftyp", ".mp4"),  # mp4, mov, m4v (ISO base media)
    (0, b"\x1a\x45\xdf\xa3", ".webm"),  # Matroska / WebM
]


def sniff(data: bytes, kind: InputKind) -> str | None:
    """The extension of `data`'s format if it is an accepted `kind`, from its first bytes."""
    if kind == "image" and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if kind == "video" and data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return ".avi"
    for offset, magic, extension in _IMAGE_MAGIC if kind == "image" else _VIDEO_MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return extension
    return None


def too_large(field_name: str, limit: int) -> ApiError:
    return ApiError(413, "too_large", f"{field_name} is larger than the limit of {limit} bytes (MAX_UPLOAD_BYTES)",
                    field_name)


def invalid(field_name: str, message: str, code: str = "invalid_input") -> ApiError:
    return ApiError(422, code, f"{field_name}: {message}", field_name)


# ------------------------------------------------------------------ reading
def parse_data_url(url: str, field_name: str, limit: int) -> bytes:
    """The bytes of a `data:[<type>][;base64],<data>` URL."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise invalid(field_name, "a data: URL needs a comma before its data")
    if len(payload) > limit * 4 // 3 + 16:  # checked before decoding anything
        raise too_large(field_name, limit)
    if header.lower().endswith(";base64"):
        compact = "".join(urllib.parse.unquote(payload).split()).replace("-", "+").replace("_", "/")  # url-safe too
        try:
            data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        except (binascii.Error, ValueError) as e:
            raise invalid(field_name, f"the data: URL is not valid base64 ({e})") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > limit:
        raise too_large(field_name, limit)
    return data


async def read_upload(upload: UploadFile, field_name: str, limit: int) -> bytes:
    """An uploaded file's bytes, refusing more than `limit`."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise too_large(field_name, limit)
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class RemoteFetcher:
    """GET an http(s) URL through the SSRF guard: redirects re-checked, size and time capped."""

    policy: AddressPolicy
    timeout: float
    limit: int
    resolver: Resolver = system_resolve

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver = system_resolve) -> "RemoteFetcher":
        return cls(AddressPolicy.from_settings(settings.allowed_image_hosts, settings.allow_private_urls),
                   settings.fetch_timeout, settings.max_upload_bytes, resolver)

    async def fetch(self, url: str, field_name: str) -> bytes:
        try:
            with anyio.fail_after(self.timeout):
                return await self._follow(url, field_name)
        except TimeoutError:
            raise invalid(field_name, f"fetching {_shown(url)} took longer than FETCH_TIMEOUT={self.timeout:g} s",
                          "fetch_failed") from None

    async def _follow(self, url: str, field_name: str) -> bytes:
        backend = GuardedBackend(self.policy, self.resolver)
        async with httpcore.AsyncConnectionPool(network_backend=backend, retries=0, max_connections=4) as pool:
            for _ in range(MAX_REDIRECTS + 1):
                target, host_header = _request_target(url, field_name)
                try:
                    async with pool.stream("GET", target, headers=[
                        (b"Host", host_header), (b"User-Agent", USER_AGENT.encode()), (b"Accept", b"*/*"),
                    ], extensions={"timeout": {"connect": self.timeout, "read": self.timeout,
                                               "write": self.timeout, "pool": self.timeout}}) as response:
                        location = _header(response.headers, b"location")
                        if response.status in (301, 302, 303, 307, 308) and location:
                            url = urllib.parse.urljoin(url, location)
                            continue
                        if response.status != 200:
                            raise invalid(field_name, f"fetching {_shown(url)} answered HTTP {response.status}",
                                          "fetch_failed")
                        declared = _header(response.headers, b"content-length")
                        if declared and declared.isdigit() and int(declared) > self.limit:
                            raise too_large(field_name, self.limit)
                        return await self._read_body(response, field_name)
                except URLNotAllowed as e:
                    raise invalid(field_name, str(e), "url_not_allowed") from None
                except (ConnectionError, httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                    raise invalid(field_name, f"could not connect to {_shown(url)} ({_reason(e)})",
                                  "fetch_failed") from None
                except (httpcore.ProtocolError, httpcore.ReadError, httpcore.ReadTimeout, httpcore.WriteError,
                        httpcore.WriteTimeout, httpcore.UnsupportedProtocol, httpcore.PoolTimeout) as e:
                    raise invalid(field_name, f"fetching {_shown(url)} failed ({_reason(e)})", "fetch_failed") from None
        raise invalid(field_name, f"more than {MAX_REDIRECTS} redirects", "fetch_failed")

    async def _read_body(self, response: httpcore.Response, field_name: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_stream():
            size += len(chunk)
            if size > self.limit:
                raise too_large(field_name, self.limit)
            chunks.append(chunk)
        return b"".join(chunks)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _shown(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _request_target(url: str, field_name: str) -> tuple[httpcore.URL, bytes]:
    """The httpcore URL and Host header of an http(s) URL, or a 422 saying what is wrong with it."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise invalid(field_name, f"not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise invalid(field_name, f"URLs must be http, https or data: URLs, not {scheme or 'relative'!r}")
    if parts.username is not None or parts.password is not None:
        raise invalid(field_name, "URLs with a user name or password are not fetched")
    host = parts.hostname
    if not host:
        raise invalid(field_name, "the URL has no host")
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if port is None else f"{shown_host}:{port}"
    path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = urllib.parse.quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    target = path + (f"?{query}" if query else "")
    try:
        return (httpcore.URL(scheme=scheme, host=shown_host, port=port, target=target),
                host_header.encode("idna" if not host_header.isascii() else "ascii"))
    except (UnicodeError, TypeError) as e:
        raise invalid(field_name, f"not a valid URL ({e})") from None


# ------------------------------------------------------------------ checking and storing
def _check_image(data: bytes, field_name: str) -> None:
    image = media.open_image(data)  # raises MediaError (incl. the decompression-bomb guard)
    if min(image.size) < 2:
        raise media.MediaError(f"the image is {image.width}x{image.height}; it needs at least 2x2 pixels")


def _check_video(path: Path) -> None:
    media.read_video(path, max_frames=1)  # decodable, with at least one frame


@dataclass
class InputFolder:
    """The inputs of one task as they are written; `discard()` removes what this request wrote."""

    folder: Path
    written: list[Path] = field(default_factory=list)

    async def store(self, data: bytes, field_name: str, kind: InputKind) -> str:
        """Check `data` is a usable `kind` and write it; its path (what the worker reads)."""
        extension = sniff(data, kind)
        if extension is None:
            accepted = "PNG, JPEG, WebP, GIF or BMP" if kind == "image" else "MP4/MOV, WebM/MKV or AVI"
            raise invalid(field_name, f"not a supported {kind} (expected {accepted})", f"invalid_{kind}")
        digest = hashlib.sha256(data).hexdigest()[:20]
        path = self.folder / f"{field_name}-{digest}{extension}"
        fresh = not path.exists()
        if fresh:
            await anyio.to_thread.run_sync(_write_atomic, path, data)
            self.written.append(path)
        try:
            if kind == "image":
                await anyio.to_thread.run_sync(_check_image, data, field_name)
            else:
                await anyio.to_thread.run_sync(_check_video, path)
        except media.MediaError as e:
            if fresh:
                self.discard_path(path)
            raise invalid(field_name, str(e), f"invalid_{kind}") from None
        return str(path.resolve())

    def discard_path(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
        if path in self.written:
            self.written.remove(path)

    def discard(self) -> None:
        """Remove the files this request wrote (and the folders if that leaves them empty: the
        inputs folder and the task folder above it)."""
        for path in list(self.written):
            self.discard_path(path)
        for folder in (self.folder, self.folder.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# The source of one input: an upload, or a URL (http, https, data:).
InputSource = UploadFile | str


async def read_source(source: InputSource, field_name: str, fetcher: RemoteFetcher) -> bytes:
    if isinstance(source, UploadFile):
        return await read_upload(source, field_name, fetcher.limit)
    url = source.strip()
    if url[:5].lower() == "data:":
        return parse_data_url(url, field_name, fetcher.limit)
    return await fetcher.fetch(url, field_name)

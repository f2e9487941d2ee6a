"""Images and videos in and out: read, fit to a size, write browser-playable mp4 (no torch)."""

from __future__ import annotations

import io
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

ResizeMode = Literal["crop", "pad", "stretch"]
# Decompression-bomb guard: ~64 megapixels is far above any Wan input.
MAX_IMAGE_PIXELS = 64_000_000


class MediaError(ValueError):
    """An input file is not a usable image or video; the message says why."""


def open_image(data: bytes | str | Path) -> Image.Image:
    """Decode an image (bytes or path) to RGB, honouring EXIF rotation; MediaError if it is not one."""
    try:
        source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else str(data)
        with Image.open(source) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise MediaError(
                    f"image is {img.width}x{img.height}; the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "P"):
                background = Image.new("RGB", img.size, (255, 255, 255))
                rgba = img.convert("RGBA")
                background.paste(rgba, mask=rgba.getchannel("A"))
                return background
            return img.convert("RGB")
    except MediaError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise MediaError(f"not a readable image ({e})") from e


def fit_image(image: Image.Image, width: int, height: int, mode: ResizeMode = "crop") -> Image.Image:
    """Exactly width x height. crop: centre-crop to the aspect then resize (nothing distorted);
    pad: fit inside and pad with black; stretch: resize ignoring the aspect."""
    if image.size == (width, height):
        return image
    if mode == "stretch":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if mode == "crop":
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    if mode == "pad":
        inner = ImageOps.contain(image, (width, height), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (width, height), (0, 0, 0))
        canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
        return canvas
    raise ValueError(f"unknown resize_mode {mode!r}")


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[list[Image.Image], float]:
    """Decode a video to RGB frames (at most max_frames) and its frame rate."""
    import av

    frames: list[Image.Image] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("the file has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 16)
            for frame in container.decode(stream):
                frames.append(frame.to_image().convert("RGB"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"not a readable video ({e})") from e
    if not frames:
        raise MediaError("the video has no frames")
    return frames, fps


def probe_video(path: str | Path) -> tuple[int, int, int]:
    """(width, height, frame count) of a video, decoding it fully (counts in headers lie)."""
    frames, _ = read_video(path)
    return frames[0].width, frames[0].height, len(frames)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int) -> int:
    """H.264 / yuv420p / faststart mp4 that browsers play; atomic (temp file + rename). Returns bytes."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    if width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs even sides, got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".mp4")
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=Fraction(int(fps), 1))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": "17", "preset": "medium"}
            for array in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are served to others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def write_thumbnail(frame: np.ndarray, path: str | Path, max_side: int = 512) -> int:
    """JPEG of one frame, at most max_side on its longer side; atomic. Returns bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(frame)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".jpg")
    os.close(fd)
    try:
        image.save(tmp, format="JPEG", quality=90)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size

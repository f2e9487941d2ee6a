"""Media: image fitting modes, mp4 that decodes with the exact frames and size, thumbnails."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import decode_mp4
from PIL import Image

from wanserve import media


def _two_tone(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: shows crops and pads."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def test_fit_modes_give_exactly_the_size_without_distortion():
    wide = _two_tone(200, 100)  # 2:1 into 1:1
    for mode in ("crop", "pad", "stretch"):
        assert media.fit_image(wide, 64, 64, mode).size == (64, 64)
    pad = np.asarray(media.fit_image(wide, 64, 64, "pad"))
    assert pad[0, 32].tolist() == [0, 0, 0]  # letterbox bars above and below
    assert pad[32, 5, 0] > 200 and pad[32, 60, 2] > 200
    crop = np.asarray(media.fit_image(wide, 64, 64, "crop"))
    assert crop[32, 2, 0] > 200 and crop[32, 61, 2] > 200  # centre kept, both colours remain
    assert (crop[0] != 0).any()  # no bars


def test_open_image_rejects_garbage_and_bombs(tmp_path):
    with pytest.raises(media.MediaError):
        media.open_image(b"not an image")
    big = tmp_path / "big.png"
    Image.new("L", (9000, 9000)).save(big)
    with pytest.raises(media.MediaError, match="megapixels"):
        media.open_image(big)


def test_open_image_flattens_transparency():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert media.open_image(_png_bytes(rgba)).getpixel((0, 0)) == (255, 255, 255)


def _png_bytes(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_mp4_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (9, 1, 1, 3), dtype=np.uint8), 48 * 64, axis=1).reshape(9, 48, 64, 3)
    path = tmp_path / "v.mp4"
    size = media.write_mp4(frames, path, fps=16)
    assert size == path.stat().st_size > 0
    decoded, info = decode_mp4(path)
    assert decoded.shape == (9, 48, 64, 3)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p" and info["fps"] == 16
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 6  # flat colours survive H.264
    # moov atom before mdat: browsers can start playing before the download ends
    head = path.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))
    read, fps = media.read_video(path, max_frames=5)
    assert len(read) == 5 and read[0].size == (64, 48) and fps == 16


def test_thumbnail(tmp_path):
    frame = np.full((480, 832, 3), 128, np.uint8)
    media.write_thumbnail(frame, tmp_path / "t.jpg")
    with Image.open(tmp_path / "t.jpg") as img:
        assert img.format == "JPEG" and max(img.size) == 512


def test_odd_sizes_are_refused_by_the_writer(tmp_path):
    with pytest.raises(ValueError, match="even"):
        media.write_mp4(np.zeros((1, 31, 32, 3), np.uint8), tmp_path / "x.mp4", 16)

"""Shared fixtures: tiny models (built once per session), free ports, video decoding, PostgreSQL."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

POSTGRES_URL = os.environ.get(
    "WANSERVE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Every variant as a tiny random-weight model in diffusers layout."""
    from wanserve.engine.tiny_model import make_tiny_model
    from wanserve.variants import VARIANTS

    root = tmp_path_factory.mktemp("tiny-models")
    return {name: make_tiny_model(root / name, name) for name in VARIANTS}


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory) -> Path:
    """A DATA_DIR whose demo model is already built (shared by tests that only read it)."""
    from wanserve.engine.tiny_model import ensure_demo_model

    data = tmp_path_factory.mktemp("demo-data")
    ensure_demo_model(data)
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decode_mp4(path: str | Path) -> tuple[np.ndarray, dict]:
    """Decode every frame of an mp4: (uint8 [F, H, W, 3], stream info)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"codec": stream.codec_context.name, "pix_fmt": stream.codec_context.pix_fmt,
                "fps": float(stream.average_rate or 0)}
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames), info


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def postgres_reachable(url: str = POSTGRES_URL) -> bool:
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    if not postgres_reachable():
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} (set WANSERVE_TEST_POSTGRES_URL)")
    return POSTGRES_URL

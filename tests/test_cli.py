"""The `wanserve` command line as a user runs it: real processes, offline, decoded output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import decode_mp4
from PIL import Image


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "wanserve", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=240)


def test_generate_on_the_demo_model(tmp_path, demo_data_dir):
    out = tmp_path / "demo.mp4"
    proc = run_cli("generate", "--prompt", "a cat", "--size", "100*70", "--num-frames", "8", "--steps", "3",
                   "--seed", "1", "-o", str(out), env={"DATA_DIR": str(demo_data_dir)})
    assert proc.returncode == 0, proc.stderr
    text = proc.stderr + proc.stdout
    assert "demo, random weights" in text
    assert "size 100*70 -> 96*64" in text and "num_frames 8 -> 9" in text
    for stage in ("load", "encode", "denoise", "decode", "write", "s/step"):
        assert stage in text
    frames, info = decode_mp4(out)
    assert frames.shape == (9, 64, 96, 3) and info["codec"] == "h264"
    assert out.with_suffix(".jpg").is_file()


def test_make_tiny_model_then_generate_offline(tmp_path):
    model = tmp_path / "i2v"
    proc = run_cli("make-tiny-model", str(model), "--variant", "wan2.1-i2v")
    assert proc.returncode == 0, proc.stderr
    assert (model / "model_index.json").is_file() and (model / "image_encoder").is_dir()
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "i2v.mp4"
    proc = run_cli("generate", "--model", str(model), "--image", str(image), "--prompt", "waves",
                   "--size", "64*48", "--num-frames", "5", "--steps", "2", "--seed", "3", "-o", str(out),
                   "--resize-mode", "pad")
    assert proc.returncode == 0, proc.stderr
    assert "wan2.1-i2v" in proc.stderr and "i2v 64*48 x 5 frames" in proc.stderr
    frames, _ = decode_mp4(out)
    assert frames.shape == (5, 48, 64, 3)


def test_bad_inputs_exit_2_with_the_reason(tmp_path, tiny_models, demo_data_dir):
    env = {"DATA_DIR": str(demo_data_dir)}
    proc = run_cli("generate", "--size", "huge", env=env)
    assert proc.returncode == 2 and "W*H" in proc.stderr
    proc = run_cli("generate", "--model", str(tiny_models["wan2.1-i2v"]), "--prompt", "x", "--steps", "2")
    assert proc.returncode == 2 and "not served by model wan2.1-i2v" in proc.stderr
    proc = run_cli("generate", "--prompt", "x", env={**env, "ULYSSES_SIZE": "0"})
    assert proc.returncode == 2 and "ULYSSES_SIZE" in proc.stderr
    proc = run_cli("generate", "--model", str(tmp_path / "missing"), "--prompt", "x")
    assert proc.returncode == 1 and "does not exist" in proc.stderr
    proc = run_cli("make-tiny-model", str(tmp_path / "m"), "--variant", "wan9")
    assert proc.returncode == 2 and "unknown variant" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_the_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("generate", "make-tiny-model"):
        assert command in proc.stdout

"""`wanserve generate` on several ranks, as a user runs it: it starts its ranks itself, or runs
under torchrun; the mp4 equals the one-process video; bad layouts and requests exit cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import decode_mp4, free_port, psnr
from typer.testing import CliRunner

from wanserve import media
from wanserve.cli.main import app
from wanserve.request import GenerationRequest

pytestmark = pytest.mark.slow

ARGS = ["--prompt", "a dog runs along the beach", "--size", "64*64", "--num-frames", "9", "--steps", "3",
        "--seed", "5", "--guidance-scale", "5", "--device", "cpu"]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "COLLECTIVE_TIMEOUT": "120"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=240, check=False)


def reference_mp4(model: Path, out: Path) -> Path:
    """The same request run by one in-process engine, written the way the CLI writes it."""
    from wanserve.engine.engine import EngineOptions, WanEngine

    engine = WanEngine.load(model, EngineOptions(device="cpu"))
    request = GenerationRequest(prompt=ARGS[1], size="64*64", num_frames=9, infer_steps=3, seed=5, guidance_scale=5.0)
    result = engine.generate(request)
    media.write_mp4(result.frames, out, result.request.fps)
    return out


def test_generate_starts_its_own_ranks(tmp_path, tiny_models):
    model = tiny_models["wan2.2-ti2v-5b"]
    out = tmp_path / "group.mp4"
    proc = run([sys.executable, "-m", "wanserve", "generate", *ARGS, "--model", str(model), "-o", str(out),
                "--ulysses-size", "2", "--dit-fsdp", "--vae-parallel"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "group: rank 0 of 2 ranks, ulysses 2, dit_fsdp, vae_parallel" in proc.stderr
    assert proc.stderr.count("seconds") == 1  # one timings table: only rank 0 reports
    frames, _ = decode_mp4(out)
    reference, _ = decode_mp4(reference_mp4(model, tmp_path / "one.mp4"))
    assert frames.shape == (9, 64, 64, 3) and psnr(frames, reference) >= 40
    assert out.with_suffix(".jpg").is_file()


def test_generate_under_torchrun(tmp_path, tiny_models):
    model = tiny_models["wan2.1-t2v"]
    out = tmp_path / "torchrun.mp4"
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                f"--master-port={free_port()}", "-m", "wanserve", "generate", *ARGS, "--model", str(model),
                "-o", str(out), "--cfg-parallel", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "group: rank 0 of 2 ranks, cfg 2" in proc.stderr
    frames, _ = decode_mp4(out)
    reference, _ = decode_mp4(reference_mp4(model, tmp_path / "one.mp4"))
    assert psnr(frames, reference) >= 40


def test_bad_layouts_and_requests_exit_2_without_hanging(tmp_path, tiny_models):
    model = str(tiny_models["wan2.1-t2v"])
    base = [sys.executable, "-m", "wanserve", "generate", *ARGS, "--model", model, "-o", str(tmp_path / "x.mp4")]
    # Refused before any rank starts (in-process: no process is started to refuse them).
    for flags, words in ((["--ring-size", "2"], ("RING_SIZE: ring attention merges partial results by their "
                          "log-sum-exp, and ATTENTION_BACKEND=native cannot give it")),
                         (["--ulysses-size", "2", "--devices", "3"],
                          "DEVICES: 3 devices cannot be split into groups of 2")):
        result = CliRunner().invoke(app, [*base[3:], *flags])
        assert result.exit_code == 2 and words in " ".join(result.output.split())
    # Refused by rank 0 per request; the other rank hears it and exits too.
    proc = run([*base, "--cfg-parallel", "2", "--guidance-scale", "1"], tmp_path)
    assert proc.returncode == 2 and "guidance_scale: this worker group runs with CFG_PARALLEL=2" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.mp4").exists()

"""`wanserve diagnose` as an operator runs it: exit codes, named problems, a summary table."""

from __future__ import annotations

import os
import subprocess
import sys


def diagnose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", **env}
    for name in ("MODEL_CKPT_DIR", "DATABASE_URL", "ULYSSES_SIZE"):
        if name not in env:
            full.pop(name, None)
    return subprocess.run([sys.executable, "-m", "wanserve", "diagnose", *args], capture_output=True, text=True,
                          env=full, timeout=240)


def test_a_healthy_setup_passes_with_a_summary(demo_data_dir, tiny_models):
    proc = diagnose(env={"DATA_DIR": str(demo_data_dir), "MODEL_CKPT_DIR": str(tiny_models["wan2.1-flf2v"])})
    out = proc.stderr
    assert proc.returncode == 0, out
    for name in ("python", "packages", "settings", "devices", "layout", "model", "data dir", "queue database",
                 "memory cpu"):
        assert name in out
    assert "wan2.1-flf2v (diffusers layout" in out
    assert "0 failed" in out


def test_pipeline_smoke_run_on_the_demo_model(demo_data_dir):
    proc = diagnose("--pipeline", env={"DATA_DIR": str(demo_data_dir)})
    assert proc.returncode == 0, proc.stderr
    assert "demo model (random weights" in proc.stderr
    assert "ok pipeline: wanserve-demo (demo, random weights)" in proc.stderr


def test_bad_setting_fails_and_is_named(demo_data_dir):
    proc = diagnose("--quick", env={"DATA_DIR": str(demo_data_dir), "ULYSSES_SIZE": "0"})
    assert proc.returncode == 1
    assert "ULYSSES_SIZE" in proc.stderr and "1 failed" in proc.stderr


def test_incomplete_model_folder_names_what_is_missing(tmp_path, tiny_models, demo_data_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_models["wan2.1-i2v"], model)
    shutil.rmtree(model / "image_encoder")
    proc = diagnose("--quick", env={"DATA_DIR": str(demo_data_dir), "MODEL_CKPT_DIR": str(model)})
    assert proc.returncode == 1
    assert "image_encoder" in proc.stderr


def test_unreachable_service_fails_health(demo_data_dir):
    proc = diagnose("--health", "--url", "http://127.0.0.1:9", env={"DATA_DIR": str(demo_data_dir)})
    assert proc.returncode == 1 and "not reachable" in proc.stderr


def test_impossible_layout_and_unreachable_queue_fail(demo_data_dir):
    proc = diagnose(env={"DATA_DIR": str(demo_data_dir), "RING_SIZE": "2",
                         "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none"})
    assert proc.returncode == 1
    assert "RING_SIZE" in proc.stderr and "log-sum-exp" in proc.stderr
    assert "FAIL queue database" in proc.stderr and "2 failed" in proc.stderr

"""scripts/start_service.sh: device detection, layout plan, NPU variables (vendor tools faked on PATH)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "start_service.sh"

NVIDIA_SMI = """#!/bin/sh
case "$1" in
  -L) for i in 0 1 2 3 4 5 6 7; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)"; done ;;
  --query-gpu=*) for i in 0 1 2 3 4 5 6 7; do echo "NVIDIA H100 80GB HBM3, 81559 MiB"; done ;;
esac
"""
NPU_SMI = """#!/bin/sh
if [ "$1 $2" = "info -l" ]; then
  printf "  Total Count                    : 8\\n\\n  NPU ID                         : 0\\n"
else
  echo "+-----+"
fi
"""


def plan(tmp_path: Path, tools: dict[str, str], **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in tools.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ULYSSES_SIZE", "RING_SIZE", "CFG_PARALLEL", "DEVICES", "MODEL_CKPT_DIR", "DEVICE")}
    full = {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", "START_DRY_RUN": "1", **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full, cwd=tmp_path, timeout=120)


def test_cpu_plan(tmp_path):
    proc = plan(tmp_path, {})
    assert proc.returncode == 0, proc.stderr
    assert "devices      : cpu x 1" in proc.stdout
    assert "demo model (random weights" in proc.stdout
    assert "ASCEND" not in proc.stdout


def test_eight_gpus_in_two_groups(tmp_path):
    proc = plan(tmp_path, {"nvidia-smi": NVIDIA_SMI}, ULYSSES_SIZE="4", MODEL_CKPT_DIR="/models/i2v")
    assert proc.returncode == 0, proc.stderr
    assert "devices      : cuda x 8 (8 NVIDIA H100 80GB HBM3, 81559 MiB)" in proc.stdout
    assert "layout       : 2 group(s) of 4 rank(s) (ulysses 4, ring 1, cfg 1)" in proc.stdout
    assert "model        : /models/i2v" in proc.stdout


def test_npu_exports_the_ascend_variables(tmp_path):
    proc = plan(tmp_path, {"npu-smi": NPU_SMI}, ULYSSES_SIZE="8")
    assert proc.returncode == 0, proc.stderr
    assert "devices      : npu x 8" in proc.stdout
    assert "1 group(s) of 8 rank(s)" in proc.stdout
    for assignment in ("ASCEND_LAUNCH_BLOCKING=0", "HCCL_TIMEOUT=2400", "HCCL_BUFFSIZE=512",
                       "PYTORCH_NPU_ALLOC_CONF=expandable_segments:True"):
        assert assignment in proc.stdout


def test_layout_that_does_not_divide_the_devices_is_refused(tmp_path):
    proc = plan(tmp_path, {"nvidia-smi": NVIDIA_SMI}, ULYSSES_SIZE="3")
    assert proc.returncode == 2
    assert "8 device(s) cannot be split into groups of 3" in proc.stderr


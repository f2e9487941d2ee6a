"""benchmarks/gpu_step.py runs on a CPU with tiny models (the GPU benchmark's code path, in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_step_benchmark_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_step.json"
    proc = subprocess.run(
        # One size of the two keeps the test short; the code per size is the same.
        [sys.executable, str(ROOT / "benchmarks" / "gpu_step.py"), "--device", "cpu", "--tiny", "--sizes", "512x512x41",
         "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    steps = [r for r in results if r["impl"] != "end-to-end"]
    # 2 models x (engine, stock diffusers) at the tiny stand-in for 512x512x41, each a positive time
    # and throughput.
    assert {(r["model"], r["size"], r["impl"]) for r in steps} == {
        (m, "32x32x5", i) for m in ("i2v-14b", "t2v-1.3b") for i in ("wanserve engine (best)", "diffusers defaults")
    }
    assert all(r["ok"] and r["s_per_step"] > 0 and r["tflops"] > 0 for r in steps)
    (e2e,) = [r for r in results if r["impl"] == "end-to-end"]
    assert e2e["ok"] and e2e["model"] == "i2v-14b" and e2e["seconds"] > 0 and e2e["peak_memory_gib"] > 0
    assert {"encode", "denoise", "decode", "write"} <= set(e2e["stages"])
    for line in ("s/step", "TFLOP/s", "end-to-end", "peak memory", "0 failed"):
        assert line in proc.stdout

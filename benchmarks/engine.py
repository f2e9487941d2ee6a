"""Per-stage times and seconds per step of one request on the engine (no service around it).

    python benchmarks/engine.py                       # demo model, the original example request
    python benchmarks/engine.py --model DIR --size 832*480 --num-frames 81 --steps 50 --repeat 3

Prints the machine, the load time, then for each run the time per stage and s/step.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

# This script's folder holds scripts named like standard modules (queue.py): keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the demo model)")
    parser.add_argument("--data-dir", type=Path, default=Path("./wanserve-data"))
    parser.add_argument("--task", default=None)
    parser.add_argument("--image", default=None)
    parser.add_argument("--size", default="512*512")
    parser.add_argument("--num-frames", type=int, default=41)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON line per run")
    args = parser.parse_args()

    import torch

    from wanserve.engine.engine import EngineOptions, WanEngine
    from wanserve.request import GenerationRequest

    engine = WanEngine.load(args.model, EngineOptions(device=args.device), data_dir=args.data_dir)
    print(f"machine: {platform.node()} {platform.machine()} | {engine.device_info.describe()} | "
          f"torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(f"model: {engine.model_label} | load {engine.load_seconds:.2f} s | attention {engine.attention_backend}")
    request = GenerationRequest(task=args.task, image=args.image, prompt="a red car drives through a forest",
                                size=args.size, num_frames=args.num_frames, infer_steps=args.steps,
                                guidance_scale=args.guidance_scale, seed=0)
    totals: list[float] = []
    per_step: list[float] = []
    for run in range(args.repeat):
        start = time.perf_counter()
        result = engine.generate(request)
        total = time.perf_counter() - start
        totals.append(total)
        per_step.append(result.seconds_per_step)
        stages = " ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
        if args.json:
            print(json.dumps({"run": run, "total_s": round(total, 3), "s_per_step": round(result.seconds_per_step, 4),
                              **{f"{k}_s": v for k, v in result.timings.items()}}))
        else:
            print(f"run {run}: {result.request.size} x {result.request.num_frames} frames, {result.steps} steps | "
                  f"{stages} | {result.seconds_per_step:.3f} s/step | total {total:.2f} s")
    print(f"median: total {statistics.median(totals):.2f} s, {statistics.median(per_step):.3f} s/step")


if __name__ == "__main__":
    main()

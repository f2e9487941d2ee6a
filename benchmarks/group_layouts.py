"""One request on each worker-group layout: speed, weight memory per rank, equality with 1 rank.

    python benchmarks/group_layouts.py                                   # demo model, CPU gloo ranks
    python benchmarks/group_layouts.py --model DIR --size 832*480 --num-frames 81 --steps 10 \\
        --layouts 1,ulysses=8,ulysses=4+cfg=2,ulysses=8+dit_fsdp,ulysses=8+vae_parallel

Each layout starts a real group (`spawn_group` + `init_rank`, one process per device) and runs
the request once; rank 0 prints its stage timings and s/step, each rank its transformer and T5
weight bytes (its FSDP shards only) and its peak device memory (RSS on a CPU). The video of every
layout is compared with the 1-rank video (PSNR; identical frames print inf).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# This script's folder holds scripts named like standard modules (queue.py): keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def parse_layout(text: str) -> dict:
    """'ulysses=2+dit_fsdp' -> {'ulysses_size': 2, 'dit_fsdp': True}; '1' -> one rank."""
    names = {"ulysses": "ulysses_size", "ring": "ring_size", "cfg": "cfg_parallel"}
    values: dict = {}
    for part in text.split("+"):
        part = part.strip()
        if part in ("", "1"):
            continue
        key, _, value = part.partition("=")
        values[names.get(key, key)] = int(value) if value else True
    return values


def _rank(rank: int, world_size: int, master_addr: str, master_port: int, settings, request, out: str) -> None:
    import numpy as np
    import torch

    from wanserve.engine import devices
    from wanserve.engine.distributed import init_rank, leave_process_group
    from wanserve.engine.distributed.fsdp import local_parameter_bytes
    from wanserve.engine.engine import WanEngine

    plan = init_rank(settings, rank, world_size, master_addr, master_port)
    engine = WanEngine.from_settings(settings, plan=plan)
    resolved = plan.broadcast_object(engine.resolve(request) if plan.is_leader else None)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    start = time.perf_counter()
    result = engine.generate(resolved)
    seconds = time.perf_counter() - start
    if engine.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(engine.device)
    else:
        peak = devices.peak_rss_bytes()
    row = {
        "rank": rank, "seconds": seconds, "timings": result.timings, "s_per_step": result.seconds_per_step,
        "transformer_bytes": sum(local_parameter_bytes(e) for e in engine.components.experts),
        "t5_bytes": local_parameter_bytes(engine.components.text_encoder), "peak_bytes": peak,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(row))
    if plan.is_leader:
        np.save(Path(out, "frames.npy"), result.frames)
    leave_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the demo model)")
    parser.add_argument("--data-dir", type=Path, default=Path("./wanserve-data"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image", default=None, help="first frame, for i2v models")
    parser.add_argument("--size", default="128*128")
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--layouts", default="1,ulysses=2,cfg=2,ulysses=2+dit_fsdp+t5_fsdp,ulysses=2+vae_parallel")
    args = parser.parse_args()

    import numpy as np

    from wanserve.request import GenerationRequest
    from wanserve.settings import load_settings
    from wanserve.worker.launch import spawn_group

    request = GenerationRequest(prompt="a red car drives through a forest road in autumn", image=args.image,
                                size=args.size, num_frames=args.num_frames, infer_steps=args.steps, seed=1,
                                guidance_scale=5.0)
    print(f"# {args.model or 'demo model'} | {args.size} x {args.num_frames} frames, {args.steps} steps, "
          f"guidance 5 | device {args.device}", flush=True)
    reference = None
    for text in [t.strip() for t in args.layouts.split(",") if t.strip()]:
        layout = parse_layout(text)
        settings = load_settings(model_ckpt_dir=args.model, data_dir=args.data_dir, device=args.device, **layout)
        with tempfile.TemporaryDirectory() as out:
            try:
                group = spawn_group(_rank, (settings, request, out), settings.group_size, settings)
                codes = group.join()
                if any(codes):
                    raise RuntimeError(group.failure or f"exit codes {codes}")
                rows = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(settings.group_size)]
                frames = np.load(Path(out, "frames.npy"))
            except Exception as e:  # noqa: BLE001 - report the layout and go on
                print(f"{text:<32} FAILED: {e}", flush=True)
                continue
        if reference is None and settings.group_size == 1:
            reference = frames
        if reference is not None and reference.shape == frames.shape:
            mse = float(np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2))
            quality = "inf" if mse == 0 else f"{10 * np.log10(255.0 ** 2 / mse):.1f}"
        else:
            quality = "n/a"
        lead = rows[0]
        mib = 1024 ** 2
        print(
            f"{text:<32} ranks {settings.group_size}  {lead['s_per_step']:.3f} s/step  total {lead['seconds']:.2f} s "
            f"(denoise {lead['timings'].get('denoise', 0):.2f}, decode {lead['timings'].get('decode', 0):.2f})  "
            f"DiT/rank {max(r['transformer_bytes'] for r in rows) / mib:.2f} MiB  "
            f"T5/rank {max(r['t5_bytes'] for r in rows) / mib:.2f} MiB  "
            f"peak/rank {max(r['peak_bytes'] for r in rows) / mib:.0f} MiB  PSNR vs 1 rank {quality} dB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

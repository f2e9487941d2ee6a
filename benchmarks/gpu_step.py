"""Seconds per denoising step and achieved TFLOP/s of real-size Wan2.1 models on one device.

    python benchmarks/gpu_step.py                         # one GPU/NPU: the full run (< 8 min on an H100)
    python benchmarks/gpu_step.py --device cpu --tiny     # the same code on tiny models, in seconds (CI)
    python benchmarks/gpu_step.py --models i2v-14b --sizes 832x480x81 --json out.json

What it measures, for Wan2.1 I2V-14B and T2V-1.3B (random weights: speed does not depend on them):
1. s/step with CFG (two transformer passes per step) and achieved TFLOP/s, at 832x480x81 and at
   512x512x41, for (a) the stock diffusers pipeline with its defaults, the baseline a user would
   pick, and (b) wanserve's engine with its best settings for the device (attention backend
   `auto`). Steps are timed from the denoising loop's own per-step callbacks after warm-up steps;
   the run is then stopped, so prompt/image encoding and the VAE are not in these numbers.
2. The original example request end to end on the engine (I2V-14B, 512*512, 41 frames, 30 steps:
   encode, denoise, decode, mp4 written) with its peak device memory.

The models are built directly on the device in bf16 (VAE in fp32), each weight allocated once
where it will live. Not meta-init + `to_empty`: that leaves the buffers the modules compute in
their constructors (RoPE tables, CLIP position ids) uninitialised. TFLOP/s counts the
transformer's matmuls and attention (see `transformer_flops`), the usual way such numbers are
quoted. Each number is printed as soon as it is measured and a failed case is reported and
skipped, so a run cut short still leaves every number it got; `--json` is rewritten likewise.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Python puts this script's folder first on sys.path, where sibling scripts named like standard
# modules (benchmarks/queue.py) would shadow them for torch and diffusers; this script imports
# no sibling.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

# --- Architectures (the configs the official diffusers repos ship) ---------------------------------
TRANSFORMERS: dict[str, dict[str, Any]] = {
    "i2v-14b": {"patch_size": (1, 2, 2), "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36,
                    "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
                    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": 1280,
                    "added_kv_proj_dim": 5120, "rope_max_seq_len": 1024},
    "t2v-1.3b": {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
                     "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
                     "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024},
}
TINY_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "i2v-14b": {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 36,
                    "out_channels": 16, "text_dim": 32, "freq_dim": 256, "ffn_dim": 32, "num_layers": 2, "cross_attn_norm": True,
                    "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": 16, "added_kv_proj_dim": 24,
                    "rope_max_seq_len": 1024},
    "t2v-1.3b": {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 16,
                     "out_channels": 16, "text_dim": 32, "freq_dim": 256, "ffn_dim": 32, "num_layers": 2, "cross_attn_norm": True,
                     "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024},
}
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
                "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
UMT5_TINY = {"vocab_size": 512, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
                 "relative_attention_num_buckets": 8, "relative_attention_max_distance": 32, "feed_forward_proj": "gated-gelu"}
CLIP_H14 = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
                "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu"}
CLIP_TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32,
                 "patch_size": 8, "projection_dim": 16}
VAE_TINY = {"base_dim": 3, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1, "temperal_downsample": [False, True, True]}

VARIANT_OF = {"i2v-14b": "wan2.1-i2v", "t2v-1.3b": "wan2.1-t2v"}
SIZES = ["832x480x81", "512x512x41"]
TINY_SIZES = {"832x480x81": "64x48x9", "512x512x41": "32x32x5"}  # same shapes of work, toy sizes
TEXT_TOKENS = 512


@dataclass
class Measurement:
    model: str
    size: str
    impl: str
    ok: bool = True
    s_per_step: float | None = None
    tflops: float | None = None
    steps_timed: int = 0
    attention: str = ""
    seconds: float | None = None  # end to end
    stages: dict[str, float] = field(default_factory=dict)
    peak_memory_gib: float | None = None
    error: str | None = None


# --- FLOPs --------------------------------------------------------------------------------------
def video_tokens(width: int, height: int, frames: int, patch=(1, 2, 2), spatial: int = 8, temporal: int = 4) -> int:
    latent_frames = (frames - 1) // temporal + 1
    return (latent_frames // patch[0]) * (height // spatial // patch[1]) * (width // spatial // patch[2])


def transformer_flops(cfg: dict[str, Any], tokens: int, context_tokens: int) -> float:
    """Multiply-add FLOPs (x2) of one transformer pass: projections, attention, FFN, embed, head."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    n, c, f = tokens, context_tokens, cfg["ffn_dim"]
    per_block = (
        2 * n * d * d * 4            # self-attention q, k, v, out
        + 2 * 2 * n * n * d          # self-attention scores and weighted sum
        + 2 * n * d * d * 2          # cross-attention q, out
        + 2 * c * d * d * 2          # cross-attention k, v over text (+ image) tokens
        + 2 * 2 * n * c * d          # cross-attention scores and weighted sum
        + 2 * n * d * f * 2          # feed-forward in and out
    )
    patch = math.prod(cfg["patch_size"])
    edges = 2 * n * d * (cfg["in_channels"] * patch + cfg["out_channels"] * patch)
    return cfg["num_layers"] * per_block + edges


# --- Building models on the device --------------------------------------------------------------
def build_components(name: str, device, tiny: bool, work: Path):
    """WanComponents of `name` with random weights, built on `device` (bf16; VAE fp32)."""
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    from wanserve.engine.components import WanComponents
    from wanserve.engine.tiny_model import make_tiny_model
    from wanserve.variants import VARIANTS

    # A tokenizer trained offline (real UMT5 vocabulary files are not downloaded); it pads to 512
    # tokens like the real one, so the text encoder does the same work.
    tokenizer_model = work / "tokenizer-source"
    if not tokenizer_model.exists():
        make_tiny_model(tokenizer_model, "wan2.1-t2v")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_model / "tokenizer"))

    variant = VARIANTS[VARIANT_OF[name]]
    dtype = torch.bfloat16 if device.type != "cpu" else torch.float32
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            transformer = WanTransformer3DModel(**(TINY_TRANSFORMERS if tiny else TRANSFORMERS)[name])
            text_encoder = UMT5EncoderModel(UMT5Config(**(UMT5_TINY if tiny else UMT5_XXL)))
            image_encoder = None
            if variant.uses_clip:
                image_encoder = CLIPVisionModel(CLIPVisionConfig(**(CLIP_TINY if tiny else CLIP_H14)))
        torch.set_default_dtype(torch.float32)
        with torch.device(device):
            vae = AutoencoderKLWan(**(VAE_TINY if tiny else {}))
    finally:
        torch.set_default_dtype(previous)
    processor = None
    if variant.uses_clip:
        side = (CLIP_TINY if tiny else CLIP_H14)["image_size"]
        processor = CLIPImageProcessor(crop_size=side, size={"shortest_edge": side})
    scheduler_config = {"_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 1000,
                        "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}
    return WanComponents(
        variant=variant, name=f"wan2.1-{name} (random weights)", tokenizer=tokenizer, text_encoder=text_encoder,
        vae=vae, scheduler_config=scheduler_config, transformer=transformer, image_encoder=image_encoder,
        image_processor=processor, random_weights=True,
    )


def stock_pipeline(c):
    """What a diffusers user writes: the pipeline class with the model's modules, defaults otherwise."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    common = {"tokenizer": c.tokenizer, "text_encoder": c.text_encoder, "transformer": c.transformer, "vae": c.vae,
                  "scheduler": scheduler}
    if c.image_encoder is not None:
        pipe = WanImageToVideoPipeline(**common, image_encoder=c.image_encoder, image_processor=c.image_processor)
    else:
        pipe = WanPipeline(**common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- Timing ------------------------------------------------------------------------------------
def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)  # type: ignore[attr-defined]


def per_step(stamps: list[float], warmup: int, steps: int) -> float:
    """Stamps taken at the end of each step; the steps after `warmup` are averaged."""
    if len(stamps) < warmup + steps:
        raise RuntimeError(f"only {len(stamps)} steps ran, {warmup + steps} were needed")
    return (stamps[warmup + steps - 1] - stamps[warmup - 1]) / steps


def time_stock(c, width: int, height: int, frames: int, image, warmup: int, steps: int, device) -> float:
    pipe = stock_pipeline(c)
    c.transformer.reset_attention_backend()  # the dispatcher's default (PyTorch SDPA)
    stamps: list[float] = []

    def on_step_end(pipeline, i, t, kwargs):
        synchronize(device)
        stamps.append(time.perf_counter())
        if len(stamps) >= warmup + steps:
            pipeline._interrupt = True  # the remaining steps are skipped; latents returned as they are
        return {}

    extra = {"image": image} if c.image_encoder is not None else {}
    pipe(prompt="a cat walks on the grass in the sun", height=height, width=width, num_frames=frames,
         output_type="latent", callback_on_step_end=on_step_end, **extra)
    return per_step(stamps, warmup, steps)


def time_engine(engine, width: int, height: int, frames: int, image_path: str | None, warmup: int, steps: int,
                device) -> float:
    from wanserve.engine.errors import GenerationCancelled
    from wanserve.request import GenerationRequest

    for expert in engine.components.experts:
        expert.set_attention_backend(engine.attention_backend)
    stamps: list[float] = []

    def on_step(step: int, total: int, stage: str) -> bool:
        if stage != "denoise":
            return False
        synchronize(device)
        stamps.append(time.perf_counter())
        return len(stamps) >= warmup + steps  # stop: the VAE decode is not part of a step

    request = GenerationRequest(prompt="a cat walks on the grass in the sun", size=f"{width}*{height}",
                                num_frames=frames, infer_steps=max(50, warmup + steps + 1), guidance_scale=5.0,
                                seed=0, image=image_path)
    try:
        engine.generate(request, on_step)
    except GenerationCancelled:
        pass
    return per_step(stamps, warmup, steps)


def peak_memory_gib(device) -> float:
    import torch

    from wanserve.engine.devices import peak_rss_bytes

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    if device.type == "npu":
        return torch.npu.max_memory_allocated(device) / 1024**3  # type: ignore[attr-defined]
    return peak_rss_bytes() / 1024**3


def reset_peak_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "npu":
        torch.npu.reset_peak_memory_stats(device)  # type: ignore[attr-defined]


def free_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "npu":
        torch.npu.empty_cache()  # type: ignore[attr-defined]


# --- The run -----------------------------------------------------------------------------------
class Report:
    def __init__(self, json_path: Path | None) -> None:
        self.rows: list[Measurement] = []
        self.json_path = json_path
        self.header: dict[str, Any] = {}

    def add(self, m: Measurement) -> None:
        self.rows.append(m)
        if not m.ok:
            print(f"{m.model:<9} {m.size:<11} {m.impl:<22} FAILED: {m.error}", flush=True)
        elif m.impl == "end-to-end":
            stages = " ".join(f"{k} {v:.2f}s" for k, v in m.stages.items())
            print(f"{m.model:<9} {m.size:<11} {m.impl:<22} {m.seconds:8.2f} s total  peak memory "
                  f"{m.peak_memory_gib:.2f} GiB  ({stages})", flush=True)
        else:
            print(f"{m.model:<9} {m.size:<11} {m.impl:<22} {m.s_per_step:8.3f} s/step  {m.tflops:8.3g} TFLOP/s  "
                  f"[attention {m.attention}; {m.steps_timed} steps after warm-up]", flush=True)
        if self.json_path:
            self.json_path.write_text(json.dumps({**self.header, "results": [asdict(r) for r in self.rows]}, indent=2))


def parse_size(text: str) -> tuple[int, int, int]:
    w, h, f = (int(x) for x in text.lower().split("x"))
    return w, h, f


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cuda | npu | cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (seconds, for CI)")
    parser.add_argument("--models", default="i2v-14b,t2v-1.3b", help="comma list of: " + ", ".join(TRANSFORMERS))
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma list of WxHxF")
    parser.add_argument("--impls", default="engine,stock", help="engine (wanserve, best settings), stock (diffusers)")
    parser.add_argument("--warmup", type=int, default=1, help="steps run before timing (>= 1)")
    parser.add_argument("--steps", type=int, default=2, help="steps timed per case")
    parser.add_argument("--e2e-steps", type=int, default=None,
                        help="steps of the end-to-end request (default 30; 3 with --tiny; 0: skip it)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; cases starting later are skipped")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (after each one)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.e2e_steps is None:
        args.e2e_steps = 3 if args.tiny else 30

    started = time.perf_counter()
    import diffusers
    import numpy as np
    import torch
    from PIL import Image

    from wanserve import media
    from wanserve.engine import devices, quiet_libraries
    from wanserve.engine.engine import EngineOptions, WanEngine
    from wanserve.request import GenerationRequest

    quiet_libraries()
    info = devices.detect(args.device)
    device = info.torch_device(0)
    if info.kind == "cpu" and not args.tiny:
        parser.error("real-size models on a CPU would take hours: add --tiny (or run on a GPU/NPU)")
    report = Report(args.json)
    report.header = {"device": info.describe(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "tiny": args.tiny, "python": platform.python_version()}
    print(f"# gpu_step on {info.describe()} | torch {torch.__version__} | diffusers {diffusers.__version__} | "
          f"{'tiny models' if args.tiny else 'real-size models, random weights, bf16'}", flush=True)

    def over_budget() -> bool:
        return time.perf_counter() - started > args.budget

    work = Path(tempfile.mkdtemp(prefix="gpu-step-"))
    rng = np.random.default_rng(0)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name not in TRANSFORMERS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(TRANSFORMERS)}")
        if over_budget():
            print(f"{name}: skipped (time budget of {args.budget:.0f} s spent)", flush=True)
            continue
        engine = components = None
        try:
            t0 = time.perf_counter()
            components = build_components(name, device, args.tiny, work)
            synchronize(device)
            weights = sum(p.numel() * p.element_size() for p in components.transformer.parameters()) / 1024**3
            engine = WanEngine(components, EngineOptions(device=info.kind, dtype="auto", vae_dtype="fp32"))
            print(f"{name}: built on {device} in {time.perf_counter() - t0:.1f} s (transformer {weights:.2f} GiB), "
                  f"engine attention backend: {engine.attention_backend}", flush=True)
        except Exception as e:  # noqa: BLE001 - report and go on with the next model
            report.add(Measurement(name, "-", "build", ok=False, error=f"{type(e).__name__}: {e}"))
            traceback.print_exc()
            del engine, components
            free_memory(device)
            continue

        cfg = (TINY_TRANSFORMERS if args.tiny else TRANSFORMERS)[name]
        context = TEXT_TOKENS + (((224 // 14) ** 2 + 1) if components.image_encoder is not None and not args.tiny
                                 else (17 if components.image_encoder is not None else 0))
        for size_name in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            shown = TINY_SIZES.get(size_name, size_name) if args.tiny else size_name
            width, height, frames = parse_size(shown)
            image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
            image_path = None
            if components.image_encoder is not None:
                image_path = str(work / f"image-{width}x{height}.png")
                image.save(image_path)
            flops = 2 * transformer_flops(cfg, video_tokens(width, height, frames), context)  # CFG: 2 passes
            for impl in [i.strip() for i in args.impls.split(",") if i.strip()]:
                label = {"engine": "wanserve engine (best)", "stock": "diffusers defaults"}.get(impl, impl)
                if over_budget():
                    print(f"{name:<9} {shown:<11} {label:<22} skipped (time budget)", flush=True)
                    continue
                m = Measurement(name, shown, label, steps_timed=args.steps)
                try:
                    if impl == "engine":
                        m.attention = engine.attention_backend
                        m.s_per_step = time_engine(engine, width, height, frames, image_path, args.warmup,
                                                   args.steps, device)
                    elif impl == "stock":
                        m.attention = "diffusers default (native SDPA)"
                        m.s_per_step = time_stock(components, width, height, frames,
                                                  image if image_path else None, args.warmup, args.steps, device)
                    else:
                        raise ValueError(f"unknown impl {impl!r} (engine, stock)")
                    m.tflops = flops / m.s_per_step / 1e12
                except Exception as e:  # noqa: BLE001
                    m.ok, m.error = False, f"{type(e).__name__}: {e}"
                    if devices.is_out_of_memory(e):
                        m.error = "out of memory: " + m.error
                report.add(m)
                free_memory(device)

        if args.e2e_steps and components.image_encoder is not None and not over_budget():
            # The original description's example request, through the engine, mp4 written.
            width, height, frames = parse_size("32x32x5" if args.tiny else "512x512x41")
            m = Measurement(name, f"{width}x{height}x{frames}", "end-to-end")
            try:
                image_path = str(work / "e2e.png")
                Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(image_path)
                for expert in components.experts:
                    expert.set_attention_backend(engine.attention_backend)
                reset_peak_memory(device)
                synchronize(device)
                t0 = time.perf_counter()
                result = engine.generate(GenerationRequest(
                    prompt="a cat walks on the grass in the sun", image=image_path, size=f"{width}*{height}",
                    num_frames=frames, infer_steps=args.e2e_steps, guidance_scale=5.0, seed=0))
                write0 = time.perf_counter()
                media.write_mp4(result.frames, work / "e2e.mp4", result.request.fps)
                m.seconds = time.perf_counter() - t0
                m.stages = {**result.timings, "write": round(time.perf_counter() - write0, 3)}
                m.peak_memory_gib = peak_memory_gib(device)
            except Exception as e:  # noqa: BLE001
                m.ok, m.error = False, f"{type(e).__name__}: {e}"
            report.add(m)
        del engine, components
        free_memory(device)

    failed = [r for r in report.rows if not r.ok]
    print(f"# done in {time.perf_counter() - started:.1f} s, {len(report.rows)} measurements, "
          f"{len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

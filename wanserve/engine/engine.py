"""WanEngine: load a Wan model once, then turn requests into frames.

`generate()` reads top to bottom like a diffusers pipeline's `__call__`: resolve the request,
encode the prompt, encode the image(s), prepare latents, denoise, decode. It uses the diffusers
pipelines' own helpers for each stage and owns the loop, so that progress, cancellation, CFG
parallel and VAE parallel can act at every step.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wanserve import media
from wanserve.engine import devices, quiet_libraries
from wanserve.engine.components import WanComponents, load_components
from wanserve.engine.errors import OUT_OF_MEMORY_HINT, GenerationCancelled, GenerationError
from wanserve.engine.offload import ModelOffload
from wanserve.engine.parallel_plan import SINGLE_PROCESS, ParallelPlan
from wanserve.engine.schedulers import make_scheduler
from wanserve.engine.step_cache import CacheOptions, enable_step_cache, reset_step_cache
from wanserve.engine.tiny_model import ensure_demo_model
from wanserve.request import (
    Adjustment,
    GenerationRequest,
    RequestError,
    ResolvedRequest,
    resolve,
    snap_frames,
)
from wanserve.settings import Settings
from wanserve.variants import Task

log = logging.getLogger("wanserve.engine")

# on_step(step, total, stage) -> True to stop the run. Stages: encode, denoise, decode.
StepCallback = Callable[[int, int, str], bool | None]
MAX_TEXT_TOKENS = 512  # Wan's text context length (the I2V models need all 512)


@dataclass(frozen=True)
class EngineOptions:
    device: str = "auto"
    dtype: str = "auto"
    vae_dtype: str = "fp32"
    attention_backend: str = "auto"
    t5_cpu: bool = False
    vae_tiling: bool = False
    vae_tile_size: int | None = None
    cpu_offload: str = "none"
    step_cache: CacheOptions | None = None
    demo_steps_limit: int = 0
    device_index: int = 0
    compile: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "EngineOptions":
        cache = None
        if settings.use_attention_cache:
            cache = CacheOptions(
                policy=settings.cache_policy,
                threshold=settings.cache_threshold,
                interval=settings.cache_interval,
                warmup_steps=settings.cache_warmup_steps,
                taylor_order=settings.cache_taylor_order,
                pab_skip=settings.cache_pab_skip,
                pab_timestep_range=tuple(settings.cache_pab_timestep_range),  # type: ignore[arg-type]
            )
        values: dict[str, Any] = dict(
            device=settings.device, dtype=settings.dtype, vae_dtype=settings.vae_dtype,
            attention_backend=settings.attention_backend, t5_cpu=settings.t5_cpu,
            vae_tiling=settings.vae_tiling, vae_tile_size=settings.vae_tile_size,
            cpu_offload=settings.cpu_offload, step_cache=cache,
            demo_steps_limit=settings.demo_steps_limit, compile=settings.compile,
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class GenerationResult:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    request: ResolvedRequest
    timings: dict[str, float] = field(default_factory=dict)
    steps: int = 0  # denoising steps run (v2v runs strength x infer_steps)

    @property
    def seconds_per_step(self) -> float:
        return self.timings.get("denoise", 0.0) / max(self.steps, 1)


class _Stopwatch:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 4)


class WanEngine:
    """One loaded Wan model on one device (or one rank of a group, through `plan`)."""

    def __init__(self, components: WanComponents, options: EngineOptions = EngineOptions(),
                 plan: ParallelPlan = SINGLE_PROCESS) -> None:
        self.components = components
        self.variant = components.variant
        self.options = options
        self.plan = plan
        self.device_info = devices.detect(options.device)
        # A rank of a group runs on the device its plan was bound to.
        self.device = plan.device or self.device_info.torch_device(options.device_index)
        self.dtype = devices.resolve_dtype(options.dtype, self.device_info)
        self.text_device = torch.device("cpu") if options.t5_cpu else self.device
        self.load_seconds = 0.0
        self._current_timestep = 0.0
        self.offload: ModelOffload | None = None
        self._place_modules()
        self.attention_backend = self._set_attention_backend()
        self.plan.prepare(self)  # context parallel / FSDP of a multi-rank plan
        if options.compile:
            # Regional compilation: each transformer block once (all blocks share the code), not the
            # whole model, so warm-up stays around a minute; graph breaks allowed for FSDP / CP hooks.
            for expert in components.experts:
                expert.compile_repeated_blocks(fullgraph=False)
        if options.vae_tiling:
            size = options.vae_tile_size
            components.vae.enable_tiling(
                tile_sample_min_height=size, tile_sample_min_width=size,
                tile_sample_stride_height=int(size * 0.75) if size else None,
                tile_sample_stride_width=int(size * 0.75) if size else None,
            )
        if options.step_cache is not None:
            enable_step_cache(components.experts, options.step_cache, self.dtype, lambda: self._current_timestep)
        self._pipelines: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, model_dir: Path | None, options: EngineOptions = EngineOptions(), *,
             data_dir: Path = Path("./wanserve-data"), plan: ParallelPlan = SINGLE_PROCESS) -> "WanEngine":
        """Load `model_dir` (or the built-in demo model when None) onto the chosen device."""
        quiet_libraries()
        start = time.perf_counter()
        folder = Path(model_dir) if model_dir else ensure_demo_model(data_dir)
        info = devices.detect(options.device)
        dtype = devices.resolve_dtype(options.dtype, info)
        vae_dtype = devices.resolve_dtype(options.vae_dtype, info)
        components = load_components(folder, dtype, vae_dtype)
        engine = cls(components, options, plan)
        engine.load_seconds = round(time.perf_counter() - start, 3)
        return engine

    @classmethod
    def from_settings(cls, settings: Settings, plan: ParallelPlan = SINGLE_PROCESS, **overrides: Any) -> "WanEngine":
        return cls.load(settings.model_ckpt_dir, EngineOptions.from_settings(settings, **overrides),
                        data_dir=settings.data_dir, plan=plan)

    def _place_modules(self) -> None:
        c = self.components
        for module in (*c.experts, c.vae, c.text_encoder, c.image_encoder):
            if module is not None:
                module.eval().requires_grad_(False)
        if self.options.cpu_offload != "none":
            # Hooks move each model to the device while it runs; with T5_CPU the text encoder stays put.
            order = [c.text_encoder] if not self.options.t5_cpu else []
            order += [m for m in (c.image_encoder, *c.experts, c.vae) if m is not None]
            self.offload = ModelOffload(self.options.cpu_offload, order, self.device)
            if self.options.t5_cpu:
                c.text_encoder.to(self.text_device)
            return
        experts = [] if self.plan.places("transformer") else list(c.experts)
        for module in (*experts, c.vae, c.image_encoder):
            if module is not None:
                module.to(self.device)
        if not self.plan.places("text_encoder"):
            c.text_encoder.to(self.text_device)

    def _set_attention_backend(self) -> str:
        name = self.options.attention_backend
        if name == "auto":
            name = devices.best_attention_backend(self.device_info)
        for expert in self.components.experts:
            try:
                expert.set_attention_backend(name)
            except (ValueError, RuntimeError, ImportError) as e:
                raise GenerationError("attention_backend", f"ATTENTION_BACKEND={name} cannot be used here: {e}") from e
        return name

    @property
    def model_label(self) -> str:
        """How the model is named to users ('... (demo, random weights)' for tiny models)."""
        return self.components.label

    def _pipeline(self, task: Task) -> Any:
        """The diffusers pipeline whose helpers serve `task` (built once, sharing the modules)."""
        from diffusers import WanImageToVideoPipeline, WanPipeline, WanVideoToVideoPipeline

        kind = {Task.t2v: "t2v", Task.v2v: "v2v"}.get(task, "i2v")
        if kind in self._pipelines:
            return self._pipelines[kind]
        c = self.components
        scheduler = make_scheduler("unipc", self.variant.defaults.sample_shift, c.scheduler_config)
        base = dict(tokenizer=c.tokenizer, text_encoder=c.text_encoder, vae=c.vae, scheduler=scheduler,
                    transformer=c.transformer)
        if kind == "v2v":
            pipe = WanVideoToVideoPipeline(**base)
        elif kind == "t2v":
            pipe = WanPipeline(**base, transformer_2=c.transformer_2, boundary_ratio=self.variant.boundary_ratio,
                               expand_timesteps=self.variant.expand_timesteps)
        else:
            pipe = WanImageToVideoPipeline(
                **base, image_encoder=c.image_encoder, image_processor=c.image_processor,
                transformer_2=c.transformer_2, boundary_ratio=self.variant.boundary_ratio,
                expand_timesteps=self.variant.expand_timesteps,
            )
        pipe.set_progress_bar_config(disable=True)
        self._pipelines[kind] = pipe
        return pipe

    # ----------------------------------------------------------------------------- requests
    def resolve(self, request: GenerationRequest) -> ResolvedRequest:
        """Decide every value of `request` for this model (snapping reported), or RequestError."""
        resolved = resolve(request, self.variant)
        if self.components.random_weights and self.options.demo_steps_limit:
            limit = self.options.demo_steps_limit
            if resolved.infer_steps > limit:
                resolved.adjustments.append(Adjustment(
                    field="infer_steps", requested=resolved.infer_steps, used=limit,
                    reason=f"the demo model runs at most {limit} steps (DEMO_STEPS_LIMIT)",
                ))
                resolved.infer_steps = limit
        self.plan.check_request(resolved, self)
        return resolved

    def generate(self, request: GenerationRequest | ResolvedRequest,
                 on_step: StepCallback | None = None) -> GenerationResult:
        """Run one request to frames. Raises RequestError (bad input), GenerationCancelled
        (on_step asked to stop), GenerationError (the run failed, e.g. out of memory)."""
        resolved = request if isinstance(request, ResolvedRequest) else self.resolve(request)
        watch = _Stopwatch()
        try:
            with torch.inference_mode():
                frames, steps = self._run(resolved, on_step or (lambda *_: None), watch)
        except (GenerationCancelled, RequestError, GenerationError):
            devices.empty_cache(self.device_info)
            raise
        except Exception as e:
            devices.empty_cache(self.device_info)
            if devices.is_out_of_memory(e):
                raise GenerationError("out_of_memory", OUT_OF_MEMORY_HINT) from e
            raise
        finally:
            reset_step_cache(self.components.experts)
            if self.offload is not None:
                self.offload.release()
        return GenerationResult(frames=frames, request=resolved, timings=watch.timings, steps=steps)

    def _check(self, on_step: StepCallback, step: int, total: int, stage: str) -> None:
        stop = bool(on_step(step, total, stage)) if self.plan.is_leader else False
        if self.plan.agree_to_stop(stop):
            raise GenerationCancelled(step, total)

    def _run(self, r: ResolvedRequest, on_step: StepCallback, watch: _Stopwatch) -> tuple[np.ndarray, int]:
        c, device = self.components, self.device
        pipe = self._pipeline(r.task)
        scheduler = make_scheduler(r.sample_solver, r.sample_shift, c.scheduler_config)
        pipe.scheduler = scheduler
        generator = torch.Generator("cpu").manual_seed(r.seed)  # same noise on every device and rank
        reset_step_cache(c.experts)
        self._check(on_step, 0, r.infer_steps, "encode")

        # 1. Inputs: fit images / video frames to exactly the requested size.
        image = last_image = None
        video_frames: list | None = None
        if r.image:
            image = self._load_image("image", r.image, r)
        if r.last_image:
            last_image = self._load_image("last_image", r.last_image, r)
        if r.video:
            video_frames = self._load_video(r)

        # 2. Encode the prompt (on the CPU with T5_CPU; embeddings then move to the device).
        with watch.stage("encode"):
            need_uncond = r.uses_guidance and self.plan.needs_text_on_rank("uncond")
            if self.plan.needs_text_on_rank("cond"):
                prompt_embeds, negative_embeds = pipe.encode_prompt(
                    prompt=r.prompt, negative_prompt=r.negative_prompt, do_classifier_free_guidance=need_uncond,
                    num_videos_per_prompt=1, max_sequence_length=MAX_TEXT_TOKENS, device=self.text_device,
                )
                prompt_embeds = prompt_embeds.to(device, self.dtype)
            else:  # this rank runs only the unconditional pass (CFG parallel)
                prompt_embeds = None
                negative_embeds, _ = pipe.encode_prompt(
                    prompt=r.negative_prompt, do_classifier_free_guidance=False,
                    num_videos_per_prompt=1, max_sequence_length=MAX_TEXT_TOKENS, device=self.text_device,
                )
            if negative_embeds is not None:
                negative_embeds = negative_embeds.to(device, self.dtype)

            # 3. Encode the image(s) with CLIP (Wan2.1 I2V / FLF2V only).
            image_embeds = None
            if self.variant.uses_clip and image is not None:
                pair = image if last_image is None else [image, last_image]
                image_embeds = pipe.encode_image(pair, device).to(self.dtype)

        # 4. Timesteps.
        scheduler.set_timesteps(r.infer_steps, device=device)
        timesteps = scheduler.timesteps
        if r.task is Task.v2v:
            timesteps, _ = pipe.get_timesteps(r.infer_steps, timesteps, r.strength, device)
        else:
            scheduler.set_begin_index(0)
        total = len(timesteps)

        # 5. Latents (and the image condition for i2v / flf2v).
        condition = first_frame_mask = None
        with watch.stage("encode"):
            if r.task is Task.v2v:
                video = pipe.video_processor.preprocess_video(video_frames, height=r.height, width=r.width)
                latents = pipe.prepare_latents(
                    video.to(device, torch.float32), 1, self._in_channels(), r.height, r.width, torch.float32,
                    device, generator, None, timesteps[:1].repeat(1),
                )
            elif r.task in (Task.i2v, Task.flf2v):
                first = pipe.video_processor.preprocess(image, height=r.height, width=r.width).to(device, torch.float32)
                last = None
                if last_image is not None:
                    last = pipe.video_processor.preprocess(last_image, height=r.height, width=r.width)
                    last = last.to(device, torch.float32)
                out = pipe.prepare_latents(first, 1, c.vae.config.z_dim, r.height, r.width, r.num_frames,
                                           torch.float32, device, generator, None, last)
                if self.variant.expand_timesteps:
                    latents, condition, first_frame_mask = out
                else:
                    latents, condition = out
            else:
                latents = pipe.prepare_latents(1, self._in_channels(), r.height, r.width, r.num_frames,
                                               torch.float32, device, generator, None)
                if self.variant.expand_timesteps:
                    first_frame_mask = torch.ones(latents.shape, dtype=torch.float32, device=device)

        # 6. Denoise.
        boundary = None
        if self.variant.boundary_ratio is not None:
            boundary = self.variant.boundary_ratio * scheduler.config.num_train_timesteps
        with watch.stage("denoise"):
            for i, t in enumerate(timesteps):
                self._current_timestep = float(t)
                if boundary is None or t >= boundary or c.transformer_2 is None:
                    model, guidance = c.transformer or c.transformer_2, r.guidance_scale
                else:
                    model, guidance = c.transformer_2, r.guidance_scale_2 or r.guidance_scale
                if condition is not None and first_frame_mask is not None:
                    model_input = (1 - first_frame_mask) * condition + first_frame_mask * latents
                elif condition is not None:
                    model_input = torch.cat([latents, condition], dim=1)
                else:
                    model_input = latents
                model_input = model_input.to(self.dtype)
                if first_frame_mask is not None:
                    timestep = (first_frame_mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0)
                else:
                    timestep = t.expand(latents.shape[0])
                context = dict(step_index=i, sigma=float(scheduler.sigmas[min(i, len(scheduler.sigmas) - 1)]),
                               num_inference_steps=total)

                def predict(branch: str, model=model, model_input=model_input, timestep=timestep,
                            context=context) -> torch.Tensor:
                    embeds = prompt_embeds if branch == "cond" else negative_embeds
                    with model.cache_context(branch, **context):
                        return model(hidden_states=model_input, timestep=timestep, encoder_hidden_states=embeds,
                                     encoder_hidden_states_image=image_embeds, return_dict=False)[0]

                noise = self.plan.guided_noise(predict, guidance, guidance > 1.0)
                latents = scheduler.step(noise, t, latents, return_dict=False)[0]
                self._check(on_step, i + 1, total, "denoise")

        # 7. Decode.
        self._check(on_step, total, total, "decode")
        with watch.stage("decode"):
            if first_frame_mask is not None and condition is not None:
                latents = (1 - first_frame_mask) * condition + first_frame_mask * latents
            vae = c.vae
            latents = latents.to(device=self.device, dtype=vae.dtype)
            mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
            std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
            video = self.plan.decode(vae, latents * std + mean)
            frames = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            frames = frames.permute(1, 2, 3, 0).cpu().numpy()  # [F, H, W, 3]
        return frames, total

    def _in_channels(self) -> int:
        expert = self.components.transformer or self.components.transformer_2
        return int(expert.config.in_channels)  # type: ignore[union-attr]

    def _load_image(self, name: str, path: str, r: ResolvedRequest):
        try:
            return media.fit_image(media.open_image(path), r.width, r.height, r.resize_mode)
        except (media.MediaError, OSError) as e:
            raise RequestError(name, str(e)) from None

    def _load_video(self, r: ResolvedRequest) -> list:
        try:
            frames, _ = media.read_video(r.video, max_frames=r.num_frames)  # type: ignore[arg-type]
        except (media.MediaError, OSError) as e:
            raise RequestError("video", str(e)) from None
        if len(frames) < r.num_frames:
            usable = snap_frames(len(frames))
            usable = usable if usable <= len(frames) else usable - 4
            r.adjustments.append(Adjustment(
                field="num_frames", requested=r.num_frames, used=usable,
                reason=f"the input video has only {len(frames)} frames",
            ))
            r.num_frames = usable
            frames = frames[:usable]
        return [media.fit_image(f, r.width, r.height, r.resize_mode) for f in frames]

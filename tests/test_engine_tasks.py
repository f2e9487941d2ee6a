"""The engine on every tiny variant x task: real pipelines, decoded output, seeds, parity with diffusers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wanserve import media
from wanserve.engine.engine import EngineOptions, WanEngine
from wanserve.engine.errors import GenerationCancelled
from wanserve.request import GenerationRequest, RequestError
from wanserve.variants import VARIANTS, Task

CASES = [(variant, task) for variant, spec in VARIANTS.items() for task in spec.tasks]
_engines: dict[str, WanEngine] = {}


def engine_for(tiny_models, variant: str) -> WanEngine:
    if variant not in _engines:
        _engines[variant] = WanEngine.load(tiny_models[variant], EngineOptions(device="cpu"))
    return _engines[variant]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    first = root / "first.png"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(first)
    last = root / "last.png"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(last)
    clip = root / "clip.mp4"
    media.write_mp4(rng.integers(0, 255, (13, 64, 64, 3), dtype=np.uint8), clip, 16)
    return {"image": str(first), "last_image": str(last), "video": str(clip)}


def request_for(task: Task, inputs: dict[str, str], **overrides) -> GenerationRequest:
    kwargs: dict = dict(task=task, prompt="a red car drives through a forest", size="64*64", num_frames=9,
                        infer_steps=3, seed=7, guidance_scale=5.0)
    if task in (Task.i2v, Task.flf2v):
        kwargs["image"] = inputs["image"]
    if task is Task.flf2v:
        kwargs["last_image"] = inputs["last_image"]
    if task is Task.v2v:
        kwargs["video"] = inputs["video"]
    kwargs.update(overrides)
    return GenerationRequest(**kwargs)


@pytest.mark.parametrize(("variant", "task"), CASES, ids=[f"{v}-{t.value}" for v, t in CASES])
def test_every_variant_and_task_makes_a_video(tiny_models, inputs, tmp_path, variant, task):
    engine = engine_for(tiny_models, variant)
    steps: list[tuple[int, int, str]] = []
    result = engine.generate(request_for(task, inputs), on_step=lambda s, t, st: steps.append((s, t, st)))
    assert result.frames.shape == (9, 64, 64, 3) and result.frames.dtype == np.uint8
    assert result.frames.std() > 5  # not a constant image
    assert {"encode", "denoise", "decode"} <= set(result.timings)
    denoise = [s for s in steps if s[2] == "denoise"]
    assert [s[0] for s in denoise] == list(range(1, result.steps + 1))
    assert steps[0][2] == "encode" and steps[-1][2] == "decode"

    out = tmp_path / "out.mp4"
    media.write_mp4(result.frames, out, result.request.fps)
    from conftest import decode_mp4

    decoded, info = decode_mp4(out)
    assert decoded.shape == (9, 64, 64, 3) and info["pix_fmt"] == "yuv420p"


def test_v2v_strength_runs_part_of_the_schedule(tiny_models, inputs):
    engine = engine_for(tiny_models, "wan2.1-t2v")
    low = engine.generate(request_for(Task.v2v, inputs, infer_steps=10, strength=0.3))
    high = engine.generate(request_for(Task.v2v, inputs, infer_steps=10, strength=0.9))
    assert (low.steps, high.steps) == (3, 9)
    assert not np.array_equal(low.frames, high.frames)


def test_v2v_with_a_short_input_video_uses_what_there_is(tiny_models, inputs):
    engine = engine_for(tiny_models, "wan2.1-t2v")
    result = engine.generate(request_for(Task.v2v, inputs, num_frames=21))  # the clip has 13 frames
    assert result.frames.shape[0] == 13
    assert any(a.field == "num_frames" and a.used == 13 for a in result.request.adjustments)


@pytest.mark.parametrize("variant", ["wan2.1-t2v", "wan2.2-ti2v-5b", "wan2.1-i2v"])
def test_same_seed_same_video_other_seed_other_video(tiny_models, inputs, variant):
    engine = engine_for(tiny_models, variant)
    task = engine.variant.tasks[-1] if variant == "wan2.1-i2v" else Task.t2v
    a = engine.generate(request_for(task, inputs, seed=11)).frames
    b = engine.generate(request_for(task, inputs, seed=11)).frames
    c = engine.generate(request_for(task, inputs, seed=12)).frames
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_fresh_engine_reproduces_the_video(tiny_models, inputs):
    first = engine_for(tiny_models, "wan2.1-t2v").generate(request_for(Task.t2v, inputs, seed=5)).frames
    fresh = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu"))
    assert np.array_equal(first, fresh.generate(request_for(Task.t2v, inputs, seed=5)).frames)


def test_solvers_all_run_and_differ(tiny_models, inputs):
    engine = engine_for(tiny_models, "wan2.1-t2v")
    videos = {s: engine.generate(request_for(Task.t2v, inputs, sample_solver=s)).frames
              for s in ("unipc", "euler", "dpm++")}
    assert not np.array_equal(videos["unipc"], videos["euler"])
    assert not np.array_equal(videos["unipc"], videos["dpm++"])


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
def test_images_of_another_aspect_are_fitted(tiny_models, tmp_path, mode):
    engine = engine_for(tiny_models, "wan2.2-ti2v-5b")
    tall = tmp_path / "tall.png"
    Image.new("RGB", (40, 160), (200, 30, 30)).save(tall)
    result = engine.generate(GenerationRequest(image=str(tall), size="96*64", num_frames=5, infer_steps=2,
                                               seed=1, resize_mode=mode))
    assert result.frames.shape == (5, 64, 96, 3)


def test_step_callback_stops_the_run(tiny_models, inputs):
    engine = engine_for(tiny_models, "wan2.1-t2v")
    with pytest.raises(GenerationCancelled) as stop:
        engine.generate(request_for(Task.t2v, inputs, infer_steps=6),
                        on_step=lambda step, total, stage: stage == "denoise" and step == 2)
    assert (stop.value.step, stop.value.total) == (2, 6)
    # the engine is still usable afterwards
    assert engine.generate(request_for(Task.t2v, inputs)).frames.shape == (9, 64, 64, 3)


def test_unreadable_inputs_are_request_errors(tiny_models, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    engine = engine_for(tiny_models, "wan2.1-i2v")
    with pytest.raises(RequestError) as err:
        engine.generate(GenerationRequest(image=str(bad), size="64*64", num_frames=5, infer_steps=2))
    assert err.value.field == "image"
    with pytest.raises(RequestError) as err:
        engine_for(tiny_models, "wan2.1-t2v").generate(
            GenerationRequest(video=str(bad), size="64*64", num_frames=5, infer_steps=2))
    assert err.value.field == "video"


def test_snapping_is_applied_to_the_output(tiny_models, inputs):
    engine = engine_for(tiny_models, "wan2.1-t2v")
    result = engine.generate(request_for(Task.t2v, inputs, size="70*50", num_frames=7))
    assert result.frames.shape == (9, 48, 64, 3)  # 70x50 -> 64x48, 7 -> 9 frames
    assert {a.field for a in result.request.adjustments} == {"size", "num_frames"}


# ----------------------------------------------------------------------------- parity with diffusers
def _reference(pipe_cls, folder: Path, shift: float, **kwargs) -> np.ndarray:
    from wanserve.engine.schedulers import make_scheduler

    pipe = pipe_cls.from_pretrained(str(folder))
    pipe.scheduler = make_scheduler("unipc", shift, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(generator=torch.Generator("cpu").manual_seed(3), output_type="np", **kwargs).frames[0]
    return np.round(out * 255)


@pytest.mark.parametrize("variant", ["wan2.1-t2v", "wan2.2-t2v-a14b", "wan2.1-i2v", "wan2.2-ti2v-5b"])
def test_engine_matches_the_diffusers_pipeline(tiny_models, tmp_path, variant):
    """Our loop reuses diffusers' stages; for the same inputs it must give diffusers' video."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    engine = engine_for(tiny_models, variant)
    common = dict(prompt="a cat walks", negative_prompt="blur", height=64, width=64, num_frames=9,
                  num_inference_steps=4, guidance_scale=5.0)
    req = dict(prompt="a cat walks", negative_prompt="blur", size="64*64", num_frames=9, infer_steps=4,
               guidance_scale=5.0, sample_shift=3.0, seed=3)
    if variant == "wan2.1-i2v":
        image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        image.save(tmp_path / "i.png")
        ref = _reference(WanImageToVideoPipeline, tiny_models[variant], 3.0, image=image, **common)
        ours = engine.generate(GenerationRequest(image=str(tmp_path / "i.png"), **req)).frames
    else:
        ref = _reference(WanPipeline, tiny_models[variant], 3.0, **common)
        ours = engine.generate(GenerationRequest(task="t2v", **req)).frames
    assert ours.shape == ref.shape
    assert np.abs(ours.astype(np.float64) - ref).max() <= 1.0  # rounding only

"""Memory and speed options: T5_CPU, VAE tiling, CPU offload, step caches, attention backend, OOM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import psnr

from wanserve.engine.engine import EngineOptions, WanEngine
from wanserve.engine.errors import GenerationError
from wanserve.engine.step_cache import CacheOptions
from wanserve.request import GenerationRequest

REQUEST = dict(prompt="fish swim in a coral reef", size="64*64", num_frames=9, infer_steps=8, seed=4,
               guidance_scale=5.0)


@pytest.fixture(scope="module")
def baseline(tiny_models) -> np.ndarray:
    return WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu")).generate(
        GenerationRequest(**REQUEST)).frames


def test_t5_cpu_keeps_the_text_encoder_on_the_cpu(tiny_models, baseline):
    engine = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu", t5_cpu=True))
    assert engine.text_device == torch.device("cpu")
    assert next(engine.components.text_encoder.parameters()).device.type == "cpu"
    assert np.array_equal(engine.generate(GenerationRequest(**REQUEST)).frames, baseline)


def test_vae_tiling_decodes_in_tiles(tiny_models):
    plain = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu"))
    tiled = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu", vae_tiling=True, vae_tile_size=64))
    calls = []
    hook = tiled.components.vae.decoder.register_forward_pre_hook(lambda *_: calls.append(1))
    request = GenerationRequest(**{**REQUEST, "size": "160*128", "num_frames": 5})
    a = plain.generate(request).frames
    b = tiled.generate(request).frames
    hook.remove()
    assert b.shape == (5, 128, 160, 3)
    # 160x128 in 64-pixel tiles with a quarter overlap: several tiles, each decoded frame by frame
    assert len(calls) > 2 * 5
    assert psnr(a, b) > 20  # blended tile seams only


@pytest.mark.parametrize("mode", ["model", "group"])
def test_cpu_offload_installs_hooks_and_keeps_the_video(tiny_models, baseline, mode):
    engine = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu", cpu_offload=mode))
    transformer = engine.components.transformer
    if mode == "model":
        assert hasattr(transformer, "_hf_hook")
    else:
        from diffusers.hooks import HookRegistry

        assert HookRegistry.check_if_exists_or_initialize(transformer).hooks  # group offload hooks present
    assert np.array_equal(engine.generate(GenerationRequest(**REQUEST)).frames, baseline)


def _count_attention_calls(engine: WanEngine) -> list[int]:
    calls: list[int] = []
    for block in engine.components.transformer.blocks:
        block.attn1.to_q.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("policy", ["first_block", "taylorseer", "pab"])
def test_step_caches_skip_work_and_stay_close(tiny_models, baseline, policy):
    options = CacheOptions(policy=policy, threshold=0.5, interval=2, warmup_steps=2, pab_skip=2,
                           pab_timestep_range=(0, 1000))
    plain = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu"))
    cached = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu", step_cache=options))
    plain_calls, cached_calls = _count_attention_calls(plain), _count_attention_calls(cached)
    plain.generate(GenerationRequest(**REQUEST))
    first = cached.generate(GenerationRequest(**REQUEST)).frames
    assert len(cached_calls) < len(plain_calls), f"{policy} skipped nothing"
    assert psnr(first, baseline) > 15  # an approximation, not another video
    # state is reset between requests: the same request gives the same video again
    assert np.array_equal(cached.generate(GenerationRequest(**REQUEST)).frames, first)


def test_step_cache_covers_both_experts(tiny_models):
    engine = WanEngine.load(tiny_models["wan2.2-t2v-a14b"],
                            EngineOptions(device="cpu", step_cache=CacheOptions(policy="first_block")))
    assert all(expert.is_cache_enabled for expert in engine.components.experts)
    assert len(engine.components.experts) == 2
    engine.generate(GenerationRequest(**REQUEST))


def test_step_cache_on_v2v(tiny_models, tmp_path):
    """diffusers' own V2V pipeline sets no cache context, so caches fail there; our loop sets it."""
    from wanserve import media

    clip = tmp_path / "clip.mp4"
    media.write_mp4(np.random.default_rng(0).integers(0, 255, (9, 64, 64, 3), dtype=np.uint8), clip, 16)
    engine = WanEngine.load(tiny_models["wan2.1-t2v"],
                            EngineOptions(device="cpu", step_cache=CacheOptions(policy="taylorseer")))
    out = engine.generate(GenerationRequest(video=str(clip), **{**REQUEST, "infer_steps": 10})).frames
    assert out.shape == (9, 64, 64, 3)


def test_unknown_attention_backend_is_a_clear_error(tiny_models):
    with pytest.raises(GenerationError) as err:
        WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu", attention_backend="nonsense"))
    assert err.value.code == "attention_backend" and "ATTENTION_BACKEND=nonsense" in err.value.message


def test_cpu_uses_the_native_backend(tiny_models):
    engine = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu"))
    assert engine.attention_backend == "native"
    assert engine.dtype == torch.float32


def test_out_of_memory_fails_the_run_with_advice_and_the_engine_keeps_working(tiny_models, monkeypatch):
    engine = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu"))
    original = engine.components.transformer.forward

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine.components.transformer, "forward", oom)
    with pytest.raises(GenerationError) as err:
        engine.generate(GenerationRequest(**REQUEST))
    assert err.value.code == "out_of_memory"
    assert "T5_CPU" in err.value.message and "num_frames" in err.value.message
    monkeypatch.setattr(engine.components.transformer, "forward", original)
    assert engine.generate(GenerationRequest(**REQUEST)).frames.shape == (9, 64, 64, 3)


def test_demo_steps_limit_caps_only_random_weight_models(tiny_models):
    engine = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu", demo_steps_limit=3))
    resolved = engine.resolve(GenerationRequest(**REQUEST))
    assert resolved.infer_steps == 3
    assert any(a.field == "infer_steps" and "demo" in a.reason for a in resolved.adjustments)


def test_compile_keeps_the_video(tiny_models):
    request = GenerationRequest(prompt="x", size="32*32", num_frames=1, infer_steps=1, seed=2)
    plain = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu")).generate(request).frames
    engine = WanEngine.load(tiny_models["wan2.1-t2v"], EngineOptions(device="cpu", compile=True))
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in engine.components.transformer.blocks)
    compiled = engine.generate(request).frames
    assert np.abs(compiled.astype(int) - plain.astype(int)).max() <= 2

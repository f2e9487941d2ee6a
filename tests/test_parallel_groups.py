"""Worker groups of 2 gloo processes on the CPU against 1 process, same request and seed.

Each test starts a real group with `spawn_group`; every rank runs `init_rank`, loads the tiny
model with its plan and generates; rank 0 saves the frames and each rank reports what it ran
(tokens per transformer pass, passes per step, weight bytes it holds, its VAE band). The frames
must match the single-process video (PSNR >= 40 dB) and the reports must show the parallel path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import psnr
from PIL import Image

from wanserve.request import GenerationRequest
from wanserve.settings import load_settings

pytestmark = pytest.mark.slow

STEPS = 3


def request_for(image: str | None = None, **overrides) -> GenerationRequest:
    values: dict = {"prompt": "a red car drives through a forest", "size": "64*64", "num_frames": 9,
                        "infer_steps": STEPS, "seed": 11, "guidance_scale": 5.0, "image": image}
    values.update(overrides)
    return GenerationRequest(**values)


class Probe:
    """Counts transformer passes and the tokens one pass holds inside the blocks on this rank."""

    def __init__(self, engine) -> None:
        self.passes = 0
        self.tokens: set[int] = set()
        for expert in engine.components.experts:
            expert.register_forward_pre_hook(self._count)
            # blocks[1]: after context parallel split the sequence at the entry of blocks[0].
            expert.blocks[1].register_forward_pre_hook(self._tokens, with_kwargs=True)

    def _count(self, module, args) -> None:
        self.passes += 1

    def _tokens(self, module, args, kwargs) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self.tokens.add(int(hidden.shape[1]))


def _rank(rank: int, world_size: int, master_addr: str, master_port: int, settings, request, out_dir: str) -> None:
    """The body of every rank process in these tests."""
    import torch

    from wanserve.engine.distributed import init_rank, leave_process_group, vae_parallel
    from wanserve.engine.engine import WanEngine
    from wanserve.request import RequestError

    plan = init_rank(settings, rank, world_size, master_addr, master_port)
    engine = WanEngine.from_settings(settings, plan=plan)
    probe = Probe(engine)
    resolved = plan.broadcast_object(engine.resolve(request) if plan.is_leader else None)
    result = engine.generate(resolved)
    report = {
        "rank": rank, "branch": getattr(plan, "branch", None), "passes": probe.passes,
        "tokens": sorted(probe.tokens), "stats": plan.stats,
        "text_encoder_device": str(next(engine.components.text_encoder.parameters()).device),
    }
    if settings.vae_parallel:
        # A latent video tall enough that each band is a real part of the frame.
        latents = torch.randn(1, engine.components.vae.config.z_dim, 2, 40, 6,
                              generator=torch.Generator().manual_seed(5))
        with torch.inference_mode():
            split, band = vae_parallel.parallel_decode(engine.components.vae, latents, rank, world_size)
            whole = engine.components.vae.decode(latents, return_dict=False)[0]
        report["tall_band"] = band
        report["tall_max_diff"] = float((split - whole).abs().max())
    if settings.cfg_parallel == 2 and plan.is_leader:
        try:
            engine.resolve(request.model_copy(update={"guidance_scale": 1.0}))
        except RequestError as e:
            report["no_guidance_error"] = [e.field, e.code, e.message]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    if plan.is_leader:
        np.save(Path(out_dir, "frames.npy"), result.frames)
    leave_process_group()


def run_group(tmp_path: Path, model: Path, request: GenerationRequest, **layout) -> tuple[np.ndarray, list[dict]]:
    from wanserve.worker.launch import spawn_group

    settings = load_settings(model_ckpt_dir=model, device="cpu", collective_timeout=120, **layout)
    group = spawn_group(_rank, (settings, request, str(tmp_path)), settings.group_size, settings)
    codes = group.join(timeout=240)
    if group.any_alive():
        group.kill()
    assert codes == [0] * settings.group_size, group.failure
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(settings.group_size)]
    return np.load(tmp_path / "frames.npy"), reports


def single_process(model: Path, request: GenerationRequest):
    from wanserve.engine.engine import EngineOptions, WanEngine

    engine = WanEngine.load(model, EngineOptions(device="cpu"))
    probe = Probe(engine)
    result = engine.generate(request)
    return result.frames, probe, engine


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("inputs") / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_ulysses_with_vae_parallel_and_t5_on_cpu_equals_one_process(tmp_path, tiny_models):
    model, request = tiny_models["wan2.1-t2v"], request_for()
    reference, ref_probe, _ = single_process(model, request)
    frames, reports = run_group(tmp_path, model, request, ulysses_size=2, vae_parallel=True, t5_cpu=True)

    assert psnr(frames, reference) >= 40
    (full_tokens,) = ref_probe.tokens
    for report in reports:
        assert report["tokens"] == [full_tokens // 2]  # each rank holds half of the sequence
        assert report["passes"] == ref_probe.passes == 2 * STEPS  # both CFG passes, on every rank
        assert report["text_encoder_device"] == "cpu"
        band = report["tall_band"]
        assert band["rows"] == 20 and band["rows"] + band["halo_rows"] < 40  # a real part of the frame
        assert report["tall_max_diff"] < 1e-4  # and the assembled decode equals the whole one
    assert reports[0]["stats"]["vae_band"]["rows"] == 4  # the 8 latent rows of the video, split


def test_cfg_parallel_equals_one_process(tmp_path, tiny_models, image):
    model, request = tiny_models["wan2.2-ti2v-5b"], request_for(image=image)
    reference, ref_probe, _ = single_process(model, request)
    frames, reports = run_group(tmp_path, model, request, cfg_parallel=2)

    assert psnr(frames, reference) >= 40
    assert [r["branch"] for r in reports] == ["cond", "uncond"]
    for report in reports:
        assert report["passes"] == STEPS and ref_probe.passes == 2 * STEPS  # one pass per step per rank
        assert report["stats"]["cfg_exchanges"] == STEPS  # one all-gather per step
        assert report["tokens"] == sorted(ref_probe.tokens)  # whole sequence: no context split
    field, code, message = reports[0]["no_guidance_error"]
    assert (field, code) == ("guidance_scale", "guidance_required") and "CFG_PARALLEL=2" in message


def test_ulysses_with_dit_and_t5_fsdp_equals_one_process(tmp_path, tiny_models, image):
    model, request = tiny_models["wan2.1-i2v"], request_for(image=image)
    reference, ref_probe, engine = single_process(model, request)
    frames, reports = run_group(tmp_path, model, request, ulysses_size=2, dit_fsdp=True, t5_fsdp=True)

    assert psnr(frames, reference) >= 40
    dit_bytes = sum(p.numel() * p.element_size() for e in engine.components.experts for p in e.parameters())
    t5_bytes = sum(p.numel() * p.element_size() for p in engine.components.text_encoder.parameters())
    held = [r["stats"]["transformer_bytes_on_rank"] for r in reports]
    assert sum(held) == pytest.approx(dit_bytes, rel=0.02)  # the shards add up to the model...
    assert all(0.45 < h / dit_bytes < 0.55 for h in held)  # ...and each rank holds about half
    assert all(0.45 < r["stats"]["text_encoder_bytes_on_rank"] / t5_bytes < 0.55 for r in reports)
    (full_tokens,) = ref_probe.tokens
    assert all(r["tokens"] == [full_tokens // 2] for r in reports)

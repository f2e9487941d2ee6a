"""Worker-group layouts: every invalid layout is refused up front with the setting named; the band
split of VAE_PARALLEL reproduces the whole decode exactly. One process, no process group."""

from __future__ import annotations

import pytest
import torch

from wanserve.engine.devices import DeviceInfo
from wanserve.engine.distributed import (
    check_request,
    group_device_indices,
    host_device_indices,
    init_rank,
    vae_parallel,
    validate_layout,
)
from wanserve.engine.distributed.layout import GroupLayout, sequence_tokens
from wanserve.engine.parallel_plan import SINGLE_PROCESS
from wanserve.request import GenerationRequest, RequestError, resolve
from wanserve.settings import SettingsError, load_settings
from wanserve.variants import VARIANTS

CPU = DeviceInfo("cpu", 1, ["test"])
GPUS = DeviceInfo("cuda", 4, ["GPU"] * 4)


def settings_for(tiny_models, **values):
    return load_settings(model_ckpt_dir=tiny_models["wan2.1-t2v"], device="cpu", **values)


@pytest.mark.parametrize(
    ("values", "world", "setting", "words"),
    [
        # The tiny transformer has 2 heads: 4 Ulysses ranks cannot share them.
        ({"ulysses_size": 4}, 4, "ULYSSES_SIZE", "2 attention heads"),
        ({"ulysses_size": 2, "devices": "3"}, 2, "DEVICES", "cannot be split into groups of 2"),
        ({"ring_size": 2}, 2, "RING_SIZE", "log-sum-exp"),
        ({"ring_size": 2, "attention_backend": "_native_npu"}, 2, "RING_SIZE", "_native_npu"),
        ({"ulysses_size": 2}, 4, "WORLD_SIZE", "= 2"),
        ({"ulysses_size": 2, "t5_fsdp": True, "t5_cpu": True}, 2, "T5_FSDP", "T5_CPU"),
        ({"ulysses_size": 2, "vae_parallel": True, "vae_tiling": True}, 2, "VAE_PARALLEL", "VAE_TILING"),
        ({"cfg_parallel": 2, "cpu_offload": "model"}, 2, "CPU_OFFLOAD", "DIT_FSDP"),
        ({"ulysses_size": 2, "use_attention_cache": True}, 2, "USE_ATTENTION_CACHE", "per rank"),
    ],
    ids=["heads", "devices", "ring-native", "ring-npu", "world-size", "t5", "vae", "offload", "cache"],
)
def test_invalid_layouts_name_the_setting(tiny_models, values, world, setting, words):
    settings = settings_for(tiny_models, **values)
    with pytest.raises(SettingsError) as error:
        init_rank(settings, 0, world, "127.0.0.1", 1)  # refused before any rendezvous
    assert error.value.args[0].startswith(setting) and words in str(error.value)
    assert not torch.distributed.is_initialized()


def test_ring_is_accepted_with_a_backend_that_returns_the_lse(tiny_models):
    settings = settings_for(tiny_models, ring_size=2, attention_backend="_native_cudnn")
    layout = validate_layout(settings, 2, GPUS)
    assert (layout.ring, layout.context_parallel, layout.size) == (2, 2, 2)


def test_a_group_of_one_is_the_single_process_plan(tiny_models):
    assert init_rank(settings_for(tiny_models), 0, 1, "127.0.0.1", 1) is SINGLE_PROCESS
    assert not torch.distributed.is_initialized()


def test_devices_are_cut_into_consecutive_groups(tiny_models):
    settings = settings_for(tiny_models, ulysses_size=2, devices="0,1,2,3")
    assert [group_device_indices(settings, GPUS, g) for g in (0, 1)] == [[0, 1], [2, 3]]
    with pytest.raises(SettingsError, match="DEVICES: group 2"):
        group_device_indices(settings, GPUS, 2)
    with pytest.raises(SettingsError, match="DEVICES: device 7 does not exist"):
        host_device_indices(settings_for(tiny_models, devices="3,7"), GPUS)
    assert len(host_device_indices(settings_for(tiny_models, devices="4"), CPU)) == 4  # a process count
    assert len(host_device_indices(settings_for(tiny_models, cfg_parallel=2), CPU)) == 2  # auto: one group


def test_requests_a_layout_cannot_run_are_refused_naming_the_field():
    variant = VARIANTS["wan2.1-t2v"]
    cfg = GroupLayout(cfg=2)
    no_guidance = resolve(GenerationRequest(prompt="x", guidance_scale=1.0, size="64*64", num_frames=9), variant)
    with pytest.raises(RequestError) as error:
        check_request(cfg, no_guidance, tokens=48)
    assert error.value.field == "guidance_scale" and error.value.code == "guidance_required"
    assert "CFG_PARALLEL=2" in error.value.message
    check_request(GroupLayout(ulysses=2), no_guidance, tokens=48)  # guidance off is fine without CFG parallel

    guided = resolve(GenerationRequest(prompt="x", size="48*32", num_frames=5), variant)
    tokens = sequence_tokens(guided, spatial_scale=8, temporal_scale=4, patch_size=(1, 2, 2))
    assert tokens == 2 * 2 * 3  # 2 latent frames x (32/16) x (48/16)
    check_request(GroupLayout(ulysses=2), guided, tokens=tokens)
    with pytest.raises(RequestError) as error:
        check_request(GroupLayout(ulysses=8), guided, tokens=tokens)
    assert error.value.field == "size" and "12 tokens" in error.value.message


def test_vae_bands_with_the_computed_halo_equal_the_whole_decode(tiny_models):
    """Each band, decoded on its own with the halo, equals the same rows of a whole decode; with a
    smaller halo it does not (so the halo is needed and large enough)."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(str(tiny_models["wan2.1-t2v"] / "vae")).eval()
    latents = torch.randn(1, vae.config.z_dim, 2, 40, 6, generator=torch.Generator().manual_seed(0))
    halo = vae_parallel.receptive_halo(vae.decoder)

    def banded(halo: int) -> torch.Tensor:
        bands = []
        for lo, hi in vae_parallel.band_bounds(40, 2):
            start, stop = max(0, lo - halo), min(40, hi + halo)
            cache: list = [None] * vae._cached_conv_counts["decoder"]
            x = vae.post_quant_conv(latents)
            out = torch.cat([vae_parallel._decode_band(vae.decoder, x[:, :, i:i + 1], start, stop, 3, cache, i == 0)
                             for i in range(2)], 2)
            bands.append(out.narrow(3, (lo - start) * 8, (hi - lo) * 8).clamp(-1, 1))
        return torch.cat(bands, 3)

    with torch.inference_mode():
        whole = vae.decode(latents, return_dict=False)[0]
        assert halo < 20  # each band really is a part of the frame
        assert (banded(halo) - whole).abs().max() < 1e-4
        assert (banded(halo - 2) - whole).abs().max() > 1e-3
    assert vae_parallel.band_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]

"""The official Wan VAE files -> diffusers `AutoencoderKLWan`.

Wan2.1_VAE.pth (16 latent channels, also used by Wan2.2 A14B) goes through diffusers' single-file
converter `convert_wan_vae_to_diffusers`. diffusers has no converter for Wan2.2_VAE.pth (the
48-channel VAE of TI2V-5B), so its key map is written out here, from the module structure of Wan's
`wan/modules/vae2_2.py`:

    encoder.conv1                                   -> encoder.conv_in
    encoder.downsamples.I.downsamples.J.residual.*  -> encoder.down_blocks.I.resnets.J.*   (J < num_res_blocks)
    encoder.downsamples.I.downsamples.J.shortcut    -> encoder.down_blocks.I.resnets.J.conv_shortcut
    encoder.downsamples.I.downsamples.R.resample.1  -> encoder.down_blocks.I.downsampler.resample.1  (R = num_res_blocks)
    encoder.downsamples.I.downsamples.R.time_conv   -> encoder.down_blocks.I.downsampler.time_conv
    decoder.upsamples.I.upsamples.J.*               -> decoder.up_blocks.I.resnets.J.* / .upsampler.* (R = num_res_blocks + 1)
    {encoder,decoder}.middle.0 / .1 / .2            -> mid_block.resnets.0 / attentions.0 / resnets.1
    {encoder,decoder}.head.0 / .2                   -> norm_out / conv_out
    conv1 / conv2                                   -> quant_conv / post_quant_conv
    residual.0 / .2 / .3 / .6 (RMS norm, conv, RMS norm, conv) -> norm1 / conv1 / norm2 / conv2

The official VAE files carry no config: their architecture is fixed by the official code (channel
multipliers 1, 2, 4, 4; two residual blocks per level; temporal downsampling in levels 2 and 3;
no attention but the middle block) and the latent mean / std constants live there too (copied
below). Widths and the latent size are read from the tensor shapes.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from wanserve.engine.checkpoints.tensors import (
    CheckpointKeyError,
    StateDict,
    assign_state_dict,
    empty_weights,
    need,
    open_pth,
    rename_with,
)

DIM_MULT = [1, 2, 4, 4]
NUM_RES_BLOCKS = 2
TEMPORAL_DOWNSAMPLE = [False, True, True]

# Official per-channel latent statistics (wan/modules/vae.py WanVAE, wan/modules/vae2_2.py Wan2_2_VAE).
WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]

_RESIDUAL = {"0": "norm1", "2": "conv1", "3": "norm2", "6": "conv2"}
_P = r"(weight|bias|gamma)"


def _residual(prefix: str, match: re.Match) -> str:
    return f"{prefix}.{_RESIDUAL[match['layer']]}.{match['p']}"


def vae22_key(key: str, num_res_blocks: int = NUM_RES_BLOCKS) -> str | None:
    """The diffusers name of one Wan2.2 VAE key, or None when the key is not part of that VAE."""
    if m := re.fullmatch(rf"(?P<side>encoder|decoder)\.conv1\.(?P<p>{_P})", key):
        return f"{m['side']}.conv_in.{m['p']}"
    if m := re.fullmatch(rf"conv(?P<n>[12])\.(?P<p>{_P})", key):
        return f"{'quant_conv' if m['n'] == '1' else 'post_quant_conv'}.{m['p']}"
    if m := re.fullmatch(rf"(?P<side>encoder|decoder)\.middle\.(?P<i>[02])\.residual\.(?P<layer>[0236])\.(?P<p>{_P})", key):
        return _residual(f"{m['side']}.mid_block.resnets.{int(m['i']) // 2}", m)
    if m := re.fullmatch(r"(?P<side>encoder|decoder)\.middle\.1\.(?P<rest>norm\.gamma|to_qkv\.(weight|bias)|proj\.(weight|bias))", key):
        return f"{m['side']}.mid_block.attentions.0.{m['rest']}"
    if m := re.fullmatch(rf"(?P<side>encoder|decoder)\.head\.(?P<i>[02])\.(?P<p>{_P})", key):
        return f"{m['side']}.{'norm_out' if m['i'] == '0' else 'conv_out'}.{m['p']}"
    for side, outer, inner, sampler, resample_at in (
        ("encoder", "downsamples", "down_blocks", "downsampler", num_res_blocks),
        ("decoder", "upsamples", "up_blocks", "upsampler", num_res_blocks + 1),
    ):
        block = rf"{side}\.{outer}\.(?P<i>\d+)\.{outer}\.(?P<j>\d+)"
        if m := re.fullmatch(rf"{block}\.residual\.(?P<layer>[0236])\.(?P<p>{_P})", key):
            return _residual(f"{side}.{inner}.{m['i']}.resnets.{m['j']}", m) if int(m["j"]) < resample_at else None
        if m := re.fullmatch(rf"{block}\.shortcut\.(?P<p>{_P})", key):
            return f"{side}.{inner}.{m['i']}.resnets.{m['j']}.conv_shortcut.{m['p']}" if int(m["j"]) < resample_at else None
        if m := re.fullmatch(rf"{block}\.(?P<what>resample\.1|time_conv)\.(?P<p>{_P})", key):
            return f"{side}.{inner}.{m['i']}.{sampler}.{m['what']}.{m['p']}" if int(m["j"]) == resample_at else None
    return None


def convert_vae22_state(state: StateDict, file: Path) -> StateDict:
    converted: StateDict = {}
    unknown = []
    for key, tensor in state.items():
        new = vae22_key(key)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = tensor
    if unknown:
        unknown.sort()
        raise CheckpointKeyError(
            f"{file}: keys that the Wan2.2 VAE does not have: {', '.join(unknown[:6])}"
            + (f" (and {len(unknown) - 6} more)" if len(unknown) > 6 else "")
        )
    return converted


def _convert_vae21(state: StateDict) -> StateDict:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return convert_wan_vae_to_diffusers(state)


def vae_config(state: StateDict, version: str, file: Path) -> dict:
    """The diffusers AutoencoderKLWan config of an official VAE file."""
    conv_in = need(state, "encoder.conv1.weight", file)
    z_dim = int(need(state, "conv2.weight", file).shape[0])
    common = dict(
        _class_name="AutoencoderKLWan", base_dim=int(conv_in.shape[0]), z_dim=z_dim, dim_mult=DIM_MULT,
        num_res_blocks=NUM_RES_BLOCKS, attn_scales=[], temperal_downsample=TEMPORAL_DOWNSAMPLE, dropout=0.0,
    )
    if version == "2.1":
        if z_dim != len(WAN21_LATENTS_MEAN):
            raise CheckpointKeyError(f"{file}: conv2.weight says {z_dim} latent channels; the Wan2.1 VAE has 16")
        return dict(common, latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD,
                    in_channels=int(conv_in.shape[1]), out_channels=int(conv_in.shape[1]))
    if z_dim != len(WAN22_LATENTS_MEAN):
        raise CheckpointKeyError(f"{file}: conv2.weight says {z_dim} latent channels; the Wan2.2 VAE has 48")
    return dict(
        common, decoder_base_dim=int(need(state, "decoder.head.2.weight", file).shape[1]),
        latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD, is_residual=True,
        in_channels=int(conv_in.shape[1]), out_channels=int(need(state, "decoder.head.2.weight", file).shape[0]),
        patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
    )


def load_vae(file: Path, version: str, dtype: torch.dtype | None):
    """An official VAE file as an AutoencoderKLWan (memory-mapped, assigned in place)."""
    from diffusers import AutoencoderKLWan

    state = open_pth(file)
    config = vae_config(state, version, file)
    if version == "2.1":
        converted, origin = rename_with(_convert_vae21, state)
    else:
        converted, origin = convert_vae22_state(state, file), {}
    with empty_weights():
        model = AutoencoderKLWan.from_config(config)
    assign_state_dict(model, converted, f"VAE ({file.name})", dtype, origin=origin)
    return model.eval().requires_grad_(False)

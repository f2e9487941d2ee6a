"""VAE_PARALLEL: split the Wan VAE decode across the ranks of a group, exactly.

Each rank decodes a band of the video (rows, or columns when the video is wider than tall). The
decoder's only global operation is the per-frame self-attention of its middle block, at latent
resolution: every rank runs `conv_in` and the middle block on the whole latent frame (cheap),
then the upsampling path, where each output pixel depends only on a few neighbouring latent
rows, on its band plus a halo of that many rows. Cropping the halo leaves each band equal to the
same rows of a whole decode; one all-gather assembles the video on every rank.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

# The last frames a causal conv keeps for the next chunk (diffusers' CACHE_T).
CACHE_T = 2


def _spatial_radius(conv: torch.nn.Module) -> int:
    kernel = conv.kernel_size  # type: ignore[attr-defined]
    return int(kernel[-1]) // 2


def receptive_halo(decoder: torch.nn.Module) -> int:
    """Latent rows beyond a band that can change its pixels: the spatial reach of the
    upsampling path, each 3x3 conv reaching one row at its own resolution."""
    reach, scale = 0.0, 1
    for block in decoder.up_blocks:  # type: ignore[attr-defined]
        for resnet in block.resnets:
            reach += (_spatial_radius(resnet.conv1) + _spatial_radius(resnet.conv2)) / scale
        upsampler = getattr(block, "upsampler", None)
        if upsampler is None and getattr(block, "upsamplers", None) is not None:
            upsampler = block.upsamplers[0]
        if upsampler is not None and str(upsampler.mode).startswith("upsample"):
            scale *= 2
            reach += _spatial_radius(upsampler.resample[1]) / scale
    reach += _spatial_radius(decoder.conv_out) / scale  # type: ignore[attr-defined]
    return math.ceil(reach)


def _cached_conv(conv, x: torch.Tensor, feat_cache: list, feat_idx: list[int]) -> torch.Tensor:
    """A causal conv step with the decoder's frame cache (as WanDecoder3d.forward does it)."""
    idx = feat_idx[0]
    cache_x = x[:, :, -CACHE_T:, :, :].clone()
    if cache_x.shape[2] < 2 and feat_cache[idx] is not None:
        cache_x = torch.cat([feat_cache[idx][:, :, -1, :, :].unsqueeze(2).to(cache_x.device), cache_x], dim=2)
    x = conv(x, feat_cache[idx])
    feat_cache[idx] = cache_x
    feat_idx[0] += 1
    return x


def _decode_band(decoder, x: torch.Tensor, lo: int, hi: int, dim: int, feat_cache: list,
                 first_chunk: bool) -> torch.Tensor:
    """WanDecoder3d.forward for one latent frame, with the upsampling path on rows [lo, hi) of `dim`."""
    feat_idx = [0]
    x = _cached_conv(decoder.conv_in, x, feat_cache, feat_idx)
    x = decoder.mid_block(x, feat_cache=feat_cache, feat_idx=feat_idx)
    x = x.narrow(dim, lo, hi - lo)
    for up_block in decoder.up_blocks:
        x = up_block(x, feat_cache=feat_cache, feat_idx=feat_idx, first_chunk=first_chunk)
    x = decoder.nonlinearity(decoder.norm_out(x))
    return _cached_conv(decoder.conv_out, x, feat_cache, feat_idx)


def band_bounds(length: int, parts: int) -> list[tuple[int, int]]:
    """`length` rows cut into `parts` consecutive bands, sizes differing by at most one."""
    base, extra = divmod(length, parts)
    bounds, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


def parallel_decode(vae: torch.nn.Module, latents: torch.Tensor, rank: int, world_size: int,
                    group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, dict[str, int]]:
    """Latents [B, C, T, h, w] -> video [B, 3, F, H, W] in [-1, 1] on every rank, each rank
    decoding one band. Returns the video and what this rank did (band, halo, split dim)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    dim = 3 if latents.shape[3] >= latents.shape[4] else 4  # split the longer side
    length = latents.shape[dim]
    halo = receptive_halo(vae.decoder)
    bounds = band_bounds(length, world_size)
    lo, hi = bounds[rank]
    start, stop = max(0, lo - halo), min(length, hi + halo)

    pieces = []
    if hi > lo:
        feat_cache: list = [None] * vae._cached_conv_counts["decoder"]
        x = vae.post_quant_conv(latents)
        for i in range(x.shape[2]):
            pieces.append(_decode_band(vae.decoder, x[:, :, i:i + 1], start, stop, dim, feat_cache, i == 0))
        band = torch.cat(pieces, 2)
        patch = vae.config.patch_size
        if patch is not None:
            band = unpatchify(band, patch_size=patch)
        pixels_per_row = band.shape[dim] // (stop - start)
        band = band.narrow(dim, (lo - start) * pixels_per_row, (hi - lo) * pixels_per_row)
        band = torch.clamp(band, min=-1.0, max=1.0)
    else:
        band = None

    video = _gather_bands(band, bounds, dim, latents, vae, rank, world_size, group)
    return video, {"split_dim": dim, "rows": hi - lo, "halo_rows": (lo - start) + (stop - hi), "halo": halo}


def _gather_bands(band: torch.Tensor | None, bounds: list[tuple[int, int]], dim: int, latents: torch.Tensor,
                  vae: torch.nn.Module, rank: int, world_size: int, group) -> torch.Tensor:
    """All-gather bands of unequal sizes: pad each to the largest, gather, cut, concatenate."""
    scale = int(vae.config.scale_factor_spatial)
    frames = (latents.shape[2] - 1) * int(vae.config.scale_factor_temporal) + 1
    full = [latents.shape[0], 3, frames, latents.shape[3] * scale, latents.shape[4] * scale]
    widest = max(hi - lo for lo, hi in bounds) * scale
    shape = list(full)
    shape[dim] = widest
    padded = torch.zeros(shape, dtype=latents.dtype, device=latents.device)
    if band is not None:
        padded.narrow(dim, 0, band.shape[dim]).copy_(band)
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded, group=group)
    parts = [g.narrow(dim, 0, (hi - lo) * scale) for g, (lo, hi) in zip(gathered, bounds) if hi > lo]
    return torch.cat(parts, dim)

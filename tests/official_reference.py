"""Independent reference implementations of the official Wan modules, for parity tests.

Written from the architecture of the official Wan code (`wan/modules/t5.py`, `clip.py`, `model.py`,
`vae.py`, `vae2_2.py`): the module attributes carry the official names (so `state_dict()` gives
official checkpoint keys) and each `forward` restates the official computation in plain torch. They
share nothing with diffusers or transformers, so comparing their outputs with the converted
diffusers / transformers models checks key placement and numerics without going in a circle.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ============================================================================ umt5-xxl encoder


class T5Norm(nn.Module):
    """RMS norm without mean subtraction or bias (T5)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps))


class T5RelativeBias(nn.Module):
    """Bidirectional relative-position buckets: half the buckets per direction, the first half of
    those exact, the rest logarithmic up to max_dist."""

    def __init__(self, num_buckets: int, num_heads: int, max_dist: int = 128) -> None:
        super().__init__()
        self.num_buckets, self.max_dist = num_buckets, max_dist
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def buckets(self, rel: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2
        out = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(self.max_dist / exact) * (half - exact)).long()
        large = torch.clamp(large, max=half - 1)
        return out + torch.where(rel < exact, rel, large)

    def forward(self, length: int) -> torch.Tensor:
        pos = torch.arange(length)
        rel = pos[None, :] - pos[:, None]  # key position - query position
        return self.embedding(self.buckets(rel)).permute(2, 0, 1).unsqueeze(0)  # [1, heads, Lq, Lk]


class T5Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x, mask, bias):
        b, n = x.shape[0], self.num_heads
        q, k, v = (f(x).view(b, -1, n, f.out_features // n) for f in (self.q, self.k, self.v))
        logits = torch.einsum("binc,bjnc->bnij", q, k) + bias  # T5: no 1/sqrt(d) scaling
        logits = logits.masked_fill(mask.view(b, 1, 1, -1) == 0, torch.finfo(logits.dtype).min)
        out = torch.einsum("bnij,bjnc->binc", logits.float().softmax(-1).type_as(v), v)
        return self.o(out.reshape(b, -1, self.o.in_features))


class T5FeedForward(nn.Module):
    """Gated GELU (tanh approximation): fc2(fc1(x) * gelu(gate(x)))."""

    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x):
        return self.fc2(self.fc1(x) * self.gate(x))


class T5Block(nn.Module):
    def __init__(self, dim, dim_attn, dim_ffn, num_heads, num_buckets) -> None:
        super().__init__()
        self.norm1 = T5Norm(dim)
        self.attn = T5Attention(dim, dim_attn, num_heads)
        self.norm2 = T5Norm(dim)
        self.ffn = T5FeedForward(dim, dim_ffn)
        self.pos_embedding = T5RelativeBias(num_buckets, num_heads)  # umt5: one per block

    def forward(self, x, mask):
        x = x + self.attn(self.norm1(x), mask, self.pos_embedding(x.shape[1]))
        return x + self.ffn(self.norm2(x))


class T5Encoder(nn.Module):
    def __init__(self, vocab, dim, dim_attn, dim_ffn, num_heads, num_layers, num_buckets) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            [T5Block(dim, dim_attn, dim_ffn, num_heads, num_buckets) for _ in range(num_layers)]
        )
        self.norm = T5Norm(dim)

    def forward(self, ids, mask):
        x = self.token_embedding(ids)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


# ============================================================================ open-clip ViT-H/14 (image tower)


class ClipAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, s, c = x.shape
        q, k, v = self.to_qkv(x).view(b, s, 3, self.num_heads, c // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, s, c))


class ClipBlock(nn.Module):
    """Pre-norm transformer block with a GELU (erf) MLP."""

    def __init__(self, dim: int, mlp_ratio: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = ClipAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTower(nn.Module):
    def __init__(self, image_size, patch_size, dim, mlp_ratio, num_heads, num_layers, out_dim) -> None:
        super().__init__()
        patches = (image_size // patch_size) ** 2
        self.patch_embedding = nn.Conv2d(3, dim, patch_size, stride=patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, patches + 1, dim))
        self.pre_norm = nn.LayerNorm(dim, eps=1e-5)
        self.transformer = nn.Sequential(*[ClipBlock(dim, mlp_ratio, num_heads) for _ in range(num_layers)])
        self.post_norm = nn.LayerNorm(dim, eps=1e-5)
        self.head = nn.Parameter(torch.randn(dim, out_dim))

    def forward(self, pixels) -> list[torch.Tensor]:
        """Tokens after the pre-norm and after every block; Wan uses [-2] (all blocks but the last)."""
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        states = [self.pre_norm(x)]
        for block in self.transformer:
            states.append(block(states[-1]))
        return states

    def pooled(self, pixels) -> torch.Tensor:
        return self.post_norm(self.forward(pixels)[-1][:, 0])


class TextTowerStub(nn.Module):
    """A few modules named like the XLM-RoBERTa text tower, only so the file carries its keys."""

    def __init__(self, vocab: int = 16, dim: int = 8, out_dim: int = 32) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.pos_embedding = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList([nn.ModuleDict({"norm1": nn.LayerNorm(dim), "norm2": nn.LayerNorm(dim)})])
        self.head = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.GELU(), nn.Linear(dim, out_dim, bias=False))


class XLMRobertaCLIP(nn.Module):
    def __init__(self, image_size, patch_size, dim, mlp_ratio, num_heads, num_layers, out_dim) -> None:
        super().__init__()
        self.visual = VisionTower(image_size, patch_size, dim, mlp_ratio, num_heads, num_layers, out_dim)
        self.textual = TextTowerStub(out_dim=out_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def official_clip_pixels(image, size: int) -> torch.Tensor:
    """Official CLIP input: to_tensor, [-1, 1], bicubic to size x size, back to [0, 1], normalise."""
    import numpy as np

    x = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    x = x.sub(0.5).div(0.5)[None]
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).mul(0.5).add(0.5)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    return (x - mean) / std


# ============================================================================ Wan diffusion transformer


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    half = dim // 2
    position = position.double()
    angles = torch.outer(position, torch.pow(10000, -torch.arange(half, dtype=torch.float64) / half))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_table(max_len: int, dim: int) -> torch.Tensor:
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float64),
                        1.0 / torch.pow(10000, torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return torch.polar(torch.ones_like(freqs), freqs)


def apply_rope(x: torch.Tensor, grid: tuple[int, int, int], table: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, d]: rotate consecutive channel pairs by frame / row / column angles."""
    f, h, w = grid
    c = x.shape[-1] // 2
    tf, th, tw = table.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    angles = torch.cat([
        tf[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
        th[:h].view(1, h, 1, -1).expand(f, h, w, -1),
        tw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, 1, -1)
    rotated = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2)) * angles
    return torch.view_as_real(rotated).flatten(3).to(x.dtype)


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def attention(q, k, v):
    """[B, L, heads, d] inputs, softmax(q k^T / sqrt(d)) v, [B, L, heads * d] out."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).flatten(2)


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)

    def heads(self, x):
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1)

    def forward(self, x, grid, table):
        q = apply_rope(self.heads(self.norm_q(self.q(x))), grid, table)
        k = apply_rope(self.heads(self.norm_k(self.k(x))), grid, table)
        return self.o(attention(q, k, self.heads(self.v(x))))


class WanCrossAttention(WanSelfAttention):
    """Text cross-attention; with `image`, a second attention over the CLIP tokens (Wan2.1 I2V / FLF2V)
    whose result is added before the output projection."""

    def __init__(self, dim: int, num_heads: int, eps: float, image: bool) -> None:
        super().__init__(dim, num_heads, eps)
        if image:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = WanRMSNorm(dim, eps)

    def forward(self, x, context, image_tokens: int = 0):
        q = self.heads(self.norm_q(self.q(x)))
        image, text = context[:, :image_tokens], context[:, image_tokens:]
        out = attention(q, self.heads(self.norm_k(self.k(text))), self.heads(self.v(text)))
        if image_tokens:
            out = out + attention(q, self.heads(self.norm_k_img(self.k_img(image))), self.heads(self.v_img(image)))
        return self.o(out)


class WanBlock(nn.Module):
    def __init__(self, dim, ffn_dim, num_heads, eps, image: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, num_heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps, elementwise_affine=True)  # before cross-attention
        self.cross_attn = WanCrossAttention(dim, num_heads, eps, image)
        self.norm2 = nn.LayerNorm(dim, eps, elementwise_affine=False)  # before the FFN
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim))

    def forward(self, x, e, grid, table, context, image_tokens):
        # e [B, L, 6, dim]: shift / scale / gate for attention, then for the FFN
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.unsqueeze(0) + e).unbind(2)
        x = x + self.self_attn(self.norm1(x) * (1 + scale1) + shift1, grid, table) * gate1
        x = x + self.cross_attn(self.norm3(x), context, image_tokens)
        return x + self.ffn(self.norm2(x) * (1 + scale2) + shift2) * gate2


class WanHead(nn.Module):
    def __init__(self, dim, out_dim, patch, eps) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim * math.prod(patch))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim))

    def forward(self, x, e):
        shift, scale = (self.modulation.unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return self.head(self.norm(x) * (1 + scale) + shift)


class MLPProj(nn.Module):
    """CLIP tokens -> model width; FLF2V adds learned positions over both frames' tokens."""

    def __init__(self, clip_dim: int, dim: int, flf_tokens: int | None) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(clip_dim), nn.Linear(clip_dim, clip_dim), nn.GELU(),
                                  nn.Linear(clip_dim, dim), nn.LayerNorm(dim))
        if flf_tokens:
            self.emb_pos = nn.Parameter(torch.randn(1, flf_tokens, clip_dim))

    def forward(self, tokens):
        if hasattr(self, "emb_pos"):
            tokens = tokens.reshape(-1, 2 * tokens.shape[1], tokens.shape[2]) + self.emb_pos
        return self.proj(tokens)


class WanModel(nn.Module):
    def __init__(self, *, model_type, in_dim, dim, ffn_dim, freq_dim, text_dim, out_dim, num_heads, num_layers,
                 eps=1e-6, patch_size=(1, 2, 2), clip_dim=None, flf_tokens=None) -> None:
        super().__init__()
        self.model_type, self.dim, self.freq_dim, self.out_dim = model_type, dim, freq_dim, out_dim
        self.patch_size = patch_size
        image = clip_dim is not None
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([WanBlock(dim, ffn_dim, num_heads, eps, image) for _ in range(num_layers)])
        self.head = WanHead(dim, out_dim, patch_size, eps)
        if image:
            self.img_emb = MLPProj(clip_dim, dim, flf_tokens)
        d = dim // num_heads
        self.table = torch.cat([rope_table(1024, d - 4 * (d // 6)), rope_table(1024, 2 * (d // 6)),
                                rope_table(1024, 2 * (d // 6))], dim=1)

    def forward(self, x, t, context, clip_tokens=None):
        """x [B, C, F, H, W] (noise, with the image condition already concatenated for I2V);
        t [B] or per-token [B, L] (Wan2.2 TI2V); context [B, text_len, text_dim], zero-padded."""
        x = self.patch_embedding(x)
        b, grid = x.shape[0], tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        length = x.shape[1]
        t = t.view(b, 1).expand(b, length) if t.dim() == 1 else t
        e = self.time_embedding(sinusoidal_embedding(self.freq_dim, t.flatten()).view(b, length, -1).float())
        e0 = self.time_projection(e).unflatten(2, (6, self.dim))
        context = self.text_embedding(context)
        image_tokens = 0
        if clip_tokens is not None:
            image = self.img_emb(clip_tokens)
            image_tokens = image.shape[1]
            context = torch.cat([image, context], dim=1)
        for block in self.blocks:
            x = block(x, e0, grid, self.table, context, image_tokens)
        x = self.head(x, e)
        f, h, w = grid
        pt, ph, pw = self.patch_size
        x = x.view(b, f, h, w, pt, ph, pw, self.out_dim)
        return torch.einsum("bfhwpqrc->bcfphqwr", x).reshape(b, self.out_dim, f * pt, h * ph, w * pw)


# ============================================================================ Wan VAEs (2.1: 16 channels, 2.2: 48 channels)
# The official VAEs run a video in temporal chunks (1 frame, then 4 at a time when encoding; 1 latent
# frame at a time when decoding) with per-layer caches of the previous frames. Written out over the
# whole sequence, that is: every causal conv pads two zero frames in front; a temporal downsample keeps
# frame 0 and convolves frames (0,1,2), (2,3,4), ...; a temporal upsample keeps frame 0 and turns every
# later frame into two through a causal conv over frames 1.. (frame 0 never enters its context).


class CausalConv3d(nn.Conv3d):
    def forward(self, x):
        pt, ph, pw = self.padding
        x = F.pad(x, (pw, pw, ph, ph, 2 * pt, 0))
        return F.conv3d(x, self.weight, self.bias, self.stride)


class RMSNormC(nn.Module):
    """Channel-first RMS norm: normalise over channels, times sqrt(C) and a learned gain."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x):
        return F.normalize(x, dim=1) * self.scale * self.gamma


def per_frame(fn, x):
    b, t = x.shape[0], x.shape[2]
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.view(b, t, *y.shape[1:]).transpose(1, 2)


class Resample(nn.Module):
    def __init__(self, dim: int, mode: str, halve: bool) -> None:
        super().__init__()
        self.mode = mode
        out = dim // 2 if halve else dim  # Wan2.1's upsamplers halve the channels, Wan2.2's do not
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          nn.Conv2d(dim, out, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x):
        if self.mode == "upsample3d" and x.shape[2] > 1:
            b, c, t, h, w = x.shape
            later = self.time_conv(x[:, :, 1:]).view(b, 2, c, t - 1, h, w)
            later = torch.stack((later[:, 0], later[:, 1]), dim=3).reshape(b, c, 2 * (t - 1), h, w)
            x = torch.cat([x[:, :, :1], later], dim=2)
        x = per_frame(self.resample, x)
        if self.mode == "downsample3d" and x.shape[2] > 1:
            x = torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
        return x


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNormC(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNormC(out_dim, images=False), nn.SiLU(), nn.Dropout(0.0), CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNormC(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        def frame(y):
            n, c, h, w = y.shape
            q, k, v = self.to_qkv(self.norm(y)).reshape(n, 1, c * 3, h * w).permute(0, 1, 3, 2).chunk(3, dim=-1)
            out = F.scaled_dot_product_attention(q, k, v).squeeze(1).permute(0, 2, 1).reshape(n, c, h, w)
            return self.proj(out)

        return x + per_frame(frame, x)


def middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(RMSNormC(dim, images=False), nn.SiLU(), CausalConv3d(dim, out, 3, padding=1))


class Vae21Encoder(nn.Module):
    def __init__(self, dim, z2, mult=(1, 2, 4, 4), blocks=2, temporal=(False, True, True)) -> None:
        super().__init__()
        dims = [dim * u for u in (1, *mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(blocks):
                layers.append(ResidualBlock(a, b))
                a = b
            if i != len(mult) - 1:
                layers.append(Resample(b, "downsample3d" if temporal[i] else "downsample2d", halve=False))
        self.downsamples = nn.Sequential(*layers)
        self.middle = middle(dims[-1])
        self.head = head(dims[-1], z2)

    def forward(self, x):
        return self.head(self.middle(self.downsamples(self.conv1(x))))


class Vae21Decoder(nn.Module):
    def __init__(self, dim, z, mult=(1, 2, 4, 4), blocks=2, temporal=(True, True, False)) -> None:
        super().__init__()
        dims = [dim * u for u in (mult[-1], *mult[::-1])]
        self.conv1 = CausalConv3d(z, dims[0], 3, padding=1)
        self.middle = middle(dims[0])
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                a = a // 2  # the previous upsampler halved the channels
            for _ in range(blocks + 1):
                layers.append(ResidualBlock(a, b))
                a = b
            if i != len(mult) - 1:
                layers.append(Resample(b, "upsample3d" if temporal[i] else "upsample2d", halve=True))
        self.upsamples = nn.Sequential(*layers)
        self.head = head(dims[-1], 3)

    def forward(self, z):
        return self.head(self.upsamples(self.middle(self.conv1(z))))


class Wan21VAE(nn.Module):
    def __init__(self, dim: int = 96, z_dim: int = 16) -> None:
        super().__init__()
        self.encoder = Vae21Encoder(dim, z_dim * 2)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Vae21Decoder(dim, z_dim)

    def encode_moments(self, video):
        """video [B, 3, 1 + 4k, H, W] in [-1, 1] -> latent (mean, log variance), before the latent statistics."""
        return self.conv1(self.encoder(video)).chunk(2, dim=1)

    def decode(self, z):
        return self.decoder(self.conv2(z)).clamp(-1, 1)


def patchify(x, p: int = 2):
    b, c, f, h, w = x.shape
    x = x.view(b, c, f, h // p, p, w // p, p)  # (h q) (w r)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, f, h // p, w // p)  # (c r q)


def unpatchify(x, p: int = 2):
    b, crq, f, h, w = x.shape
    x = x.view(b, crq // (p * p), p, p, f, h, w)  # c r q
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, crq // (p * p), f, h * p, w * p)


class AvgDown3D(nn.Module):
    """Shortcut of a Wan2.2 down block: average groups of (time x 2 x 2)-unshuffled channels."""

    def __init__(self, in_dim: int, out_dim: int, ft: int, fs: int) -> None:
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, ft, fs
        self.group = in_dim * ft * fs * fs // out_dim

    def forward(self, x):
        x = F.pad(x, (0, 0, 0, 0, (self.ft - x.shape[2] % self.ft) % self.ft, 0))
        b, c, t, h, w = x.shape
        ft, fs = self.ft, self.fs
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_dim, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Shortcut of a Wan2.2 up block: repeat channels, shuffle them into (time x 2 x 2) positions."""

    def __init__(self, in_dim: int, out_dim: int, ft: int, fs: int) -> None:
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, ft, fs
        self.repeats = out_dim * ft * fs * fs // in_dim

    def forward(self, x):
        b, _, t, h, w = x.shape
        ft, fs = self.ft, self.fs
        x = x.repeat_interleave(self.repeats, dim=1).view(b, self.out_dim, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1:]  # the first latent frame yields one frame


class DownBlock(nn.Module):
    def __init__(self, a, b, blocks, temporal, down) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(a, b, 2 if temporal else 1, 2 if down else 1)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ResidualBlock(a, b))
            a = b
        if down:
            layers.append(Resample(b, "downsample3d" if temporal else "downsample2d", halve=False))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x):
        return self.downsamples(x) + self.avg_shortcut(x)


class UpBlock(nn.Module):
    def __init__(self, a, b, blocks, temporal, up) -> None:
        super().__init__()
        self.avg_shortcut = DupUp3D(a, b, 2 if temporal else 1, 2) if up else None
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ResidualBlock(a, b))
            a = b
        if up:
            layers.append(Resample(b, "upsample3d" if temporal else "upsample2d", halve=False))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x):
        out = self.upsamples(x)
        return out if self.avg_shortcut is None else out + self.avg_shortcut(x)


class Wan22VAE(nn.Module):
    def __init__(self, dim: int = 160, dec_dim: int = 256, z_dim: int = 48, mult=(1, 2, 4, 4), blocks: int = 2,
                 temporal=(False, True, True)) -> None:
        super().__init__()
        enc = [dim * u for u in (1, *mult)]
        dec = [dec_dim * u for u in (mult[-1], *mult[::-1])]
        up_temporal = tuple(temporal[::-1])
        self.encoder = nn.Module()
        self.encoder.conv1 = CausalConv3d(12, enc[0], 3, padding=1)
        self.encoder.downsamples = nn.Sequential(*[
            DownBlock(a, b, blocks, temporal[i] if i < len(temporal) else False, i != len(mult) - 1)
            for i, (a, b) in enumerate(zip(enc[:-1], enc[1:]))
        ])
        self.encoder.middle = middle(enc[-1])
        self.encoder.head = head(enc[-1], z_dim * 2)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = nn.Module()
        self.decoder.conv1 = CausalConv3d(z_dim, dec[0], 3, padding=1)
        self.decoder.middle = middle(dec[0])
        self.decoder.upsamples = nn.Sequential(*[
            UpBlock(a, b, blocks + 1, up_temporal[i] if i < len(up_temporal) else False, i != len(mult) - 1)
            for i, (a, b) in enumerate(zip(dec[:-1], dec[1:]))
        ])
        self.decoder.head = head(dec[-1], 12)

    def encode_moments(self, video):
        e = self.encoder
        x = e.head(e.middle(e.downsamples(e.conv1(patchify(video)))))
        return self.conv1(x).chunk(2, dim=1)

    def decode(self, z):
        d = self.decoder
        x = d.head(d.upsamples(d.middle(d.conv1(self.conv2(z)))))
        return unpatchify(x).clamp(-1, 1)

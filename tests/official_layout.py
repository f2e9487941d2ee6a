"""Tiny checkpoint folders in the official Wan layout, file names and key names, with random weights.

The weights come from the reference modules in `official_reference.py` (official module names), so
the keys are what the official code would save; the sizes are toy sizes. Each folder also carries
`wanserve_demo.json` so that everything built from it is labelled as random weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from official_reference import T5Encoder, Wan21VAE, Wan22VAE, WanModel, XLMRobertaCLIP
from safetensors.torch import save_file

from wanserve.engine.checkpoints import detect
from wanserve.engine.tiny_model import _train_tokenizer
from wanserve.variants import DEMO_MARKER, VARIANTS

DIT = dict(dim=24, ffn_dim=32, freq_dim=256, num_heads=2, num_layers=2, eps=1e-6)
T5 = dict(dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, num_buckets=32)
CLIP = dict(image_size=28, patch_size=14, dim=160, mlp_ratio=4, num_heads=2, num_layers=2, out_dim=32)
CLIP_TOKENS = (CLIP["image_size"] // CLIP["patch_size"]) ** 2 + 1
VAE21 = dict(dim=4, z_dim=16)
VAE22 = dict(dim=4, dec_dim=6, z_dim=48)

# variant -> (model_type, in_dim, out_dim) of its official config.json
MODEL_TYPES = {
    "wan2.1-t2v": ("t2v", 16, 16),
    "wan2.1-i2v": ("i2v", 36, 16),
    "wan2.1-flf2v": ("flf2v", 36, 16),
    "wan2.2-t2v-a14b": ("t2v", 16, 16),
    "wan2.2-i2v-a14b": ("i2v", 36, 16),
    "wan2.2-ti2v-5b": ("ti2v", 48, 48),
}


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight random and non-trivial (norm gains near 1, biases nonzero), so that a tensor put in
    the wrong place changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name or name.endswith("gamma") or (p.dim() == 1 and name.endswith("weight")):
                p.copy_(1 + 0.2 * noise)
            elif p.dim() <= 1:
                p.copy_(0.1 * noise)
            elif name.endswith(("token_embedding.weight", "pos_embedding.embedding.weight", "pos_embedding.weight")):
                p.copy_(noise)  # lookup tables
            elif name.endswith(("cls_embedding", "pos_embedding", "emb_pos", "modulation")):
                p.copy_(0.3 * noise)  # added to activations
            else:
                p.copy_(noise / math.sqrt(max(p[0].numel(), 1)))
    return module


def official_config(variant: str) -> dict:
    model_type, in_dim, out_dim = MODEL_TYPES[variant]
    return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": model_type, "text_len": 512,
            "in_dim": in_dim, "out_dim": out_dim, **DIT}


def reference_dit(variant: str, seed: int) -> WanModel:
    config = official_config(variant)
    uses_clip = VARIANTS[variant].uses_clip
    model = WanModel(
        model_type=config["model_type"], in_dim=config["in_dim"], out_dim=config["out_dim"], dim=DIT["dim"],
        ffn_dim=DIT["ffn_dim"], freq_dim=DIT["freq_dim"], text_dim=T5["dim"], num_heads=DIT["num_heads"],
        num_layers=DIT["num_layers"], eps=DIT["eps"], clip_dim=CLIP["dim"] if uses_clip else None,
        flf_tokens=2 * CLIP_TOKENS if variant == "wan2.1-flf2v" else None,
    )
    return randomize(model, seed)


def reference_t5(vocab: int, seed: int) -> T5Encoder:
    return randomize(T5Encoder(vocab, **T5), seed)


def reference_clip(seed: int) -> XLMRobertaCLIP:
    return randomize(XLMRobertaCLIP(**CLIP), seed)


def reference_vae(version: str, seed: int):
    return randomize(Wan22VAE(**VAE22) if version == "2.2" else Wan21VAE(**VAE21), seed)


def _write_dit(folder: Path, variant: str, seed: int, shards: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / detect.CONFIG_FILE).write_text(json.dumps(official_config(variant), indent=2))
    state = {k: v.contiguous() for k, v in reference_dit(variant, seed).state_dict().items()}
    if shards == 1:
        save_file(state, str(folder / detect.WEIGHTS_FILE))
        return
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: state[k] for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    (folder / detect.WEIGHTS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))


def make_official_folder(folder: Path, variant: str, seed: int = 0, shards: int = 1) -> Path:
    """Write a tiny official-layout folder of `variant` (official file names and keys)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=False)
    spec = VARIANTS[variant]
    vocab = _train_tokenizer(folder / detect.TOKENIZER_DIR)
    if spec.two_experts:
        _write_dit(folder / detect.HIGH_NOISE_DIR, variant, seed, shards)
        _write_dit(folder / detect.LOW_NOISE_DIR, variant, seed + 100, shards)
    else:
        _write_dit(folder, variant, seed, shards)
    t5 = reference_t5(vocab, seed + 1)
    torch.save({k: v.to(torch.bfloat16) for k, v in t5.state_dict().items()}, folder / detect.T5_FILE)
    version = "2.2" if variant == "wan2.2-ti2v-5b" else "2.1"
    vae_file = detect.VAE22_FILE if version == "2.2" else detect.VAE21_FILE
    torch.save(reference_vae(version, seed + 2).state_dict(), folder / vae_file)
    if spec.uses_clip:
        torch.save(reference_clip(seed + 3).state_dict(), folder / detect.CLIP_FILE)
    marker = {"variant": variant, "seed": seed, "random_weights": True, "demo": False, "layout": "official"}
    (folder / DEMO_MARKER).write_text(json.dumps(marker, indent=2))
    return folder


def load_reference(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Fill a reference module from a file of the folder (so it holds exactly what is on disk), fp32."""
    if path.suffix == ".safetensors" or path.is_dir():
        from safetensors.torch import load_file

        files = sorted(path.glob("diffusion_pytorch_model*.safetensors")) if path.is_dir() else [path]
        state = {}
        for f in files:
            state.update(load_file(str(f)))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return module.float().eval()

"""An official Wan diffusion transformer (config.json + safetensors) -> diffusers `WanTransformer3DModel`.

Keys are renamed by diffusers' own single-file converter (`convert_wan_transformer_to_diffusers`),
plus the one key it leaves out: FLF2V's `img_emb.emb_pos` (learned positions of the two frames' CLIP
tokens). The diffusers config always comes from the folder's own config.json and the weight shapes:
nothing is fetched from the hub. Official WanModel config.json holds model_type, dim, ffn_dim,
freq_dim, num_heads, num_layers, in_dim, out_dim, eps, text_len; the arguments it omits (patch
size, text width, CLIP width, cross-attention norm, q/k norm) are read from the tensors.
"""

from __future__ import annotations

import torch

from wanserve.engine.checkpoints.detect import DiTFiles
from wanserve.engine.checkpoints.tensors import (
    CheckpointKeyError,
    StateDict,
    assign_state_dict,
    count_blocks,
    empty_weights,
    need,
    open_safetensors,
    rename_with,
)
from wanserve.variants import VariantSpec

ROPE_MAX_SEQ_LEN = 1024  # WanModel's rope table length (fixed in the official code)
EXTRA_KEYS = {"img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed"}  # not in diffusers' converter


def _convert(state: StateDict) -> StateDict:
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    extra = {EXTRA_KEYS[k]: state.pop(k) for k in list(state) if k in EXTRA_KEYS}
    converted = convert_wan_transformer_to_diffusers(state)
    converted.update(extra)
    return converted


def transformer_config(files: DiTFiles, state: StateDict, variant: VariantSpec) -> dict:
    """The diffusers WanTransformer3DModel config of an official transformer."""
    config, where = files.config, files.folder / "config.json"
    first = files.shards[0]
    dim, heads, layers = config["dim"], config["num_heads"], config["num_layers"]
    if dim % heads or (dim // heads) % 2:
        raise CheckpointKeyError(f"{where}: dim={dim} does not split into {heads} heads of an even width")
    patch = need(state, "patch_embedding.weight", first)
    if tuple(patch.shape[:2]) != (dim, config["in_dim"]):
        raise CheckpointKeyError(
            f"{first}: patch_embedding.weight is {tuple(patch.shape)}, but {where} says dim={dim}, in_dim={config['in_dim']}"
        )
    found_layers = count_blocks(state, "blocks.")
    if found_layers != layers:
        raise CheckpointKeyError(f"{files.folder}: the weights hold {found_layers} blocks, {where} says num_layers={layers}")
    image_norm = state.get("img_emb.proj.0.weight")
    if variant.uses_clip and image_norm is None:
        raise CheckpointKeyError(
            f"{files.folder}: {variant.name} conditions on CLIP features, but the weights have no img_emb.* (CLIP projection)"
        )
    if not variant.uses_clip and image_norm is not None:
        raise CheckpointKeyError(
            f"{files.folder}: the weights have img_emb.* (a CLIP projection), which {variant.name} does not use"
        )
    emb_pos = state.get("img_emb.emb_pos")
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(patch.shape[2:]),
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": config["in_dim"],
        "out_channels": config["out_dim"],
        "text_dim": int(need(state, "text_embedding.0.weight", first).shape[1]),
        "freq_dim": int(need(state, "time_embedding.0.weight", first).shape[1]),
        "ffn_dim": config["ffn_dim"],
        "num_layers": layers,
        "cross_attn_norm": "blocks.0.norm3.weight" in state,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in state else None,
        "eps": float(config.get("eps", 1e-6)),
        "image_dim": int(image_norm.shape[0]) if image_norm is not None else None,
        "added_kv_proj_dim": dim if "blocks.0.cross_attn.k_img.weight" in state else None,
        "rope_max_seq_len": ROPE_MAX_SEQ_LEN,
        "pos_embed_seq_len": int(emb_pos.shape[1]) if emb_pos is not None else None,
    }


def load_transformer(files: DiTFiles, variant: VariantSpec, dtype: torch.dtype | None):
    """One official transformer as a WanTransformer3DModel (memory-mapped, assigned in place)."""
    from diffusers import WanTransformer3DModel

    state = open_safetensors(files.shards)
    # Some exports keep the training wrapper's prefix; diffusers' converter strips it too.
    state = {k.removeprefix("model.diffusion_model."): v for k, v in state.items()}
    config = transformer_config(files, state, variant)
    converted, origin = rename_with(_convert, state)
    with empty_weights():
        model = WanTransformer3DModel.from_config(config)
    what = f"transformer ({files.folder.name}/{files.shards[0].name}{' ...' if len(files.shards) > 1 else ''})"
    assign_state_dict(model, converted, what, dtype, origin=origin)
    return model.eval().requires_grad_(False)

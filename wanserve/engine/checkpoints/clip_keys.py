"""The CLIP image tower of an official Wan folder -> transformers `CLIPVisionModel`.

The official file holds the whole open-clip XLM-RoBERTa-large ViT-H/14 model in the names of Wan's
`wan/modules/clip.py`: `visual.*` (the image tower), `textual.*` (the XLM-RoBERTa text tower) and
`log_scale` (the contrastive temperature). Wan conditions on image features only: it runs the image
tower up to (not including) its last block and takes those tokens, which is what diffusers' Wan I2V
pipeline takes from `CLIPVisionModel` as `hidden_states[-2]`.

Image tower names: `patch_embedding` (conv, no bias: pre-norm ViT), `cls_embedding` [1, 1, D],
`pos_embedding` [1, 1 + patches, D], `pre_norm`, then per block `transformer.N.norm1`,
`attn.to_qkv` (fused q|k|v rows), `attn.proj`, `norm2`, `mlp.0` / `mlp.2` (GELU between),
then `post_norm` and `head` (the projection into the joint image-text space).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from wanserve.engine.checkpoints.tensors import (
    CheckpointKeyError,
    StateDict,
    assign_state_dict,
    count_blocks,
    empty_weights,
    need,
    open_pth,
)

# Keys of the official file that Wan never uses, skipped on purpose (everything else must be used):
SKIPPED_PREFIXES = ("textual.",)  # the XLM-RoBERTa text tower of the contrastive model
SKIPPED_KEYS = (
    "log_scale",  # contrastive logit temperature
    "visual.head",  # projection of the pooled class token into the joint space; Wan takes block tokens
)
# Fixed by Wan's clip_xlm_roberta_vit_h_14() and not visible in shapes: ViT-H/14 has heads of width 80
# (1280 = 16 x 80), GELU (erf) MLPs and LayerNorm eps 1e-5.
HEAD_DIM = 80
LAYER_NORM_EPS = 1e-5
OPEN_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPEN_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Rule:
    """One official key -> one or more model keys (a fused tensor is split into equal row blocks)."""

    source: str
    targets: tuple[str, ...]
    reshape: tuple[int, ...] | None = None

    def apply(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if len(self.targets) > 1:
            return dict(zip(self.targets, tensor.chunk(len(self.targets), dim=0)))  # views, no copy
        return {self.targets[0]: tensor.reshape(self.reshape) if self.reshape else tensor}


def clip_rules(num_layers: int, hidden: int) -> list[Rule]:
    """Every official image-tower key and where it goes in CLIPVisionModel."""
    emb = "embeddings"  # transformers 5 CLIPVisionModel: no "vision_model." level
    rules = [
        Rule("visual.patch_embedding.weight", (f"{emb}.patch_embedding.weight",)),
        Rule("visual.cls_embedding", (f"{emb}.class_embedding",), reshape=(hidden,)),
        Rule("visual.pos_embedding", (f"{emb}.position_embedding.weight",), reshape=(-1, hidden)),
    ]
    for p in ("weight", "bias"):
        rules += [
            Rule(f"visual.pre_norm.{p}", (f"pre_layrnorm.{p}",)),
            Rule(f"visual.post_norm.{p}", (f"post_layernorm.{p}",)),
        ]
        for i in range(num_layers):
            src, dst = f"visual.transformer.{i}", f"encoder.layers.{i}"
            rules += [
                Rule(f"{src}.norm1.{p}", (f"{dst}.layer_norm1.{p}",)),
                Rule(f"{src}.attn.to_qkv.{p}",
                     (f"{dst}.self_attn.q_proj.{p}", f"{dst}.self_attn.k_proj.{p}", f"{dst}.self_attn.v_proj.{p}")),
                Rule(f"{src}.attn.proj.{p}", (f"{dst}.self_attn.out_proj.{p}",)),
                Rule(f"{src}.norm2.{p}", (f"{dst}.layer_norm2.{p}",)),
                Rule(f"{src}.mlp.0.{p}", (f"{dst}.mlp.fc1.{p}",)),
                Rule(f"{src}.mlp.2.{p}", (f"{dst}.mlp.fc2.{p}",)),
            ]
    return rules


def is_skipped(key: str) -> bool:
    return key.startswith(SKIPPED_PREFIXES) or key in SKIPPED_KEYS


def clip_config(state: StateDict, file: Path):
    """The CLIPVisionConfig of the image tower in `state`, read from its tensor shapes."""
    from transformers import CLIPVisionConfig

    patch = need(state, "visual.patch_embedding.weight", file)
    hidden, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    positions = need(state, "visual.pos_embedding", file).shape[-2]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointKeyError(f"{file}: visual.pos_embedding has {positions} positions, not 1 + a square grid")
    num_layers = count_blocks(state, "visual.transformer.")
    if num_layers == 0:
        raise CheckpointKeyError(f"{file} has no 'visual.transformer.0.*' keys: it is not Wan's CLIP checkpoint")
    if hidden % HEAD_DIM:
        raise CheckpointKeyError(f"{file}: image tower width {hidden} is not a multiple of the ViT-H head width {HEAD_DIM}")
    head = state.get("visual.head")
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=need(state, "visual.transformer.0.mlp.0.weight", file).shape[0],
        num_hidden_layers=num_layers, num_attention_heads=hidden // HEAD_DIM, num_channels=channels,
        image_size=grid * patch_size, patch_size=patch_size, hidden_act="gelu", layer_norm_eps=LAYER_NORM_EPS,
        projection_dim=int(head.shape[-1]) if head is not None else hidden,
    )


def convert_clip_state(state: StateDict, num_layers: int, hidden: int, file: Path) -> StateDict:
    """Rename the image tower; skip the documented unused parts; any other key is an error naming it."""
    rules = {r.source: r for r in clip_rules(num_layers, hidden)}
    unused = sorted(k for k in state if k not in rules and not is_skipped(k))
    if unused:
        raise CheckpointKeyError(
            f"{file}: keys that Wan's CLIP image tower does not have: {', '.join(unused[:6])}"
            + (f" (and {len(unused) - 6} more)" if len(unused) > 6 else "")
        )
    converted: StateDict = {}
    for key, tensor in state.items():
        if key in rules:
            converted.update(rules[key].apply(tensor))
    return converted


def load_clip(file: Path, dtype: torch.dtype | None):
    """(CLIPVisionModel, WanClipImageProcessor) of the official CLIP file (memory-mapped)."""
    from transformers import CLIPVisionModel

    from wanserve.engine.checkpoints.clip_preprocess import WanClipImageProcessor

    state = open_pth(file)
    config = clip_config(state, file)
    converted = convert_clip_state(state, config.num_hidden_layers, config.hidden_size, file)
    with empty_weights():
        model = CLIPVisionModel(config)
    assign_state_dict(model, converted, f"CLIP image encoder ({file.name})", dtype)
    processor = WanClipImageProcessor(size=config.image_size, image_mean=OPEN_CLIP_MEAN, image_std=OPEN_CLIP_STD)
    return model.eval().requires_grad_(False), processor

"""The umt5-xxl encoder of an official Wan folder -> transformers `UMT5EncoderModel`.

Official names follow Wan's own T5 encoder module (`wan/modules/t5.py`): `token_embedding`, then per
block `norm1` (pre-attention RMS norm), `attn.{q,k,v,o}`, `pos_embedding.embedding` (umt5 gives every
block its own relative-position bias), `norm2`, `ffn.gate.0` (GELU-gated branch), `ffn.fc1` (linear
branch), `ffn.fc2` (down projection), and the final `norm`. transformers' gated-GELU T5 FFN computes
`wo(act(wi_0 x) * wi_1 x)`, so gate.0 -> wi_0, fc1 -> wi_1, fc2 -> wo.
"""

from __future__ import annotations

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

# Fixed by Wan's umt5_xxl(): not recoverable from tensor shapes.
MAX_DISTANCE = 128  # relative-position buckets grow logarithmically up to this distance
LAYER_NORM_EPS = 1e-6
TIED = {"encoder.embed_tokens.weight": "shared.weight"}  # transformers ties the two; checkpoints hold one


def t5_key_map(num_layers: int) -> dict[str, str]:
    """Official key -> UMT5EncoderModel key, for every weight of an encoder of `num_layers` blocks."""
    keys = {
        "token_embedding.weight": "shared.weight",
        "norm.weight": "encoder.final_layer_norm.weight",
    }
    for i in range(num_layers):
        attn = f"encoder.block.{i}.layer.0"
        ffn = f"encoder.block.{i}.layer.1"
        keys.update({
            f"blocks.{i}.norm1.weight": f"{attn}.layer_norm.weight",
            f"blocks.{i}.attn.q.weight": f"{attn}.SelfAttention.q.weight",
            f"blocks.{i}.attn.k.weight": f"{attn}.SelfAttention.k.weight",
            f"blocks.{i}.attn.v.weight": f"{attn}.SelfAttention.v.weight",
            f"blocks.{i}.attn.o.weight": f"{attn}.SelfAttention.o.weight",
            f"blocks.{i}.pos_embedding.embedding.weight": f"{attn}.SelfAttention.relative_attention_bias.weight",
            f"blocks.{i}.norm2.weight": f"{ffn}.layer_norm.weight",
            f"blocks.{i}.ffn.gate.0.weight": f"{ffn}.DenseReluDense.wi_0.weight",
            f"blocks.{i}.ffn.fc1.weight": f"{ffn}.DenseReluDense.wi_1.weight",
            f"blocks.{i}.ffn.fc2.weight": f"{ffn}.DenseReluDense.wo.weight",
        })
    return keys


def t5_config(state: StateDict, file: Path):
    """The UMT5Config of the official encoder in `state`, read from its tensor shapes."""
    from transformers import UMT5Config

    num_layers = count_blocks(state, "blocks.")
    if num_layers == 0:
        raise CheckpointKeyError(f"{file} has no 'blocks.0.*' keys: it is not Wan's umt5-xxl encoder")
    vocab, d_model = need(state, "token_embedding.weight", file).shape
    buckets, heads = need(state, "blocks.0.pos_embedding.embedding.weight", file).shape
    inner = need(state, "blocks.0.attn.q.weight", file).shape[0]
    d_ff = need(state, "blocks.0.ffn.fc1.weight", file).shape[0]
    if inner % heads:
        raise CheckpointKeyError(f"{file}: attention width {inner} is not a multiple of {heads} heads")
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff, num_layers=num_layers,
        num_decoder_layers=num_layers, num_heads=heads, relative_attention_num_buckets=buckets,
        relative_attention_max_distance=MAX_DISTANCE, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=LAYER_NORM_EPS, dropout_rate=0.1, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, tie_word_embeddings=False,
    )


def convert_t5_state(state: StateDict, num_layers: int, file: Path) -> StateDict:
    """Rename every official key; an official key outside the map is an error naming it."""
    mapping = t5_key_map(num_layers)
    unused = sorted(set(state) - set(mapping))
    if unused:
        raise CheckpointKeyError(
            f"{file}: keys that Wan's umt5-xxl encoder does not have: {', '.join(unused[:6])}"
            + (f" (and {len(unused) - 6} more)" if len(unused) > 6 else "")
        )
    return {mapping[k]: v for k, v in state.items()}


def load_t5(file: Path, dtype: torch.dtype | None) -> torch.nn.Module:
    """The official umt5-xxl encoder file as a UMT5EncoderModel (memory-mapped, assigned in place)."""
    from transformers import UMT5EncoderModel

    state = open_pth(file)
    config = t5_config(state, file)
    converted = convert_t5_state(state, config.num_layers, file)
    with empty_weights():
        model = UMT5EncoderModel(config)
    assign_state_dict(model, converted, f"T5 encoder ({file.name})", dtype, aliases=TIED)
    return model.eval().requires_grad_(False)

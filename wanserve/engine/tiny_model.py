"""Tiny random-weight Wan models, built offline in seconds, in diffusers layout.

They have the real architectures (same classes, same configs keys, same folder layout) at toy
sizes, so the code that loads and runs them is the code that loads and runs real weights. Their
output is noise. The tokenizer is trained locally with `tokenizers`; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from wanserve.variants import DEMO_MARKER, DEMO_VARIANT, VARIANTS, ModelFolderError, VariantSpec

TEXT_DIM = 32
HEADS = 2
HEAD_DIM = 12
CLIP_HIDDEN = 16
CLIP_IMAGE_SIZE = 32
CLIP_PATCH = 8  # (32 / 8)^2 + 1 = 17 image tokens per frame

_CORPUS = """
a cat walks on the grass in the sun . a dog runs along the beach at sunset .
the camera pans slowly across a city street at night with neon lights and rain .
a woman in a red dress dances in a field of flowers , wind in her hair .
an astronaut rides a horse on the moon , cinematic , high detail , 4k .
waves crash against the rocks , slow motion , golden hour , drone shot .
a bowl of fruit on a wooden table , soft light , still life , close up .
two people talk in a cafe , shallow depth of field , warm colours .
a red car drives through a forest road in autumn , leaves falling .
snow falls over a quiet mountain village , smoke rises from chimneys .
a robot paints a picture in a bright studio , playful , animation style .
fish swim in a coral reef , clear blue water , sunbeams , underwater .
fireworks over the river , crowd cheering , night sky , celebration .
""" * 4


def _train_tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<pad>", "</s>", "<unk>"]
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>")
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    wrapped.save_pretrained(str(folder))
    return len(wrapped)


def _text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config)


def _vae(variant: VariantSpec):
    from diffusers import AutoencoderKLWan

    common = dict(base_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    if variant.name == "wan2.2-ti2v-5b":
        return AutoencoderKLWan(
            z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
            latents_mean=[0.0] * 48, latents_std=[1.0] * 48, scale_factor_spatial=16, scale_factor_temporal=4,
            **common,
        )
    return AutoencoderKLWan(z_dim=16, **common)


def _transformer(variant: VariantSpec):
    from diffusers import WanTransformer3DModel

    in_channels, out_channels, image_dim, pos_embed, added_kv = 16, 16, None, None, None
    if variant.name == "wan2.2-ti2v-5b":
        in_channels = out_channels = 48
    elif variant.name == "wan2.2-i2v-a14b":
        in_channels = 36
    elif variant.uses_clip:
        # Like the real Wan2.1 I2V / FLF2V: CLIP tokens get their own key/value projections in cross-attention.
        in_channels, image_dim, added_kv = 36, CLIP_HIDDEN, HEADS * HEAD_DIM
        if variant.name == "wan2.1-flf2v":
            pos_embed = 2 * ((CLIP_IMAGE_SIZE // CLIP_PATCH) ** 2 + 1)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
        in_channels=in_channels, out_channels=out_channels, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32,
        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
        image_dim=image_dim, added_kv_proj_dim=added_kv, pos_embed_seq_len=pos_embed,
    )


def _image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=CLIP_HIDDEN, projection_dim=CLIP_HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        image_size=CLIP_IMAGE_SIZE, intermediate_size=32, patch_size=CLIP_PATCH,
    )
    processor = CLIPImageProcessor(crop_size=CLIP_IMAGE_SIZE, size={"shortest_edge": CLIP_IMAGE_SIZE})
    return CLIPVisionModel(config), processor


def build_tiny_pipeline(variant_name: str, tokenizer_dir: Path, seed: int = 0):
    """The diffusers pipeline object of a tiny random-weight model of `variant_name`."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    from transformers import AutoTokenizer

    if variant_name not in VARIANTS:
        raise ModelFolderError(f"unknown variant {variant_name!r}; known: {', '.join(VARIANTS)}")
    variant = VARIANTS[variant_name]
    vocab = _train_tokenizer(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    text_encoder = _text_encoder(vocab)
    torch.manual_seed(seed + 1)
    vae = _vae(variant)
    torch.manual_seed(seed + 2)
    transformer = _transformer(variant)
    components = dict(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    )
    if variant.two_experts:
        torch.manual_seed(seed + 3)
        components["transformer_2"] = _transformer(variant)
        components["boundary_ratio"] = variant.boundary_ratio
    if variant.expand_timesteps:
        components["expand_timesteps"] = True
    if variant.pipeline_class == "WanImageToVideoPipeline":
        if variant.uses_clip:
            torch.manual_seed(seed + 4)
            components["image_encoder"], components["image_processor"] = _image_encoder()
        else:
            components["image_encoder"] = components["image_processor"] = None
        return WanImageToVideoPipeline(**components)
    return WanPipeline(**components)


def make_tiny_model(folder: Path, variant_name: str, seed: int = 0, demo: bool = False) -> Path:
    """Write a tiny `variant_name` model to `folder` (diffusers layout); atomic: all or nothing."""
    from wanserve.engine import quiet_libraries

    quiet_libraries()
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ModelFolderError(f"{folder} exists and is not empty")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".tiny-") as tmp:
        staging = Path(tmp) / "model"
        pipe = build_tiny_pipeline(variant_name, Path(tmp) / "tokenizer", seed=seed)
        pipe.save_pretrained(str(staging))
        marker = {"variant": variant_name, "seed": seed, "random_weights": True, "demo": demo}
        (staging / DEMO_MARKER).write_text(json.dumps(marker, indent=2))
        if folder.exists():
            folder.rmdir()
        shutil.move(str(staging), str(folder))
    return folder


def ensure_demo_model(data_dir: Path) -> Path:
    """The built-in demo model under DATA_DIR, built on first use (a few seconds, offline)."""
    folder = Path(data_dir) / "demo-model"
    if not (folder / "model_index.json").is_file():
        if folder.exists():
            shutil.rmtree(folder)
        try:
            make_tiny_model(folder, DEMO_VARIANT, seed=0, demo=True)
        except ModelFolderError:
            # Another process built it at the same moment.
            if not (folder / "model_index.json").is_file():
                raise
    return folder

"""Load an official Wan checkpoint folder into the engine's `WanComponents`.

Transformer(s) and VAE go through diffusers' single-file converters (plus our Wan2.2 VAE map), T5
and CLIP through our explicit key maps; every model is built on the meta device from a config
derived locally (the folder's config.json and tensor shapes) and its weights assigned from the
memory-mapped files. Nothing is fetched from the hub.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from wanserve.engine.checkpoints.clip_keys import load_clip
from wanserve.engine.checkpoints.detect import OfficialLayout, inspect_official_folder
from wanserve.engine.checkpoints.t5_keys import load_t5
from wanserve.engine.checkpoints.transformer_keys import load_transformer
from wanserve.engine.checkpoints.vae_keys import load_vae
from wanserve.variants import ModelFolderError, VariantSpec

log = logging.getLogger("wanserve.checkpoints")
NUM_TRAIN_TIMESTEPS = 1000  # the official flow-matching schedulers' training horizon


def scheduler_config(variant: VariantSpec) -> dict[str, Any]:
    """The flow-matching UniPC scheduler the official sampler corresponds to (per-run shift applied later)."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction", use_flow_sigmas=True,
        flow_shift=variant.defaults.sample_shift,
    )
    return {"_class_name": "UniPCMultistepScheduler", **dict(scheduler.config)}


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # json, tokenizers (Rust) and sentencepiece errors alike: the folder is unusable
        raise ModelFolderError(f"{folder} is not a readable tokenizer folder: {e}") from e


def load_official_folder(folder: Path, dtype: torch.dtype | None, vae_dtype: torch.dtype | None):
    """WanComponents of an official Wan folder. dtype / vae_dtype None keep the stored dtypes
    (what `wanserve convert` writes); otherwise the engine's choices (bf16 DiT and T5, fp32 VAE)."""
    from wanserve.engine.components import WanComponents
    from wanserve.variants import is_random_weights, model_name

    layout: OfficialLayout = inspect_official_folder(folder)
    variant = layout.variant
    start = time.perf_counter()
    tokenizer = load_tokenizer(layout.tokenizer)  # cheap: a broken tokenizer fails before the big files
    experts = [load_transformer(files, variant, dtype) for files in layout.transformers]
    text_encoder = load_t5(layout.t5, dtype)
    vae = load_vae(layout.vae, layout.vae_version, vae_dtype)
    image_encoder = image_processor = None
    if layout.clip is not None:
        image_encoder, image_processor = load_clip(layout.clip, dtype)
    log.info("loaded official Wan folder %s as %s in %.1fs", folder, variant.name, time.perf_counter() - start)
    return WanComponents(
        variant=variant,
        name=model_name(Path(folder), variant),
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler_config=scheduler_config(variant),
        transformer=experts[0],
        transformer_2=experts[1] if len(experts) > 1 else None,
        image_encoder=image_encoder,
        image_processor=image_processor,
        random_weights=is_random_weights(Path(folder)),
    )

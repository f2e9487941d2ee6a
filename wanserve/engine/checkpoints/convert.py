"""`wanserve convert`: write an official Wan folder once in diffusers layout, for faster later loads.

Weights keep the dtypes stored in the official files (bf16 transformer and T5, fp32 VAE); the
engine casts at load time exactly as it does for the official folder, so both give the same video.
The output appears atomically: written to a hidden staging folder beside DST, then renamed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from wanserve.engine.checkpoints.detect import inspect_official_folder
from wanserve.variants import DEMO_MARKER, ModelFolderError

MAX_SHARD_SIZE = "5GB"  # bounds the memory safetensors needs while writing one shard


def _pipeline(components):
    from diffusers import WanImageToVideoPipeline, WanPipeline
    from transformers import CLIPImageProcessor

    variant = components.variant
    common = dict(
        tokenizer=components.tokenizer, text_encoder=components.text_encoder, vae=components.vae,
        scheduler=_scheduler(components.scheduler_config), transformer=components.transformer,
        transformer_2=components.transformer_2, boundary_ratio=variant.boundary_ratio,
        expand_timesteps=variant.expand_timesteps,
    )
    if variant.pipeline_class == "WanImageToVideoPipeline":
        processor = None
        if components.image_processor is not None:
            # Saved as plain transformers config here; rewritten with our exact-preprocessing marker below.
            processor = CLIPImageProcessor(**{
                k: v for k, v in components.image_processor.to_config().items()
                if k not in ("image_processor_type", "wanserve_preprocessing")
            })
        return WanImageToVideoPipeline(**common, image_encoder=components.image_encoder, image_processor=processor)
    return WanPipeline(**common)


def _scheduler(config: dict):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")})


def convert_official_folder(source: Path, destination: Path) -> Path:
    """Convert the official Wan folder `source` into a new diffusers-layout folder `destination`."""
    from wanserve.engine import quiet_libraries
    from wanserve.engine.checkpoints.official import load_official_folder

    quiet_libraries()
    source, destination = Path(source), Path(destination)
    if (source / "model_index.json").is_file():
        raise ModelFolderError(f"{source} is already in diffusers layout (it has model_index.json)")
    inspect_official_folder(source)  # every file present before anything heavy happens
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise ModelFolderError(f"{destination} exists and is not an empty folder")
    destination.parent.mkdir(parents=True, exist_ok=True)
    components = load_official_folder(source, dtype=None, vae_dtype=None)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=f".{destination.name}-converting-") as tmp:
        staging = Path(tmp) / "model"
        _pipeline(components).save_pretrained(str(staging), safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
        if components.image_processor is not None:
            components.image_processor.save_pretrained(staging / "image_processor")
        if (source / DEMO_MARKER).is_file():
            shutil.copy2(source / DEMO_MARKER, staging / DEMO_MARKER)  # random weights stay labelled as such
        if destination.exists():
            destination.rmdir()
        staging.rename(destination)
    return destination

"""The parts of one Wan model, however they were loaded (diffusers folder or official checkpoint)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wanserve.variants import (
    DEMO_LABEL,
    ModelFolderError,
    VariantSpec,
    detect_diffusers_variant,
    is_diffusers_folder,
    is_random_weights,
    model_name,
)


@dataclass
class WanComponents:
    """Modules of one model, on the CPU in their load dtypes; the engine places them."""

    variant: VariantSpec
    name: str  # what /health, task records and the CLI call the model
    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict
    transformer: torch.nn.Module | None
    transformer_2: torch.nn.Module | None = None
    image_encoder: torch.nn.Module | None = None
    image_processor: Any = None
    random_weights: bool = False  # a tiny or demo model: its output is noise

    @property
    def label(self) -> str:
        return f"{self.name} ({DEMO_LABEL})" if self.random_weights else self.name

    @property
    def experts(self) -> list[torch.nn.Module]:
        return [m for m in (self.transformer, self.transformer_2) if m is not None]


def load_diffusers_folder(folder: Path, dtype: torch.dtype, vae_dtype: torch.dtype) -> WanComponents:
    """Load a diffusers-layout Wan folder, offline, weights memory-mapped where possible."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, CLIPVisionModel, UMT5EncoderModel

    from wanserve.engine.checkpoints.clip_preprocess import load_image_processor

    folder = Path(folder)
    if not is_diffusers_folder(folder):
        raise ModelFolderError(f"{folder} has no model_index.json (not a diffusers-layout Wan folder)")
    variant = detect_diffusers_variant(folder)
    index = json.loads((folder / "model_index.json").read_text())

    def present(name: str) -> bool:
        entry = index.get(name)
        return isinstance(entry, list) and entry[0] is not None and (folder / name).is_dir()

    def need(name: str) -> Path:
        path = folder / name
        if not path.is_dir():
            raise ModelFolderError(f"{folder} lacks the '{name}' folder that model_index.json names")
        return path

    common = dict(local_files_only=True)
    transformer = (
        WanTransformer3DModel.from_pretrained(str(need("transformer")), torch_dtype=dtype, **common)
        if present("transformer") else None
    )
    transformer_2 = (
        WanTransformer3DModel.from_pretrained(str(need("transformer_2")), torch_dtype=dtype, **common)
        if present("transformer_2") else None
    )
    image_encoder = image_processor = None
    if variant.uses_clip:
        image_encoder = CLIPVisionModel.from_pretrained(str(need("image_encoder")), torch_dtype=dtype, **common)
        image_processor = load_image_processor(need("image_processor"))
    scheduler_config = json.loads((need("scheduler") / "scheduler_config.json").read_text())
    return WanComponents(
        variant=variant,
        name=model_name(folder, variant),
        tokenizer=AutoTokenizer.from_pretrained(str(need("tokenizer")), **common),
        text_encoder=UMT5EncoderModel.from_pretrained(str(need("text_encoder")), torch_dtype=dtype, **common),
        vae=AutoencoderKLWan.from_pretrained(str(need("vae")), torch_dtype=vae_dtype, **common),
        scheduler_config=scheduler_config,
        transformer=transformer,
        transformer_2=transformer_2,
        image_encoder=image_encoder,
        image_processor=image_processor,
        random_weights=is_random_weights(folder),
    )


def load_components(folder: Path, dtype: torch.dtype, vae_dtype: torch.dtype) -> WanComponents:
    """Load any supported model folder: diffusers layout, or an official Wan checkpoint folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    if is_diffusers_folder(folder):
        return load_diffusers_folder(folder, dtype, vae_dtype)
    # Anything else is read as an official Wan folder, whose inspection names what is missing.
    from wanserve.engine.checkpoints.official import load_official_folder

    return load_official_folder(folder, dtype, vae_dtype)

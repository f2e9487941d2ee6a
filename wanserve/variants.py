"""The Wan model variants wanserve knows: what each serves, its grid and its defaults (no torch).

A variant is recognised from the configs of a diffusers-layout folder (`model_index.json`,
`transformer/config.json`, `vae/config.json`); official checkpoint folders are mapped to the
same names by `wanserve.engine.checkpoints`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Task(str, Enum):
    t2v = "t2v"  # text to video
    i2v = "i2v"  # image (first frame) to video
    flf2v = "flf2v"  # first and last frame to video
    v2v = "v2v"  # video to video, `strength` of change


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete or not a Wan model."""


@dataclass(frozen=True)
class Defaults:
    """The official recommended sampling settings of a variant."""

    width: int
    height: int
    num_frames: int
    infer_steps: int
    guidance_scale: float
    sample_shift: float
    fps: int
    guidance_scale_2: float | None = None


@dataclass(frozen=True)
class VariantSpec:
    name: str
    tasks: tuple[Task, ...]
    defaults: Defaults
    two_experts: bool = False
    boundary_ratio: float | None = None  # where the high-noise expert hands over (Wan2.2 A14B)
    expand_timesteps: bool = False  # Wan2.2 TI2V-5B: per-token timesteps, first frame kept clean
    uses_clip: bool = False  # Wan2.1 I2V / FLF2V condition on CLIP image features
    pipeline_class: str = "WanPipeline"
    notes: str = ""
    grid: int = 16  # width and height are multiples of this (VAE stride x patch size)
    max_frames: int = 201
    aliases: tuple[str, ...] = field(default_factory=tuple)


VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in (
        VariantSpec(
            "wan2.1-t2v",
            (Task.t2v, Task.v2v),
            Defaults(832, 480, 81, 50, 5.0, 5.0, 16),
            notes="Wan2.1 T2V 1.3B / 14B",
        ),
        VariantSpec(
            "wan2.1-i2v",
            (Task.i2v,),
            Defaults(832, 480, 81, 40, 5.0, 3.0, 16),
            uses_clip=True,
            pipeline_class="WanImageToVideoPipeline",
            notes="Wan2.1 I2V 14B 480P / 720P",
        ),
        VariantSpec(
            "wan2.1-flf2v",
            (Task.flf2v,),
            Defaults(1280, 720, 81, 50, 5.0, 16.0, 16),
            uses_clip=True,
            pipeline_class="WanImageToVideoPipeline",
            notes="Wan2.1 FLF2V 14B 720P",
        ),
        VariantSpec(
            "wan2.2-t2v-a14b",
            (Task.t2v,),
            Defaults(1280, 720, 81, 40, 3.0, 12.0, 16, guidance_scale_2=4.0),
            two_experts=True,
            boundary_ratio=0.875,
            notes="Wan2.2 T2V A14B (high- and low-noise experts)",
        ),
        VariantSpec(
            "wan2.2-i2v-a14b",
            (Task.i2v,),
            Defaults(1280, 720, 81, 40, 3.5, 5.0, 16, guidance_scale_2=3.5),
            two_experts=True,
            boundary_ratio=0.9,
            pipeline_class="WanImageToVideoPipeline",
            notes="Wan2.2 I2V A14B (high- and low-noise experts)",
        ),
        VariantSpec(
            "wan2.2-ti2v-5b",
            (Task.t2v, Task.i2v),
            Defaults(1280, 704, 121, 50, 5.0, 5.0, 24),
            expand_timesteps=True,
            grid=32,
            notes="Wan2.2 TI2V 5B (48-channel VAE, 16x compression)",
        ),
    )
}


def get_variant(name: str) -> VariantSpec:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ModelFolderError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{path} is missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path} is not readable JSON: {e}") from e


def _component_present(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


def detect_diffusers_variant(folder: Path) -> VariantSpec:
    """The variant of a diffusers-layout Wan folder, from its configs alone (no weights read)."""
    index = _read_json(folder / "model_index.json")
    class_name = index.get("_class_name", "")
    if not str(class_name).startswith("Wan"):
        raise ModelFolderError(f"{folder}/model_index.json describes {class_name!r}, not a Wan pipeline")
    # The variant decides which diffusers pipeline runs it; pick the first expert present.
    expert = "transformer" if _component_present(index, "transformer") else "transformer_2"
    config = _read_json(folder / expert / "config.json")
    vae = _read_json(folder / "vae" / "config.json")
    in_channels = int(config.get("in_channels", 16))
    two_experts = _component_present(index, "transformer") and _component_present(index, "transformer_2")
    if int(vae.get("z_dim", 16)) == 48:
        return VARIANTS["wan2.2-ti2v-5b"]
    if two_experts:
        return VARIANTS["wan2.2-i2v-a14b" if in_channels == 36 else "wan2.2-t2v-a14b"]
    if in_channels == 36:
        if config.get("pos_embed_seq_len"):
            return VARIANTS["wan2.1-flf2v"]
        return VARIANTS["wan2.1-i2v"]
    if in_channels == 16:
        return VARIANTS["wan2.1-t2v"]
    raise ModelFolderError(f"{folder}: transformer in_channels={in_channels} matches no known Wan variant")


def is_diffusers_folder(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


# --- How a model folder is named to users (the engine, task records, /health and the API agree) ---
DEMO_VARIANT = "wan2.2-ti2v-5b"  # the built-in demo model: serves both t2v and i2v
DEMO_MARKER = "wanserve_demo.json"  # written by make_tiny_model: the folder holds random weights
DEMO_NAME = "wanserve-demo"
DEMO_LABEL = "demo, random weights"


def _read_marker(folder: Path) -> dict | None:
    """The random-weights marker of a folder: None when absent, {} when unreadable."""
    try:
        value = json.loads((Path(folder) / DEMO_MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def is_random_weights(folder: Path) -> bool:
    """True for folders written by make_tiny_model (their output is noise)."""
    return _read_marker(folder) is not None


def model_name(folder: Path, variant: VariantSpec) -> str:
    marker = _read_marker(folder)
    if marker is not None and marker.get("demo"):
        return DEMO_NAME
    return f"{variant.name}:{Path(folder).name}"


def model_label(folder: Path, variant: VariantSpec) -> str:
    """The name users see: '... (demo, random weights)' for tiny and demo models."""
    name = model_name(folder, variant)
    return f"{name} ({DEMO_LABEL})" if is_random_weights(folder) else name

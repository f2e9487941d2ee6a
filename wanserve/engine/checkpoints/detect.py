"""Recognise an official Wan checkpoint folder (as the Wan2.1 / Wan2.2 repos download it), torch-free.

Only `config.json` files and file names are read here, so the API process can tell a user what is
wrong with MODEL_CKPT_DIR without importing torch or touching gigabytes of weights.

Layouts (file names exactly as the official download instructions produce them):

    Wan2.1 T2V-1.3B / T2V-14B        config.json, diffusion_pytorch_model*.safetensors (+ .index.json when
                                     sharded), models_t5_umt5-xxl-enc-bf16.pth, Wan2.1_VAE.pth, google/umt5-xxl/
    Wan2.1 I2V-14B-480P/720P, FLF2V  the same plus models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth
                                     (and xlm-roberta-large/, the CLIP text tower's tokenizer, which Wan never runs)
    Wan2.2 T2V-A14B / I2V-A14B       high_noise_model/ and low_noise_model/ (each config.json + safetensors),
                                     models_t5_umt5-xxl-enc-bf16.pth, Wan2.1_VAE.pth, google/umt5-xxl/
    Wan2.2 TI2V-5B                   config.json, diffusion_pytorch_model*.safetensors, models_t5_umt5-xxl-enc-bf16.pth,
                                     Wan2.2_VAE.pth, google/umt5-xxl/
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from wanserve.variants import VARIANTS, ModelFolderError, VariantSpec

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
VAE21_FILE = "Wan2.1_VAE.pth"
VAE22_FILE = "Wan2.2_VAE.pth"
TOKENIZER_DIR = "google/umt5-xxl"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
HIGH_NOISE_DIR = "high_noise_model"  # Wan2.2 A14B expert for the early, noisy steps (diffusers: transformer)
LOW_NOISE_DIR = "low_noise_model"  # ... and for the late steps (diffusers: transformer_2)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")

# Official config.json fields the loader needs (the rest of WanModel's arguments are fixed or read from shapes).
REQUIRED_CONFIG_FIELDS = ("model_type", "dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim")

# (model_type, in_dim) of the official config -> variant, for single-model folders.
_SINGLE_MODEL_VARIANTS = {
    ("t2v", 16): "wan2.1-t2v",
    ("i2v", 36): "wan2.1-i2v",
    ("flf2v", 36): "wan2.1-flf2v",
    ("ti2v", 48): "wan2.2-ti2v-5b",
}
# ... and for two-expert folders (Wan2.2 A14B).
_TWO_EXPERT_VARIANTS = {
    ("t2v", 16): "wan2.2-t2v-a14b",
    ("i2v", 36): "wan2.2-i2v-a14b",
}


@dataclass(frozen=True)
class DiTFiles:
    """One diffusion transformer of an official folder: its config and its safetensors file(s)."""

    folder: Path
    config: dict
    shards: tuple[Path, ...]


@dataclass(frozen=True)
class OfficialLayout:
    """Every file an official Wan folder must provide for its variant (all checked to exist)."""

    folder: Path
    variant: VariantSpec
    transformers: tuple[DiTFiles, ...]  # (model,) or (high-noise expert, low-noise expert)
    t5: Path
    vae: Path
    tokenizer: Path
    clip: Path | None = None

    @property
    def vae_version(self) -> str:
        return "2.2" if self.vae.name == VAE22_FILE else "2.1"


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{path} is missing (the official Wan transformer config)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path} is not a JSON object")
    class_name = config.get("_class_name")
    if class_name not in (None, "WanModel"):
        raise ModelFolderError(f"{path} describes {class_name!r}, not an official Wan transformer ('WanModel')")
    missing = [f for f in REQUIRED_CONFIG_FIELDS if f not in config]
    if missing:
        raise ModelFolderError(
            f"{path} is not an official Wan transformer config: it lacks {', '.join(missing)}"
        )
    for name in REQUIRED_CONFIG_FIELDS[1:]:
        if not isinstance(config[name], int) or config[name] <= 0:
            raise ModelFolderError(f"{path}: '{name}' must be a positive integer, not {config[name]!r}")
    return config


def _weight_shards(folder: Path) -> tuple[Path, ...]:
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ModelFolderError(f"{index} is not a safetensors index (no 'weight_map'): {e}") from e
        shards = tuple(folder / name for name in names)
        for shard in shards:
            if not shard.is_file():
                raise ModelFolderError(f"{shard} is missing ({index.name} lists it)")
        if not shards:
            raise ModelFolderError(f"{index} lists no weight files")
        return shards
    single = folder / WEIGHTS_FILE
    if single.is_file():
        return (single,)
    raise ModelFolderError(
        f"{folder} lacks {WEIGHTS_FILE} (or {WEIGHTS_INDEX} and its shards): the transformer weights"
    )


def read_dit_files(folder: Path) -> DiTFiles:
    """The config and weight files of one official transformer folder (checked to exist)."""
    config = _read_config(folder / CONFIG_FILE)
    return DiTFiles(folder=folder, config=config, shards=_weight_shards(folder))


def _need_file(folder: Path, name: str, what: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise ModelFolderError(f"{folder} lacks {name} ({what})")
    return path


def _need_tokenizer(folder: Path) -> Path:
    path = folder / TOKENIZER_DIR
    if not path.is_dir() or not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelFolderError(
            f"{folder} lacks the tokenizer folder {TOKENIZER_DIR}/ (one of {', '.join(TOKENIZER_FILES)})"
        )
    return path


def is_official_folder(folder: Path) -> bool:
    """True when `folder` looks like an official Wan layout (it may still be incomplete)."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() or (folder / HIGH_NOISE_DIR).is_dir() or (folder / LOW_NOISE_DIR).is_dir()


def inspect_official_folder(folder: Path) -> OfficialLayout:
    """The variant and files of an official Wan folder, or a ModelFolderError naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    two_experts = (folder / HIGH_NOISE_DIR).exists() or (folder / LOW_NOISE_DIR).exists()
    if two_experts:
        for name in (HIGH_NOISE_DIR, LOW_NOISE_DIR):
            if not (folder / name).is_dir():
                raise ModelFolderError(f"{folder} lacks {name}/ (Wan2.2 A14B folders hold both experts)")
        experts = (read_dit_files(folder / HIGH_NOISE_DIR), read_dit_files(folder / LOW_NOISE_DIR))
        keys = [(e.config["model_type"], e.config["in_dim"]) for e in experts]
        if keys[0] != keys[1]:
            raise ModelFolderError(
                f"{folder}: the experts disagree (high_noise_model is model_type={keys[0][0]!r} in_dim={keys[0][1]}, "
                f"low_noise_model is model_type={keys[1][0]!r} in_dim={keys[1][1]})"
            )
        table, dits = _TWO_EXPERT_VARIANTS, experts
    else:
        if not (folder / CONFIG_FILE).is_file():
            raise ModelFolderError(
                f"{folder} is not a Wan model folder: it has neither model_index.json (diffusers layout) "
                f"nor {CONFIG_FILE} or {HIGH_NOISE_DIR}/ (official Wan layout)"
            )
        dits = (read_dit_files(folder),)
        table = _SINGLE_MODEL_VARIANTS
    model_type, in_dim = dits[0].config["model_type"], dits[0].config["in_dim"]
    name = table.get((model_type, in_dim))
    if name is None:
        known = ", ".join(f"{t}/in_dim={d}" for t, d in table)
        where = "two-expert (high/low noise) folder" if two_experts else CONFIG_FILE
        raise ModelFolderError(
            f"{folder}: {where} says model_type={model_type!r}, in_dim={in_dim}, which no served Wan variant "
            f"has (this layout serves {known})"
        )
    variant = VARIANTS[name]
    vae_name = VAE22_FILE if variant.name == "wan2.2-ti2v-5b" else VAE21_FILE
    if not (folder / vae_name).is_file():
        other = VAE21_FILE if vae_name == VAE22_FILE else VAE22_FILE
        hint = f"; it holds {other}, which is the other Wan VAE" if (folder / other).is_file() else ""
        raise ModelFolderError(f"{folder} lacks {vae_name} (the VAE of {variant.notes}){hint}")
    return OfficialLayout(
        folder=folder,
        variant=variant,
        transformers=dits,
        t5=_need_file(folder, T5_FILE, "the umt5-xxl text encoder"),
        vae=folder / vae_name,
        tokenizer=_need_tokenizer(folder),
        clip=_need_file(folder, CLIP_FILE, "the CLIP image encoder of Wan2.1 I2V / FLF2V") if variant.uses_clip else None,
    )


def detect_official_variant(folder: Path) -> VariantSpec:
    """The variant an official Wan folder serves (its files checked to exist, no weights read)."""
    return inspect_official_folder(folder).variant

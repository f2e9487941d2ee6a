"""CLIP image preprocessing exactly as the official Wan pipeline does it.

Official Wan (`CLIPModel.visual`): the image as a float tensor in [-1, 1], bicubic interpolation
(`align_corners=False`, no antialiasing) straight to size x size (no aspect-preserving crop), back to
[0, 1], then normalised with the OpenCLIP mean and std. transformers' `CLIPImageProcessor` instead
resizes the short side with antialiasing and centre-crops, which feeds the encoder different pixels.

Saved in a diffusers folder as a `CLIPImageProcessor`-compatible `preprocessor_config.json` (stretch
resize, no crop: the nearest plain transformers can get) plus a `wanserve_preprocessing` marker by
which wanserve reloads this exact preprocessing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MARKER_KEY = "wanserve_preprocessing"
MARKER_VALUE = "wan-official-clip"
CONFIG_NAME = "preprocessor_config.json"


class WanClipImageProcessor:
    """Callable like a transformers image processor: `processor(images=..., return_tensors="pt")`."""

    def __init__(self, size: int = 224, image_mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
                 image_std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711)) -> None:
        self.size = int(size)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)

    def __repr__(self) -> str:
        return f"WanClipImageProcessor(size={self.size})"

    @staticmethod
    def _to_tensor(image: Any) -> torch.Tensor:
        """One image as float32 [3, H, W] in [0, 1] (what torchvision's to_tensor gives for 8-bit RGB)."""
        if hasattr(image, "convert"):  # PIL
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
            if image.dtype != np.uint8:
                raise ValueError(f"expected 8-bit RGB pixels, got {image.dtype}")
            return torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255)
        if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
            return image.float()  # already [3, H, W] in [0, 1]
        raise TypeError(f"cannot read an image from {type(image).__name__}")

    def preprocess(self, images: Any) -> torch.Tensor:
        """pixel_values [N, 3, size, size] float32."""
        batch = images if isinstance(images, (list, tuple)) else [images]
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        out = []
        for image in batch:
            x = self._to_tensor(image).sub(0.5).div(0.5)  # [-1, 1], as the pipeline holds images
            x = F.interpolate(x.unsqueeze(0), size=(self.size, self.size), mode="bicubic", align_corners=False)
            x = x.mul(0.5).add(0.5)
            out.append(x.sub(mean).div(std))
        return torch.cat(out)

    def __call__(self, images: Any = None, return_tensors: str | None = "pt", **_: Any):
        from transformers import BatchFeature

        if return_tensors not in (None, "pt"):
            raise ValueError("WanClipImageProcessor returns PyTorch tensors only")
        return BatchFeature({"pixel_values": self.preprocess(images)}, tensor_type="pt")

    # -------------------------------------------------------------------- saving / loading
    def to_config(self) -> dict[str, Any]:
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"height": self.size, "width": self.size},
            "resample": 3,  # bicubic
            "do_center_crop": False,
            "crop_size": {"height": self.size, "width": self.size},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": True,
            MARKER_KEY: MARKER_VALUE,
        }

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.to_config(), indent=2) + "\n")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "WanClipImageProcessor":
        size = config.get("size", {})
        return cls(size=size.get("height", 224), image_mean=config["image_mean"], image_std=config["image_std"])


def is_wan_official_processor(folder: Path) -> bool:
    path = Path(folder) / CONFIG_NAME
    try:
        return json.loads(path.read_text()).get(MARKER_KEY) == MARKER_VALUE
    except (OSError, ValueError, AttributeError):
        return False


def load_image_processor(folder: Path):
    """The image processor of a diffusers folder: ours when it carries our marker, else transformers'."""
    if is_wan_official_processor(folder):
        return WanClipImageProcessor.from_config(json.loads((Path(folder) / CONFIG_NAME).read_text()))
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True)

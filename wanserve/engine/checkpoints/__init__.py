"""Official Wan checkpoint folders (the layout the Wan2.1 / Wan2.2 repos download): detect, load, convert.

`detect` is torch-free; the loaders import torch, diffusers and transformers.
"""

from wanserve.engine.checkpoints.detect import (
    OfficialLayout,
    detect_official_variant,
    inspect_official_folder,
    is_official_folder,
)

__all__ = ["OfficialLayout", "detect_official_variant", "inspect_official_folder", "is_official_folder"]

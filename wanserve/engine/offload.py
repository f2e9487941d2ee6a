"""CPU offload for cards too small for the whole model (CPU_OFFLOAD).

- model: each model (T5, CLIP, transformer(s), VAE) moves to the device only while it runs
  (accelerate hooks chained in run order); peak memory is the largest model, not their sum.
- group: weights stay in CPU memory and stream to the device block by block (diffusers group
  offloading); peak memory is a few blocks, at the cost of transfer time each step.
"""

from __future__ import annotations

from typing import Any

import torch

MODES = ("none", "model", "group")


class ModelOffload:
    """Offload hooks over a chain of modules; `release()` sends them all back to the CPU."""

    def __init__(self, mode: str, modules: list[torch.nn.Module], device: torch.device) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown CPU_OFFLOAD mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode = mode
        self._hooks: list[Any] = []
        if mode == "model":
            from accelerate import cpu_offload_with_hook

            hook = None
            for module in modules:
                _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
                self._hooks.append(hook)
        elif mode == "group":
            from diffusers.hooks import apply_group_offloading

            for module in modules:
                has_blocks = any(isinstance(m, torch.nn.ModuleList) for m in module.children()) or any(
                    isinstance(m, torch.nn.ModuleList) for c in module.children() for m in c.children()
                )
                apply_group_offloading(
                    module, onload_device=device, offload_device=torch.device("cpu"),
                    offload_type="block_level" if has_blocks else "leaf_level",
                    num_blocks_per_group=1 if has_blocks else None,
                    use_stream=device.type == "cuda",
                )

    def release(self) -> None:
        """After a request: nothing of it stays on the device."""
        for hook in self._hooks:
            hook.offload()

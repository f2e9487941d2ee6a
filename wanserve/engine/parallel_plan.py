"""How one denoising run is spread over the ranks of a group.

The engine calls the points of its loop (stop decisions, guided noise, decode, which text
branch a rank needs) and of its setup (placement, `prepare`, `check_request`) through a
`ParallelPlan`. The base class (`SINGLE_PROCESS`) is the plan of a group of one; the multi-rank
plan (Ulysses, Ring, CFG parallel, FSDP, VAE parallel) is `wanserve.engine.distributed.GroupPlan`,
returned by `init_rank`. A rank must run the leader's *resolved* request (`broadcast_object`):
resolving again per rank would draw a different random seed on each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from wanserve.engine.engine import WanEngine
    from wanserve.request import ResolvedRequest


class ParallelPlan:
    """One process does everything. Subclasses split work across ranks."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None  # a rank's bound device; None: the engine's options decide

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def agree_to_stop(self, stop: bool) -> bool:
        """Every rank must take the same branch: the leader's decision wins."""
        return stop

    def guided_noise(
        self,
        predict: Callable[[str], torch.Tensor],
        guidance_scale: float,
        use_guidance: bool,
    ) -> torch.Tensor:
        """noise = uncond + g * (cond - uncond); `predict("cond"|"uncond")` runs one pass."""
        cond = predict("cond")
        if not use_guidance:
            return cond
        uncond = predict("uncond")
        return uncond + guidance_scale * (cond - uncond)

    def decode(self, vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, T, h, w] -> video [B, 3, F, H, W] in [-1, 1]."""
        return vae.decode(latents, return_dict=False)[0]

    def needs_text_on_rank(self, branch: str) -> bool:
        """Whether this rank needs the `branch` ('cond' / 'uncond') text embedding."""
        return True

    # Hooks for multi-rank plans (wanserve.engine.distributed.GroupPlan); no-ops for one process.
    def broadcast_object(self, obj: Any) -> Any:
        """The leader's `obj` on every rank (a request, a decision)."""
        return obj

    def places(self, role: str) -> bool:
        """True when `prepare` puts the `role` modules ('transformer', 'text_encoder') on the
        device itself (FSDP moves only this rank's shard there), so the engine must not."""
        return False

    def prepare(self, engine: "WanEngine") -> None:
        """Called once the engine placed its modules and set the attention backend."""

    def check_request(self, request: "ResolvedRequest", engine: "WanEngine") -> None:
        """Raise RequestError for a request this layout cannot run (e.g. CFG parallel without guidance)."""

    def describe(self) -> str:
        return "single process"


SINGLE_PROCESS = ParallelPlan()

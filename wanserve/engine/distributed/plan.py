"""`GroupPlan`: one denoising run spread over the ranks of a worker group.

The engine calls the plan at fixed points of its loop; this plan answers them for any layout:
- `prepare`: context parallel (Ulysses / Ring) and FSDP on the experts, FSDP on T5;
- `guided_noise`: with CFG_PARALLEL=2 the conditional pass runs on the first half of the ranks and
  the unconditional one on the second, and one all-gather per step joins them;
- `decode`: with VAE_PARALLEL each rank decodes a band of the video;
- `agree_to_stop` / `broadcast_object`: the leader's decisions and requests reach every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from wanserve.engine.distributed import context_parallel, fsdp, vae_parallel
from wanserve.engine.distributed import layout as layouts
from wanserve.engine.distributed.layout import GroupLayout
from wanserve.engine.parallel_plan import ParallelPlan
from wanserve.request import ResolvedRequest

if TYPE_CHECKING:
    from wanserve.engine.engine import WanEngine

BRANCHES = ("cond", "uncond")  # CFG half 0 runs the conditional pass, half 1 the unconditional one


class GroupPlan(ParallelPlan):
    """The plan of one rank in a group of `layout.size` ranks (torch.distributed initialised)."""

    def __init__(self, layout: GroupLayout, rank: int, world_size: int, device: torch.device,
                 mesh: DeviceMesh) -> None:
        self.layout = layout
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.mesh = mesh
        self.cfg_rank = mesh.get_local_rank("cfg")
        # Small control tensors travel on the device NCCL/HCCL communicate from (the CPU for gloo).
        self.comm_device = device if layout.device_kind != "cpu" else torch.device("cpu")
        self.stats: dict[str, Any] = {"cfg_exchanges": 0, "stop_votes": 0}
        self._fsdp_mesh: DeviceMesh | None = None

    # ------------------------------------------------------------------ what runs where
    @property
    def branch(self) -> str:
        return BRANCHES[self.cfg_rank] if self.layout.cfg == 2 else "both"

    def needs_text_on_rank(self, branch: str) -> bool:
        return self.layout.cfg == 1 or branch == self.branch

    def places(self, role: str) -> bool:
        return (role == "transformer" and self.layout.dit_fsdp) or (role == "text_encoder" and self.layout.t5_fsdp)

    def prepare(self, engine: WanEngine) -> None:
        c = engine.components
        for expert in c.experts:
            if self.layout.context_parallel > 1:
                context_parallel.enable_context_parallel(expert, self.layout, self.mesh)
            if self.layout.dit_fsdp:
                fsdp.shard_transformer(expert, self.fsdp_mesh)
        if self.layout.t5_fsdp:
            fsdp.shard_text_encoder(c.text_encoder, self.fsdp_mesh)
        self.stats["transformer_bytes_on_rank"] = sum(fsdp.local_parameter_bytes(e) for e in c.experts)
        self.stats["text_encoder_bytes_on_rank"] = fsdp.local_parameter_bytes(c.text_encoder)

    @property
    def fsdp_mesh(self) -> DeviceMesh:
        """All ranks of the group: FSDP shards over the whole group, whatever else is split."""
        if self._fsdp_mesh is None:
            self._fsdp_mesh = init_device_mesh(self.layout.device_kind, (self.world_size,), mesh_dim_names=("fsdp",))
        return self._fsdp_mesh

    def check_request(self, request: ResolvedRequest, engine: WanEngine) -> None:
        vae = engine.components.vae
        expert = engine.components.transformer or engine.components.transformer_2
        tokens = layouts.sequence_tokens(
            request, spatial_scale=int(vae.config.scale_factor_spatial),
            temporal_scale=int(vae.config.scale_factor_temporal),
            patch_size=tuple(expert.config.patch_size),  # type: ignore[union-attr]
        )
        layouts.check_request(self.layout, request, tokens=tokens)

    # ------------------------------------------------------------------ the loop's points
    def broadcast_object(self, obj: Any) -> Any:
        box = [obj if self.is_leader else None]
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        return box[0]

    def agree_to_stop(self, stop: bool) -> bool:
        flag = torch.tensor([1 if stop else 0], dtype=torch.int32, device=self.comm_device)
        dist.broadcast(flag, src=0)
        self.stats["stop_votes"] += 1
        return bool(flag.item())

    def guided_noise(self, predict: Callable[[str], torch.Tensor], guidance_scale: float,
                     use_guidance: bool) -> torch.Tensor:
        if self.layout.cfg == 1:
            return super().guided_noise(predict, guidance_scale, use_guidance)
        if not use_guidance:
            # check_request keeps guidance on for every step; a half without the prompt's
            # embedding cannot run the conditional pass on its own.
            raise RuntimeError("CFG_PARALLEL=2 needs guidance on at every step")
        mine = predict(self.branch).contiguous()
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine, group=self.mesh.get_group("cfg"))
        self.stats["cfg_exchanges"] += 1
        cond, uncond = both
        return uncond + guidance_scale * (cond - uncond)

    def decode(self, vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
        if not self.layout.vae_parallel:
            return super().decode(vae, latents)
        video, info = vae_parallel.parallel_decode(vae, latents, self.rank, self.world_size)
        self.stats["vae_band"] = info
        return video

    def describe(self) -> str:
        return f"rank {self.rank} of {self.layout.describe()}"

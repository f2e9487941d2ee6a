"""The layout of a worker group, checked before any process joins it.

A group is `CFG_PARALLEL x RING_SIZE x ULYSSES_SIZE` ranks, one per device. Everything that can be
wrong with that layout for the whole life of the group is rejected here with a `SettingsError`
naming the setting; what depends on one request (guidance on, a sequence the ranks can split) is
rejected per request by `check_request` with a `RequestError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from wanserve.engine import devices
from wanserve.engine.devices import DeviceInfo
from wanserve.request import RequestError, ResolvedRequest
from wanserve.settings import Settings, SettingsError

# Sizes of the mesh that groups are built on, outermost first: the two CFG halves, then the ring
# and Ulysses degrees that diffusers' context parallelism splits one pass over.
MESH_DIMS = ("cfg", "ring", "ulysses")


@dataclass(frozen=True)
class GroupLayout:
    """How one model replica is spread over the ranks of a group."""

    ulysses: int = 1
    ring: int = 1
    cfg: int = 1
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    vae_parallel: bool = False
    t5_cpu: bool = False
    attention_backend: str = "native"
    device_kind: str = "cpu"

    @property
    def size(self) -> int:
        return self.cfg * self.ring * self.ulysses

    @property
    def context_parallel(self) -> int:
        """Ranks one transformer pass is split over (its sequence is divided by this)."""
        return self.ring * self.ulysses

    @property
    def mesh_shape(self) -> tuple[int, int, int]:
        return (self.cfg, self.ring, self.ulysses)

    def describe(self) -> str:
        parts = [f"{self.size} ranks"]
        for name, value in (("ulysses", self.ulysses), ("ring", self.ring), ("cfg", self.cfg)):
            if value > 1:
                parts.append(f"{name} {value}")
        for name, on in (("dit_fsdp", self.dit_fsdp), ("t5_fsdp", self.t5_fsdp),
                         ("vae_parallel", self.vae_parallel), ("t5_cpu", self.t5_cpu)):
            if on:
                parts.append(name)
        return ", ".join(parts)


def host_device_indices(settings: Settings, info: DeviceInfo) -> list[int]:
    """The devices this host's groups may use, from DEVICES (on a CPU: one entry per process)."""
    if settings.devices == "auto":
        if info.kind == "cpu":
            return [0] * settings.group_size
        return list(range(info.count))
    parts = [int(p) for p in settings.devices.split(",")]
    if info.kind == "cpu":
        # On a CPU, DEVICES is a process count ('4'), or a list whose length is the count.
        count = parts[0] if len(parts) == 1 else len(parts)
        if count < 1:
            raise SettingsError("DEVICES: needs at least one process on a CPU (got 0)")
        return [0] * count
    missing = [i for i in parts if i >= info.count]
    if missing:
        raise SettingsError(
            f"DEVICES: device {missing[0]} does not exist (this machine has {info.count} {info.kind} "
            f"device{'s' if info.count != 1 else ''}, numbered from 0)"
        )
    if len(set(parts)) != len(parts):
        raise SettingsError(f"DEVICES: {settings.devices!r} names a device twice")
    return parts


def group_device_indices(settings: Settings, info: DeviceInfo, group_index: int = 0) -> list[int]:
    """The devices of group `group_index`, one per rank: consecutive slices of DEVICES."""
    indices = host_device_indices(settings, info)
    size = settings.group_size
    start = group_index * size
    if start + size > len(indices):
        raise SettingsError(
            f"DEVICES: group {group_index} needs devices {start}..{start + size - 1} of DEVICES, "
            f"but only {len(indices)} are listed"
        )
    return indices[start:start + size]


def transformer_heads(settings: Settings) -> int | None:
    """Attention heads of the model's transformer, read from its config (None when unknown)."""
    from wanserve.engine.tiny_model import HEADS

    folder = Path(settings.model_ckpt_dir) if settings.model_ckpt_dir else settings.data_dir / "demo-model"
    for name in ("transformer", "transformer_2"):
        config = folder / name / "config.json"
        if config.is_file():
            try:
                return int(json.loads(config.read_text())["num_attention_heads"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
    if settings.model_ckpt_dir is None:
        return HEADS  # the demo model, not built yet: it is a tiny model
    return None


def validate_layout(settings: Settings, world_size: int, info: DeviceInfo | None = None) -> GroupLayout:
    """Check the group layout of `settings` for a group of `world_size` ranks; SettingsError if wrong."""
    info = info or devices.detect(settings.device)
    size = settings.group_size
    layout_text = (f"ULYSSES_SIZE x RING_SIZE x CFG_PARALLEL = {settings.ulysses_size} x {settings.ring_size} "
                   f"x {settings.cfg_parallel} = {size}")
    if world_size != size:
        raise SettingsError(
            f"WORLD_SIZE: the group has {world_size} processes but {layout_text}; "
            "start as many processes as the layout has ranks (or let `wanserve` start them)"
        )
    indices = host_device_indices(settings, info)
    if len(indices) % size:
        raise SettingsError(
            f"DEVICES: {len(indices)} device{'s' if len(indices) != 1 else ''} cannot be split into groups of "
            f"{size} ({layout_text}); the group size must divide the number of devices"
        )

    backend = settings.attention_backend
    if backend == "auto":
        backend = devices.best_attention_backend(info)

    if size > 1:
        if settings.ulysses_size > 1:
            heads = transformer_heads(settings)
            if heads is not None and heads % settings.ulysses_size:
                raise SettingsError(
                    f"ULYSSES_SIZE: the model has {heads} attention heads, which {settings.ulysses_size} ranks "
                    f"cannot share evenly; use a Ulysses degree that divides {heads}"
                )
        if settings.ring_size > 1 and not devices.attention_backend_returns_lse(backend):
            why = {
                "native": "PyTorch's native SDPA (the CPU's backend) does not return it",
                "_native_npu": "the Ascend NPU fused attention (_native_npu) does not return it through diffusers",
            }.get(backend, f"{backend} does not return it")
            raise SettingsError(
                f"RING_SIZE: ring attention merges partial results by their log-sum-exp, and ATTENTION_BACKEND="
                f"{backend} cannot give it: {why}. Use ULYSSES_SIZE instead, or a backend that returns it "
                "(flash, _flash_3, _native_cudnn, sage) on CUDA"
            )
        if settings.cpu_offload != "none":
            raise SettingsError(
                "CPU_OFFLOAD: offloading cannot be combined with a group of several ranks; "
                "use DIT_FSDP (and T5_FSDP / T5_CPU) to spread the weights instead"
            )
        if settings.use_attention_cache:
            raise SettingsError(
                "USE_ATTENTION_CACHE: the step cache decides per rank which work to skip, so the ranks of a "
                "group could disagree and wait on each other; turn it off for groups of several ranks"
            )
    if settings.t5_fsdp and settings.t5_cpu:
        raise SettingsError("T5_FSDP: T5_CPU keeps the text encoder on the CPU, where it is not sharded; "
                            "choose one of T5_FSDP and T5_CPU")
    if settings.vae_parallel and settings.vae_tiling:
        raise SettingsError("VAE_PARALLEL: the decode is already split across the ranks; "
                            "turn VAE_TILING off (or VAE_PARALLEL off)")
    return GroupLayout(
        ulysses=settings.ulysses_size, ring=settings.ring_size, cfg=settings.cfg_parallel,
        dit_fsdp=settings.dit_fsdp and size > 1, t5_fsdp=settings.t5_fsdp and size > 1,
        vae_parallel=settings.vae_parallel and size > 1, t5_cpu=settings.t5_cpu,
        attention_backend=backend, device_kind=info.kind,
    )


def sequence_tokens(request: ResolvedRequest, *, spatial_scale: int, temporal_scale: int,
                    patch_size: tuple[int, int, int]) -> int:
    """Tokens of one transformer pass over `request`'s video latents."""
    latent_frames = (request.num_frames - 1) // temporal_scale + 1
    pt, ph, pw = patch_size
    return (latent_frames // pt) * (request.height // spatial_scale // ph) * (request.width // spatial_scale // pw)


def check_request(layout: GroupLayout, request: ResolvedRequest, *, tokens: int) -> None:
    """Reject a request this group cannot run as asked (RequestError naming the field)."""
    if layout.cfg == 2:
        off = []
        if request.guidance_scale <= 1.0:
            off.append(f"guidance_scale={request.guidance_scale:g}")
        if request.guidance_scale_2 is not None and request.guidance_scale_2 <= 1.0:
            off.append(f"guidance_scale_2={request.guidance_scale_2:g}")
        if off:
            raise RequestError(
                "guidance_scale_2" if off[0].startswith("guidance_scale_2") else "guidance_scale",
                f"this worker group runs with CFG_PARALLEL=2 (the guided and unguided passes on different "
                f"devices), which needs guidance on, but the request has {' and '.join(off)}; use a guidance "
                "scale above 1",
                code="guidance_required",
            )
    split = layout.context_parallel
    if split > 1 and tokens % split:
        raise RequestError(
            "size",
            f"{request.size} x {request.num_frames} frames makes {tokens} tokens per pass, which the "
            f"{split} ranks of this group (ULYSSES_SIZE x RING_SIZE) cannot split evenly; choose a size or "
            f"frame count whose token count is a multiple of {split}",
        )

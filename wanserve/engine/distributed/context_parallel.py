"""Ulysses and Ring attention through diffusers' context parallelism.

The transformer's `_cp_plan` splits the video tokens across the ranks of the (ring x ulysses)
mesh before the first block and gathers them after `proj_out`, so every rank of a CFG half ends a
pass with the whole noise prediction. The text (and CLIP) tokens are not split.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch.distributed.device_mesh import DeviceMesh

from wanserve.engine.distributed.layout import GroupLayout


@contextlib.contextmanager
def _at_least_one_accelerator() -> Iterator[None]:
    """diffusers picks the rank's device as `rank % torch.accelerator.device_count()`, which is a
    division by zero on a CPU-only host; a CPU counts as one device for that computation."""
    real = torch.accelerator.device_count
    if real() > 0:
        yield
        return
    torch.accelerator.device_count = lambda: 1  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.accelerator.device_count = real  # type: ignore[assignment]


def enable_context_parallel(expert: torch.nn.Module, layout: GroupLayout, mesh: DeviceMesh) -> None:
    """Split `expert`'s attention over the ring x ulysses ranks of this rank's CFG half."""
    from diffusers.models._modeling_parallel import ContextParallelConfig

    # diffusers' own gather calls a torch function torch now marks deprecated: noise on every step.
    warnings.filterwarnings("ignore", message=r".*all_gather_tensor.* is deprecated", category=FutureWarning)
    config = ContextParallelConfig(ring_degree=layout.ring, ulysses_degree=layout.ulysses, mesh=mesh)
    with _at_least_one_accelerator():
        expert.enable_parallelism(config=config)

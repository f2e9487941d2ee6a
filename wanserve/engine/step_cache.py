"""Step caching (USE_ATTENTION_CACHE): skip transformer work on steps that change little.

All three policies are diffusers hooks on the transformer(s). They trade a little fidelity for
speed, so they are off by default and chosen per deployment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

POLICIES = ("first_block", "taylorseer", "pab")
# diffusers' default TaylorSeer patterns end in "attn" and so match none of Wan's modules
# (attn1, attn2, ffn): name them, or the cache silently does nothing.
WAN_TAYLORSEER_MODULES = [r"^blocks\.\d+\.attn1$", r"^blocks\.\d+\.attn2$", r"^blocks\.\d+\.ffn$"]


class CacheUnsupportedError(ValueError):
    """The step cache cannot run on this model or task."""


@dataclass(frozen=True)
class CacheOptions:
    policy: str = "first_block"
    threshold: float = 0.05
    interval: int = 5
    warmup_steps: int = 3
    taylor_order: int = 1
    pab_skip: int = 2
    pab_timestep_range: tuple[int, int] = (100, 800)


def cache_config(options: CacheOptions, dtype: torch.dtype, current_timestep: Callable[[], float]):
    from diffusers.hooks import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    if options.policy == "first_block":
        return FirstBlockCacheConfig(threshold=options.threshold)
    if options.policy == "taylorseer":
        return TaylorSeerCacheConfig(
            cache_interval=options.interval,
            disable_cache_before_step=options.warmup_steps,
            max_order=options.taylor_order,
            taylor_factors_dtype=dtype,
            cache_identifiers=WAN_TAYLORSEER_MODULES,
        )
    if options.policy == "pab":
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=options.pab_skip,
            spatial_attention_timestep_skip_range=tuple(options.pab_timestep_range),
            current_timestep_callback=current_timestep,
        )
    raise CacheUnsupportedError(f"unknown cache policy {options.policy!r}; choose one of {', '.join(POLICIES)}")


def enable_step_cache(
    experts: list[torch.nn.Module], options: CacheOptions, dtype: torch.dtype, current_timestep: Callable[[], float]
) -> None:
    """Hook the step cache into every expert (both of a two-expert Wan2.2 model)."""
    for expert in experts:
        expert.enable_cache(cache_config(options, dtype, current_timestep))


def reset_step_cache(experts: list[torch.nn.Module]) -> None:
    """Forget the previous request's cached activations."""
    for expert in experts:
        if getattr(expert, "is_cache_enabled", False):
            expert._reset_stateful_cache()


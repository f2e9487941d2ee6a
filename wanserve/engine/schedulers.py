"""The sampling solvers a request can choose, each a fresh flow-matching scheduler per run."""

from __future__ import annotations

from typing import Any

SOLVERS = ("unipc", "euler", "dpm++")


def make_scheduler(solver: str, shift: float, base_config: dict[str, Any]) -> Any:
    """A new scheduler (schedulers keep per-run state) for `solver` with flow shift `shift`.

    unipc is what the official Wan scripts default to; dpm++ is their 'dpm++' (2nd order
    multistep); euler is plain flow-matching Euler.
    """
    from diffusers import (
        DPMSolverMultistepScheduler,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    train_steps = int(base_config.get("num_train_timesteps", 1000))
    if solver == "unipc":
        config = {k: v for k, v in base_config.items() if not k.startswith("_")}
        if base_config.get("_class_name") != "UniPCMultistepScheduler":
            config = {}
        config.update(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                      num_train_timesteps=train_steps)
        return UniPCMultistepScheduler.from_config(config)
    if solver == "dpm++":
        return DPMSolverMultistepScheduler(
            num_train_timesteps=train_steps, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=shift, algorithm_type="dpmsolver++", solver_order=2,
        )
    if solver == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=train_steps, shift=shift)
    raise ValueError(f"unknown sample_solver {solver!r}; choose one of {', '.join(SOLVERS)}")

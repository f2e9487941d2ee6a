"""`wanserve make-tiny-model`: tiny random-weight Wan models for tests and demos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wanserve.cli.common import console, fail
from wanserve.variants import VARIANTS


def make_tiny_model(
    folder: Annotated[Path, typer.Argument(help="Empty or new folder to write (diffusers layout).")],
    variant: Annotated[str, typer.Option(help=f"One of: {', '.join(VARIANTS)}.")] = "wan2.1-t2v",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build a tiny random-weight model of VARIANT (offline, seconds). Its output is noise."""
    from wanserve.engine.tiny_model import make_tiny_model as build
    from wanserve.variants import ModelFolderError

    if variant not in VARIANTS:
        raise fail(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}", 2)
    try:
        build(folder, variant, seed=seed)
    except ModelFolderError as e:
        raise fail(str(e), 2) from None
    tasks = ", ".join(t.value for t in VARIANTS[variant].tasks)
    console.print(f"wrote {variant} (tasks: {tasks}; random weights) to {folder}")

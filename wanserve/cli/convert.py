"""`wanserve convert`: an official Wan checkpoint folder -> a diffusers-layout folder (once)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from wanserve.cli.common import console, fail


def convert(
    source: Annotated[Path, typer.Argument(help="Official Wan folder (as the Wan2.1 / Wan2.2 repos download it).")],
    destination: Annotated[Path, typer.Argument(help="New or empty folder to write in diffusers layout.")],
) -> None:
    """Write an official Wan checkpoint folder in diffusers layout (same weights, faster to load).

    MODEL_CKPT_DIR can point at either folder; both give the same videos."""
    from wanserve.engine.checkpoints.detect import inspect_official_folder
    from wanserve.variants import ModelFolderError

    try:
        layout = inspect_official_folder(source)
    except ModelFolderError as e:
        raise fail(str(e), 2) from None
    console.print(f"converting {layout.variant.name} ({layout.variant.notes}) from {source} ...")
    start = time.perf_counter()
    try:
        # torch, diffusers and transformers load only now: `wanserve --help` stays fast.
        from wanserve.engine.checkpoints.convert import convert_official_folder

        convert_official_folder(source, destination)
    except ModelFolderError as e:
        raise fail(str(e), 2) from None
    except OSError as e:
        raise fail(f"cannot write {destination}: {e}") from None
    console.print(f"wrote {destination} (diffusers layout) in {time.perf_counter() - start:.1f}s")

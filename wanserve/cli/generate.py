"""`wanserve generate`: one video from the command line, with a progress bar and stage timings."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from wanserve.cli.common import console, fail, settings_or_exit
from wanserve.request import GenerationRequest, RequestError
from wanserve.settings import Settings, SettingsError
from wanserve.variants import Task

if TYPE_CHECKING:
    from wanserve.engine.parallel_plan import ParallelPlan


def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What the video shows.")] = "",
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the mp4.")] = Path("out.mp4"),
    task: Annotated[Task | None, typer.Option(help="t2v | i2v | flf2v | v2v (default: from the inputs).")] = None,
    image: Annotated[Path | None, typer.Option(help="First-frame image (i2v, flf2v).")] = None,
    last_image: Annotated[Path | None, typer.Option(help="Last-frame image (flf2v).")] = None,
    video: Annotated[Path | None, typer.Option(help="Input video (v2v).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Default: the official Wan one.")] = None,
    size: Annotated[str, typer.Option(help="W*H or WxH, snapped to the model's grid.")] = "512*512",
    num_frames: Annotated[int, typer.Option(help="Snapped to 4n+1.")] = 41,
    steps: Annotated[int | None, typer.Option("--steps", "--infer-steps", help="Default: the model's.")] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="Default: the model's.")] = None,
    guidance_scale_2: Annotated[float | None, typer.Option(help="Low-noise expert (Wan2.2 A14B).")] = None,
    sample_shift: Annotated[float | None, typer.Option(help="Flow shift; default: the model's.")] = None,
    sample_solver: Annotated[str, typer.Option(help="unipc | euler | dpm++")] = "unipc",
    strength: Annotated[float, typer.Option(help="v2v: how much to change (0-1].")] = 0.8,
    seed: Annotated[int | None, typer.Option(help="Same seed, same video. Default: random.")] = None,
    fps: Annotated[int | None, typer.Option(help="Frames per second of the mp4.")] = None,
    resize_mode: Annotated[str, typer.Option(help="Fit input images: crop | pad | stretch.")] = "crop",
    model: Annotated[Path | None, typer.Option(help="Model folder (MODEL_CKPT_DIR); default: the demo.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cuda | npu | cpu (DEVICE).")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | bf16 | fp16 | fp32 (DTYPE).")] = None,
    t5_cpu: Annotated[bool | None, typer.Option("--t5-cpu/--no-t5-cpu", help="T5 on the CPU (T5_CPU).")] = None,
    vae_tiling: Annotated[bool | None, typer.Option("--vae-tiling/--no-vae-tiling", help="VAE_TILING.")] = None,
    attention_backend: Annotated[str | None, typer.Option(help="ATTENTION_BACKEND.")] = None,
    ulysses_size: Annotated[int | None, typer.Option(help="Ulysses (sequence) parallel ranks (ULYSSES_SIZE).")] = None,
    ring_size: Annotated[int | None, typer.Option(help="Ring attention ranks; needs a backend with LSE (RING_SIZE).")] = None,
    cfg_parallel: Annotated[int | None, typer.Option(help="2: guided and unguided passes on two ranks (CFG_PARALLEL).")] = None,
    dit_fsdp: Annotated[bool | None, typer.Option("--dit-fsdp/--no-dit-fsdp", help="Shard the transformer (DIT_FSDP).")] = None,
    t5_fsdp: Annotated[bool | None, typer.Option("--t5-fsdp/--no-t5-fsdp", help="Shard T5 (T5_FSDP).")] = None,
    vae_parallel: Annotated[bool | None, typer.Option("--vae-parallel/--no-vae-parallel", help="Split the decode (VAE_PARALLEL).")] = None,
    devices: Annotated[str | None, typer.Option(help="Device indices '0,1,2,3', or on a CPU a process count (DEVICES).")] = None,
) -> None:
    """Generate one video and write it (plus a .jpg thumbnail of the first frame).

    With a group size (ulysses x ring x cfg) above 1 the command starts one process per rank itself;
    under torchrun each process it starts is one rank."""
    settings = settings_or_exit(model_ckpt_dir=model, device=device, dtype=dtype, t5_cpu=t5_cpu,
                                vae_tiling=vae_tiling, attention_backend=attention_backend,
                                ulysses_size=ulysses_size, ring_size=ring_size, cfg_parallel=cfg_parallel,
                                dit_fsdp=dit_fsdp, t5_fsdp=t5_fsdp, vae_parallel=vae_parallel, devices=devices)
    try:
        request = GenerationRequest(
            task=task, prompt=prompt, negative_prompt=negative_prompt,
            image=str(image) if image else None, last_image=str(last_image) if last_image else None,
            video=str(video) if video else None, size=size, num_frames=num_frames, infer_steps=steps,
            guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2, sample_shift=sample_shift,
            sample_solver=sample_solver, strength=strength, seed=seed, fps=fps, resize_mode=resize_mode,
        )
    except ValueError as e:
        raise fail(str(e), 2) from None
    if settings.world_size is not None:  # started by torchrun: this process is one rank of the group
        code = run_rank(settings.rank or 0, settings.world_size, settings.master_addr, settings.master_port,
                        settings, request, output)
        raise typer.Exit(code)
    if settings.group_size > 1:
        raise typer.Exit(launch_group(settings, request, output))
    run_generation(settings, request, output)


def launch_group(settings: Settings, request: GenerationRequest, output: Path) -> int:
    """Start the ranks of one group, wait for them, return the exit code to report."""
    from wanserve.worker.launch import spawn_group

    try:
        group = spawn_group(_rank_process, (settings, request, output), settings.group_size, settings)
    except SettingsError as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    try:
        codes = group.join()
    except KeyboardInterrupt:
        group.kill()
        return 130
    if group.failure and (codes[0] or 0) <= 0:  # rank 0 did not report the reason itself
        console.print(f"[red]error:[/red] the group stopped: {group.failure}")
    for code in codes:  # rank 0's reason first: it is the one that printed it
        if code:
            return code if code > 0 else 1
    return 0


def _rank_process(rank: int, world_size: int, master_addr: str, master_port: int, settings: Settings,
                  request: GenerationRequest, output: Path) -> None:
    sys.exit(run_rank(rank, world_size, master_addr, master_port, settings, request, output))


def run_rank(rank: int, world_size: int, master_addr: str, master_port: int, settings: Settings,
             request: GenerationRequest, output: Path) -> int:
    """One rank of a group: join it, then run the request with the others (rank 0 writes)."""
    from wanserve.engine.distributed import init_rank, leave_process_group

    try:
        plan = init_rank(settings, rank, world_size, master_addr, master_port)
    except SettingsError as e:
        if rank == 0:
            console.print(f"[red]error:[/red] {e}")
        return 2
    try:
        run_generation(settings, request, output, plan)
        return 0
    except typer.Exit as e:
        return int(e.exit_code)
    finally:
        leave_process_group()


def run_generation(settings: Settings, request: GenerationRequest, output: Path,
                   plan: ParallelPlan | None = None) -> None:
    """Load, resolve, generate, write. In a group every rank runs this; rank 0 resolves the request,
    broadcasts it, reports progress and writes the video, the others only compute."""
    # Imported here: `wanserve --help` should not pay for torch.
    from wanserve import media
    from wanserve.engine.engine import WanEngine
    from wanserve.engine.errors import GenerationError
    from wanserve.engine.parallel_plan import SINGLE_PROCESS
    from wanserve.variants import ModelFolderError

    plan = plan or SINGLE_PROCESS
    leader = plan.is_leader

    def stop(message: str, code: int = 1) -> typer.Exit:
        if leader:
            return fail(message, code)
        return typer.Exit(code)

    with console.status("loading model...") if leader else contextlib.nullcontext():
        try:
            engine = WanEngine.from_settings(settings, plan=plan)
        except (ModelFolderError, GenerationError, OSError) as e:
            raise stop(f"cannot load the model: {e}") from None
    outcome: dict = {}
    if leader:
        try:
            outcome["request"] = engine.resolve(request)
        except RequestError as e:
            outcome["error"] = f"{e.field}: {e.message}"
    outcome = plan.broadcast_object(outcome)  # every rank runs what the leader resolved
    if "error" in outcome:
        raise stop(outcome["error"], 2)
    resolved = outcome["request"]
    if leader:
        for adj in resolved.adjustments:
            console.print(f"[yellow]note:[/yellow] {adj.field} {adj.requested} -> {adj.used}: {adj.reason}")
        where = engine.device_info.describe()
        if plan.world_size > 1:
            where += f" | group: {plan.describe()}"
        console.print(
            f"model [bold]{engine.model_label}[/bold] on {where} | {resolved.task.value} "
            f"{resolved.size} x {resolved.num_frames} frames, {resolved.infer_steps} steps, seed {resolved.seed}"
        )
    progress = Progress(
        TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console, transient=False,
        disable=not leader,
    )
    started: dict[str, float] = {}

    def on_step(step: int, total: int, stage: str) -> None:
        if stage == "denoise":
            started.setdefault("denoise", time.perf_counter() - 1e-9)
            per_step = (time.perf_counter() - started["denoise"]) / max(step, 1)
            progress.update(bar, completed=step, total=total, description=stage, rate=f"{per_step:.2f} s/step")
        else:
            progress.update(bar, description=stage, total=total)

    with progress:
        bar = progress.add_task("encode", total=resolved.infer_steps, rate="")
        try:
            result = engine.generate(resolved, on_step)
        except RequestError as e:
            raise stop(f"{e.field}: {e.message}", 2) from None
        except GenerationError as e:
            raise stop(e.message) from None
    if not leader:
        return
    write_start = time.perf_counter()
    try:
        size = media.write_mp4(result.frames, output, result.request.fps)
        media.write_thumbnail(result.frames[0], output.with_suffix(".jpg"))
    except OSError as e:
        raise fail(f"cannot write {output}: {e}") from None
    timings = {"load": engine.load_seconds, **result.timings, "write": time.perf_counter() - write_start}

    table = Table(title=f"{output} ({size / 1024:.0f} KiB)", show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in timings.items():
        table.add_row(stage, f"{seconds:.2f}")
    table.add_row("s/step", f"{result.seconds_per_step:.3f}")
    console.print(table)
    if engine.components.random_weights:
        console.print("[yellow]note:[/yellow] the demo model has random weights: its video is noise.")

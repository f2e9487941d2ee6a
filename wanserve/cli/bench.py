"""`wanserve bench`: the original benchmark client, against any server that speaks /submit + /status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from wanserve.cli.common import console, fail


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def bench(
    url: Annotated[Optional[str], typer.Option(help="Server URL (default: http://SERVER_HOST:SERVER_PORT).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="One request.")] = False,
    requests: Annotated[int, typer.Option("--requests", "-n", help="Requests to send.")] = 3,
    concurrent: Annotated[bool, typer.Option("--concurrent", help="Send from several users at once.")] = False,
    users: Annotated[int, typer.Option(help="Concurrent users with --concurrent.")] = 4,
    save: Annotated[Optional[Path], typer.Option(help="Write every request and the summary as JSON.")] = None,
    prompt: Annotated[str, typer.Option(help="Prompt of every request.")] = "A cat walks on the grass, realistic style.",
    image_url: Annotated[Optional[str], typer.Option(help="image_url of every request (i2v).")] = None,
    image_size: Annotated[str, typer.Option(help="W*H")] = "512*512",
    num_frames: Annotated[int, typer.Option()] = 41,
    infer_steps: Annotated[int, typer.Option()] = 30,
    guidance_scale: Annotated[float, typer.Option()] = 3.0,
    api_key: Annotated[Optional[str], typer.Option(help="Bearer key when the server has API_KEYS.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one request.")] = 1800.0,
) -> None:
    """Measure success rate, latency p50/p95/max, throughput and the server's time per stage."""
    from wanserve.cli.common import settings_or_exit
    from wanserve.ops.bench_client import BenchConfig, run_bench

    if requests < 1 or users < 1:
        raise fail("--requests and --users must be at least 1", 2)
    if url is None:
        settings = settings_or_exit()
        host = "127.0.0.1" if settings.server_host in ("0.0.0.0", "::") else settings.server_host
        url = f"http://{host}:{settings.server_port}"
    config = BenchConfig(
        url=url.rstrip("/"), requests=1 if quick else requests, users=users if concurrent else 1,
        prompt=prompt, image_url=image_url, image_size=image_size, num_frames=num_frames,
        infer_steps=infer_steps, guidance_scale=guidance_scale, api_key=api_key, timeout=timeout,
    )
    console.print(f"benchmarking {config.url}: {config.requests} request(s), {config.users} user(s), "
                  f"{image_size} x {num_frames} frames, {infer_steps} steps")

    def show(record) -> None:
        console.print(f"  request {record.index}: {record.status} {_fmt(record.latency_seconds)} s"
                      + (f" ({record.error})" if record.error else ""))

    result = run_bench(config, on_record=show)
    s = result["summary"]
    table = Table(title="summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("success rate", f"{s['completed']}/{s['requests']} ({100 * s['success_rate']:.0f}%)")
    table.add_row("latency p50 (s)", _fmt(s["latency_p50_s"]))
    table.add_row("latency p95 (s)", _fmt(s["latency_p95_s"]))
    table.add_row("latency max (s)", _fmt(s["latency_max_s"]))
    table.add_row("queue wait p50 (s)", _fmt(s["queue_wait_p50_s"]))
    table.add_row("throughput (videos/min)", _fmt(s["throughput_per_min"]))
    for stage, seconds in s["server_stage_mean_s"].items():
        table.add_row(f"server {stage} (s, mean)", _fmt(seconds))
    console.print(table)
    if save:
        save.write_text(json.dumps(result, indent=2))
        console.print(f"saved {save}")
    if s["completed"] < s["requests"]:
        raise typer.Exit(1)

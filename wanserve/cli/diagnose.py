"""`wanserve diagnose`: the original tools/diagnostic.py, with its flags."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from wanserve.cli.common import console

STYLE = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}


def diagnose(
    quick: Annotated[bool, typer.Option("--quick", help="Installation, settings, devices and model folder only.")] = False,
    health: Annotated[bool, typer.Option("--health", help="Check the running service's /health.")] = False,
    memory: Annotated[bool, typer.Option("--memory", help="Device memory and whether the model fits.")] = False,
    pipeline: Annotated[bool, typer.Option("--pipeline", help="Load the model and generate a tiny video.")] = False,
    url: Annotated[Optional[str], typer.Option(help="Service URL for --health (default: SERVER_HOST:SERVER_PORT).")] = None,
    api_key: Annotated[Optional[str], typer.Option(help="Bearer key for --health when API_KEYS is set.")] = None,
) -> None:
    """Check installation, hardware, settings, model folder, storage, queue, memory, pipeline, service.

    Without flags: every check except the pipeline run and the live service. Exits 1 on any failure.
    """
    from wanserve.ops.diagnostics import run_checks

    def show(check) -> None:
        console.print(f"{STYLE[check.status]} {check.name}: {check.detail}")

    results = run_checks(quick=quick, health=health, memory=memory, pipeline=pipeline, url=url,
                         api_key=api_key, on_check=show)
    table = Table(title="wanserve diagnose")
    table.add_column("check")
    table.add_column("result")
    table.add_column("what to do")
    for check in results:
        table.add_row(check.name, STYLE[check.status], check.fix)
    console.print(table)
    failures = [c for c in results if c.status == "fail"]
    warnings = [c for c in results if c.status == "warn"]
    console.print(f"{len(results)} checks: {len(failures)} failed, {len(warnings)} warnings")
    if failures:
        raise typer.Exit(1)

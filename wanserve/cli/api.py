"""`wanserve api`: the HTTP API alone, for machines that serve HTTP while `wanserve worker` runs the
models elsewhere (all sharing one DATABASE_URL and RESULTS_DIR)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wanserve.cli.common import settings_or_exit


def api(
    host: Annotated[str | None, typer.Option(help="SERVER_HOST to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="SERVER_PORT (default 8088).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="DATA_DIR (queue database, results).")] = None,
    database_url: Annotated[str | None, typer.Option(help="DATABASE_URL (PostgreSQL to share a queue).")] = None,
) -> None:
    """Run the HTTP API without worker groups (they run under `wanserve worker`)."""
    from wanserve.api.server import run_api

    settings = settings_or_exit(server_host=host, server_port=port, data_dir=data_dir, database_url=database_url)
    raise typer.Exit(run_api(settings))

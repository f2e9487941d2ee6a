"""Entry point of the `wanserve` command."""

from __future__ import annotations

import typer

from wanserve.cli.api import api
from wanserve.cli.bench import bench
from wanserve.cli.convert import convert
from wanserve.cli.diagnose import diagnose
from wanserve.cli.generate import generate
from wanserve.cli.models import make_tiny_model
from wanserve.cli.serve import serve, worker

app = typer.Typer(
    name="wanserve",
    help="Wan2.x video generation: a CLI and an HTTP service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("generate")(generate)
app.command("make-tiny-model")(make_tiny_model)
app.command("convert")(convert)
app.command("bench")(bench)
app.command("diagnose")(diagnose)
app.command("serve")(serve)
app.command("worker")(worker)
app.command("api")(api)


if __name__ == "__main__":
    app()

"""Helpers shared by the CLI commands: settings errors as clean exits, a console."""

from __future__ import annotations

import typer
from rich.console import Console

from wanserve.settings import Settings, SettingsError, load_settings

console = Console(stderr=True)


def settings_or_exit(**overrides: object) -> Settings:
    """Settings from the environment (and CLI overrides); a bad value exits 2 with its name."""
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> "typer.Exit":
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)

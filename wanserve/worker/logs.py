"""Log format shared by the supervisor and the group processes (one line per event, with who)."""

from __future__ import annotations

import logging


def configure_logging(level: str, who: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)-7s [{who}] %(name)s: %(message)s",
        force=True,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step is noise

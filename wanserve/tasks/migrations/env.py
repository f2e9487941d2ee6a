"""Alembic environment: runs on the connection that Database.migrate() passes in.

To write a new revision after changing schema.py:
    alembic -c /dev/null -x url=sqlite:///tmp/x.db ... (or copy versions/0001 and edit by hand)
"""

from __future__ import annotations

from alembic import context

from wanserve.tasks.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("wanserve migrations run through wanserve.tasks.database.Database.migrate()")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

"""Alembic's environment: migrations run on the connection kepmta.db.migrate hands over, inside
its transaction (and, on PostgreSQL, under its advisory lock)."""

from __future__ import annotations

from alembic import context

from kepmta.db.schema import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()

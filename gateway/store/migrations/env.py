"""Alembic environment: the store hands over its open connection (Store.upgrade), so
migrations run on the very database the gateway uses, SQLite or PostgreSQL."""

from __future__ import annotations

from alembic import context

from gateway.store._schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic migrations of the message store (run by Store.upgrade)."""

"""Listener fixtures: an empty store on each database backend (the store tests' own)."""

from tests.store.conftest import store, store_url

__all__ = ["store", "store_url"]

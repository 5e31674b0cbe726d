"""A partner's credential files replaced while the worker runs (token rotation): the
worker notices (gateway.datafiles.FileWatch over gateway.partners.credential_files)
and makes the partner's pooled client again, so the next request carries the new
credential, as after a partners.yaml change. The mTLS certificate and key:
tests/partners/test_mtls.py."""

from __future__ import annotations

import os
import random
from pathlib import Path

import respx

from gateway.delivery import Deliverer, Outbox
from gateway.partners import Auth, Partner

from .conftest import BASE, CONFIG, POST_URL, bundle, response


def _replace(path: Path, text: str) -> None:
    """Rotate ``path``: the new content written beside it and renamed over it, its time
    kept (``cp -p``, ``rsync -t``), the same length: only the file itself is new."""
    old = path.stat()
    new = path.with_suffix(".new")
    new.write_text(text, encoding="utf-8")
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(new, path)
    assert (path.stat().st_mtime_ns, path.stat().st_size) == (old.st_mtime_ns, old.st_size)


def test_a_bearer_token_file_replaced_is_used_from_the_next_request(
    outbox: Outbox, partner_api: respx.MockRouter, tmp_path: Path
) -> None:
    token_file = tmp_path / "hkpmc.token"
    token_file.write_text("token-2026-aaaa\n", encoding="utf-8")
    hkpmc = Partner("hkpmc", BASE, auth=Auth("bearer", token_file=token_file))
    post = partner_api.post(POST_URL).respond(200, json=response("201", "201"))
    with Deliverer(outbox, {"hkpmc": hkpmc}, CONFIG, rng=random.Random(3)) as deliverer:
        deliverer.reload_interval = 0  # look before every batch
        first = outbox.enqueue(hkpmc, bundle("P1", "O1"))[0]
        deliverer.run_once()
        before = deliverer._clients["hkpmc"]
        _replace(token_file, "token-2026-bbbb\n")
        second = outbox.enqueue(hkpmc, bundle("P2", "O2"))[0]
        deliverer.run_once()
        assert before.is_closed and deliverer._clients["hkpmc"] is not before
    assert outbox.require(first).state == outbox.require(second).state == "delivered"
    sent = [c.request.headers["Authorization"] for c in post.calls]
    assert sent == ["Bearer token-2026-aaaa", "Bearer token-2026-bbbb"]

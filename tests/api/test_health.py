"""/health/live and /health/ready: no token, nothing but the status of each check; ready
only when the store answers and each configured listener accepts connections."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import httpx
from fastapi import FastAPI

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.store import open_store


def _get(app: FastAPI, url: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            return await http.get(url)

    return asyncio.run(go())


def _app(settings: Settings, converter: Converter) -> FastAPI:
    return create_app(settings, converter, TokenSet(["t" * 24]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ready_when_the_store_answers(tmp_path: Path, converter: Converter) -> None:
    settings = Settings.load(home=tmp_path, env={})
    open_store(settings).close()  # gateway serve migrates before it serves
    app = _app(settings, converter)
    live = _get(app, "/health/live")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = _get(app, "/health/ready")
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ready", "checks": {"store": "ok"}},
    )


def test_not_ready_without_the_store_and_says_which(tmp_path: Path, converter: Converter) -> None:
    (tmp_path / "file").write_bytes(b"")  # a database under a file cannot be opened
    for url in (f"sqlite:///{tmp_path / 'file' / 'x.db'}", f"sqlite:///{tmp_path / 'empty.db'}"):
        settings = dataclasses.replace(Settings.load(home=tmp_path, env={}), database_url=url)
        ready = _get(_app(settings, converter), "/health/ready")
        assert ready.status_code == 503  # unreachable; reachable but never migrated
        assert ready.json() == {"status": "unavailable", "checks": {"store": "down"}}
        assert _get(_app(settings, converter), "/health/live").status_code == 200


def test_ready_follows_the_configured_listeners(tmp_path: Path, converter: Converter) -> None:
    mllp, dicom = _free_port(), _free_port()
    settings = dataclasses.replace(
        Settings.load(home=tmp_path, env={}), mllp_port=mllp, dicom_port=dicom
    )
    open_store(settings).close()
    down = _get(_app(settings, converter), "/health/ready")
    assert down.status_code == 503
    assert down.json()["checks"] == {"store": "ok", "mllp": "down", "dicom": "down"}
    with socket.create_server(("127.0.0.1", mllp)), socket.create_server(("127.0.0.1", dicom)):
        up = _get(_app(settings, converter), "/health/ready")
    assert up.status_code == 200
    assert up.json()["checks"] == {"store": "ok", "mllp": "ok", "dicom": "ok"}

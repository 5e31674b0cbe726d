"""Variants rendered in worker processes (the API's VariantPool): the same bytes as in
process, gateway errors as such, and a worker that dies is an error for its request
only."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import orjson
import pytest

from gateway import Settings
from gateway.errors import IntakeError, MappingError
from gateway.reports import VariantPool, WorkerCrash, variant_response

from .conftest import laian_bundle, long_report


@pytest.fixture(scope="module")
def pool(settings: Settings) -> Iterator[VariantPool]:
    pool = VariantPool(settings, workers=1)
    yield pool
    pool.shutdown()


def test_a_worker_renders_the_same_bytes(pool: VariantPool, settings: Settings) -> None:
    body = orjson.dumps(laian_bundle())
    for fmt in ("json", "html", "pdf"):
        here = variant_response(body, "zh-Hant-HK", None, fmt, settings=settings)
        assert asyncio.run(pool.render(body, "zh-Hant-HK", None, fmt)) == here


def test_gateway_errors_come_back_as_themselves(pool: VariantPool) -> None:
    with pytest.raises(IntakeError) as intake:
        asyncio.run(pool.render(b"{not json", "en"))
    assert intake.value.code == "intake.report-json"
    with pytest.raises(MappingError) as mapping:
        asyncio.run(pool.render(orjson.dumps(laian_bundle()), "fr"))
    assert mapping.value.code == "mapping.report-language"
    assert mapping.value.location == "lang"


def test_a_worker_that_dies_fails_its_render_only(pool: VariantPool) -> None:
    async def killed_mid_render() -> None:
        render = asyncio.ensure_future(pool.render(orjson.dumps(long_report()), "bilingual"))
        while pool.busy == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        executor = pool._executor()
        for pid in list(executor._processes):  # the worker rendering
            os.kill(pid, signal.SIGKILL)
        await render

    started = time.monotonic()
    with pytest.raises(WorkerCrash):
        asyncio.run(killed_mid_render())
    assert time.monotonic() - started < 30
    # a fresh worker serves the next request
    out = asyncio.run(pool.render(orjson.dumps(laian_bundle()), "zh-Hans", None, "html"))
    assert out[0] == 200 and out[2].startswith(b"<!DOCTYPE html>")

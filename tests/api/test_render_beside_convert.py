"""Issues 8 and 19: report variants render outside the conversion lock, so a long render
never delays /convert (done when /convert answers a small HL7 v2 message in under
200 ms while a 59,000-character report renders)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from tests.api.live import live_server
from tests.api.test_app import TOKEN
from tests.reports.conftest import laian_bundle, long_report

REPO = Path(__file__).resolve().parents[2]
REFERRAL = (REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7").read_bytes()
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HL7 = {**BEARER, "Content-Type": "x-application/hl7-v2+er7"}


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as http:
        return http.post(path, content=body, headers=headers)


def test_convert_answers_in_200_ms_while_a_long_report_renders(
    settings: Settings, converter: Converter
) -> None:
    app = create_app(settings, converter, TokenSet([TOKEN]))
    small = orjson.dumps(laian_bundle())
    big = orjson.dumps(long_report())
    with live_server(app, settings) as port, ThreadPoolExecutor(3) as pool:
        # Start both report workers (a worker loads terminology and fonts once), and
        # convert once, so what is timed below is the steady state.
        workers = app.state.reports.workers
        warm = [
            pool.submit(_post, port, "/report/variants?lang=zh-Hans", small, BEARER)
            for _ in range(workers)
        ]
        assert [f.result().status_code for f in warm] == [200] * workers
        assert _post(port, "/convert", REFERRAL, HL7).status_code == 200

        rendering = pool.submit(_post, port, "/report/variants?lang=bilingual", big, BEARER)
        deadline = time.monotonic() + 30
        while app.state.reports.busy == 0:  # the render has reached a worker
            assert time.monotonic() < deadline and not rendering.done()
            time.sleep(0.01)
        time.sleep(1.0)  # well into it: the render takes several seconds

        timings = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for _ in range(5):
                started = time.perf_counter()
                resp = http.post("/convert", content=REFERRAL, headers=HL7)
                timings.append(time.perf_counter() - started)
                assert resp.status_code == 200
        assert not rendering.done(), "the render ended before /convert was timed"
        assert rendering.result().status_code == 200
    assert max(timings) < 0.2, [round(t, 3) for t in timings]

"""Regenerate the console screenshots in docs/console/ (dashboard and a message detail in
zh-Hans, zh-Hant-HK and en), in the same headless Chromium the browser tests use
(Debian's /usr/bin/chromium through Playwright's executable_path; no download).

    .venv/bin/python docs/console/screenshots.py [--out docs/console]

What it does: starts the partner server (../shared/partner-fhir, on a free port; its
``start`` installs it the first time), makes a throw-away GATEWAY_HOME whose partners
njmu2 and hkpmc point at it, sends the demo referrals and orders (examples/hl7v2) with
``gateway send``, stores the Lai'an referral failed (its mapping switched off, as the
tests do), imports the Nansha patient's consent, starts ``gateway serve``, signs in
as an operator and takes full-page screenshots once the deliveries settled. Every
record is the demo network's made-up data; the network is off but loopback.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gateway import Converter, Settings  # noqa: E402
from gateway.console import LANGS, Users  # noqa: E402
from gateway.processing import process_message  # noqa: E402
from gateway.store import Incoming, open_store  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PARTNER = Path(os.environ.get("PARTNER_FHIR_DIR") or REPO.parent / "shared" / "partner-fhir")
REF = REPO / "mappings" / "hl7v2" / "messages" / "REF.yaml"
HL7 = REPO / "examples" / "hl7v2"
SENT = ["ref_i12_nsch_to_hkpmc.hl7", "ref_i12_hkpmc_to_nsch.hl7", "orm_o01_lax2_ct.hl7",
        "omi_o23_nsch_ct.hl7", "ref_i12_nsgp_to_nsch.hl7"]  # fmt: skip
DETAIL = "NSCH20260618143000017"  # Nansha → Hong Kong: policy decision, delivery
PASSWORD = "screenshots only 0123"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gateway(home: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "gateway", "--home", str(home), *args], check=True,
                   capture_output=True)  # fmt: skip


def _consent(path: Path) -> None:
    path.write_bytes(orjson.dumps({
        "resourceType": "Consent", "id": "consent-screenshots", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": "https://fhir-gateway.example.org/sid/hkid",
                                   "value": "K583726A"}},
        "dateTime": "2026-06-01",
        "provision": {"type": "permit", "period": {"start": "2026-01-01", "end": "2099-12-31"},
                      "actor": [{"role": {"coding": [{
                          "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                          "code": "IRCP"}]},
                          "reference": {"identifier": {
                              "system": "https://fhir-gateway.example.org/sid/institution",
                              "value": "HKPMC"}}}],
                      "purpose": [{"system": "https://fhir-gateway.example.org/CodeSystem/"
                                   "transfer-purpose", "code": "referral"}]},
    }))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "console")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="console-shots-"))
    partner_port, port = _port(), _port()
    partner_env = {**os.environ, "PARTNER_FHIR_PORT": str(partner_port),
                   "PARTNER_FHIR_CONDITIONAL_REFS": "strict", "PARTNER_FHIR_TRANSACTIONS": "on",
                   "PARTNER_FHIR_FAIL": "none"}  # fmt: skip
    subprocess.run([str(PARTNER / "start")], env=partner_env, check=True, capture_output=True)
    serve = None
    try:
        mappings = root / "mappings"
        shutil.copytree(REPO / "mappings", mappings)
        home = root / "home"
        home.mkdir()
        (home / "gateway.toml").write_text(f'mappings = "{mappings}"\n', encoding="utf-8")
        settings = Settings.load(home=home, env={})
        base = f"http://127.0.0.1:{partner_port}/fhir/R4"
        for key in ("njmu2", "hkpmc"):
            _gateway(home, "partners", "set", key, "--url", base, "--max-entries", "8")
        _consent(root / "consent.json")
        _gateway(home, "consent", "import", str(root / "consent.json"))
        for name in SENT:
            _gateway(home, "send", str(HL7 / name))
        # the Lai'an referral, failed under a broken mapping (what an operator would see)
        text = REF.read_text(encoding="utf-8")
        target = mappings / "hl7v2" / "messages" / "REF.yaml"
        target.write_text(text.replace("messages: [REF^I12, REF^I14]", "messages: [REF^I14]"))
        store = open_store(settings)
        try:
            raw = (HL7 / "ref_i12_lax2_to_njmu2.hl7").read_bytes()
            failed = store.receive(Incoming(raw, "mllp", peer="10.0.0.7:5000")).id
            process_message(store, Converter(settings), failed)
            Users(store).add("operator", "operator", PASSWORD)
        finally:
            store.close()
        shutil.copyfile(REF, target)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_HOME=str(home), GATEWAY_DELIVERY_POLL_SECONDS="0.1")
        serve = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--home", str(home), "serve", "--port", str(port)],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        time.sleep(8)  # the outbound path and the worker deliver what was queued
        shoot(url, args.out, root)
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(30)
        subprocess.run([str(PARTNER / "stop")], env=partner_env, check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _fonts(folder: Path) -> dict[str, str]:
    """Chromium's environment with a fontconfig file that adds the Noto Sans CJK
    collection the gateway installs (the PDF font): a build machine may have no CJK
    font, a Chinese-reading operator's workstation always has one."""
    from gateway.reports import font_path

    conf = folder / "fonts.conf"
    conf.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "fonts.dtd">\n<fontconfig>\n'
        '  <include ignore_missing="yes">/etc/fonts/fonts.conf</include>\n'
        f"  <dir>{font_path().parent}</dir>\n  <cachedir>{folder / 'fc-cache'}</cachedir>\n"
        "</fontconfig>\n",
        encoding="utf-8",
    )
    return {**os.environ, "FONTCONFIG_FILE": str(conf)}


def shoot(url: str, out: Path, work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"],
                                     env=_fonts(work))  # fmt: skip
        tab = browser.new_page(viewport={"width": 1360, "height": 900})
        tab.goto(f"{url}/console/login")
        tab.fill("#name", "operator")
        tab.fill("#password", PASSWORD)
        tab.click("#signin")
        tab.wait_for_url(re.compile(r".*/dashboard$"))
        tab.goto(f"{url}/console/messages")
        tab.fill("#control_id", DETAIL)
        tab.click("#find")
        tab.wait_for_url(re.compile(r".*\?q=.*"))
        detail = tab.locator("#results a", has_text=DETAIL).first.get_attribute("href")
        for lang in LANGS:
            tab.goto(f"{url}/console/dashboard")
            tab.select_option("#lang", lang)
            tab.wait_for_function(f"document.documentElement.lang === {lang!r}")
            tab.screenshot(path=str(out / f"dashboard.{lang}.png"), full_page=True)
            tab.goto(f"{url}{detail}")
            tab.screenshot(path=str(out / f"message.{lang}.png"), full_page=True)
            print(f"wrote {out}/dashboard.{lang}.png, message.{lang}.png")
        browser.close()


if __name__ == "__main__":
    raise SystemExit(main())

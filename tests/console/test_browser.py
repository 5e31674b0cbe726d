"""The console in real headless Chromium (Debian's /usr/bin/chromium through Playwright's
executable_path; no browser download) against a real ``gateway serve`` subprocess and the
partner server (../shared/partner-fhir, strict mode), network off but loopback:

- an operator finds a failed referral by control id, sees the field that failed,
  reprocesses it after the mapping fix, and sees it delivered at the partner server;
- a referral held for the patient's consent is released after the consent is imported;
- the pages in zh-Hant-HK and en show no untranslated label;
- an auditor has no reprocess button and a POST of it is refused (403);
- a POST without the CSRF token is refused (403).
Waits poll with a deadline; nothing is asserted on time."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import orjson
import pytest
from playwright.sync_api import Page

from gateway import Converter, Settings
from gateway.console import LANGS, Users, labels
from gateway.processing import process_message
from gateway.store import Incoming, open_store
from tests._browser import browsers, free_port, needs_chromium
from tests.conftest import REPO
from tests.gateway_cli import run
from tests.partner.conftest import (
    PartnerServer,
    partner,  # noqa: F401  (the real partner server)
)
from tests.policy.conftest import HKID, consent
from tests.store.browse import GB18030_REF, REF

from .conftest import PASSWORD

FAILED_CONTROL = "LAX220260611101500003"  # the GB 18030 referral Lai'an → Nanjing
HELD_REFERRAL = REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7"
HELD_CONTROL = "NSCH20260618143000017"
DEADLINE = 90.0
SERVE_ENV = {
    "GATEWAY_DELIVERY_POLL_SECONDS": "0.1",
    # no sweep during the tests: the held referral waits for the operator's release
    "GATEWAY_DELIVERY_SWEEP_SECONDS": "3600",
    "GATEWAY_DELIVERY_BACKOFF_BASE": "0.2",
    "GATEWAY_DELIVERY_BACKOFF_CAP": "1",
    "GATEWAY_DELIVERY_MAX_ATTEMPTS": "50",
    "GATEWAY_DELIVERY_READ_TIMEOUT": "30",
    "GATEWAY_LOG_LEVEL": "info",
}
HAN = re.compile(r"[\u3400-\u9fff]")
T = TypeVar("T")

pytestmark = needs_chromium


def until(probe: Callable[[], T | None], what: str, log: Path | None = None) -> T:
    end = time.monotonic() + DEADLINE
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > end:
            said = log.read_text("utf-8", "replace")[-4000:] if log else ""
            pytest.fail(f"not seen within {DEADLINE:.0f} s: {what}\n{said}")
        time.sleep(0.3)


@dataclass
class Gateway:
    home: Path
    settings: Settings
    base: str
    process: subprocess.Popen[bytes]
    partner: PartnerServer

    @property
    def log(self) -> Path:
        return self.home / "serve.log"

    def cli(self, *args: str) -> str:
        done = run(*args, home=self.home)
        assert done.returncode == 0, (args, done.stdout.decode(), done.stderr.decode())
        return done.stdout.decode()

    def fix_mapping(self) -> None:
        shutil.copyfile(REF, self.settings.mappings / "hl7v2" / "messages" / "REF.yaml")


def _broken_home(root: Path) -> Settings:
    """A home whose REF^I12 mapping is switched off (the bug the operator fixes)."""
    mappings = root / "mappings"
    shutil.copytree(REPO / "mappings", mappings)
    text = REF.read_text(encoding="utf-8")
    broken = text.replace("messages: [REF^I12, REF^I14]", "messages: [REF^I14]")
    assert broken != text
    (mappings / "hl7v2" / "messages" / "REF.yaml").write_text(broken, encoding="utf-8")
    home = root / "home"
    (home / "secrets").mkdir(parents=True)
    (home / "secrets" / "api-tokens").write_text("console-browser-token-0123456789\n")
    (home / "secrets" / "api-tokens").chmod(0o600)  # a readable token file is refused
    (home / "gateway.toml").write_text(f'mappings = "{mappings}"\n', encoding="utf-8")
    return Settings.load(home=home, env={})


@pytest.fixture(scope="module")
def gw(
    partner: PartnerServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    partner.reset()
    root = tmp_path_factory.mktemp("console")
    settings = _broken_home(root)
    store = open_store(settings)
    try:
        received = store.receive(Incoming(GB18030_REF, "mllp", peer="10.0.0.7:5000"))
        assert process_message(store, Converter(settings), received.id).state == "failed"
        users = Users(store)
        users.add("olivia", "operator", PASSWORD)
        users.add("audrey", "auditor", PASSWORD, lang="en")
    finally:
        store.close()
    for key in ("njmu2", "hkpmc"):  # both go to the partner server
        done = run("partners", "set", key, "--url", partner.base, "--max-entries", "8",
                   home=settings.home)  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(SERVE_ENV, GATEWAY_HOME=str(settings.home))
    code = (
        "import sys\nfrom gateway.cli import main\n"
        f"sys.exit(main(['--home', {str(settings.home)!r}, 'serve', '--port', '{port}']))\n"
    )
    with (settings.home / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=REPO, stdout=log, stderr=log
        )
    gateway = Gateway(settings.home, settings, f"http://127.0.0.1:{port}", process, partner)

    def up() -> bool:
        assert process.poll() is None, gateway.log.read_text("utf-8", "replace")
        try:
            return httpx.get(f"{gateway.base}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    until(up, "gateway serve listening", gateway.log)
    try:
        yield gateway
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Callable[[], Page]]:
    """New browsers (each a fresh profile: its own cookies); requests off loopback are
    refused and counted (there must be none)."""
    with browsers(tmp_path) as (new, outside):
        yield new
    assert outside == []


def sign_in(tab: Page, gw: Gateway, name: str) -> None:
    tab.goto(f"{gw.base}/console/login")
    tab.fill("#name", name)
    tab.fill("#password", PASSWORD)
    tab.click("#signin")
    tab.wait_for_url(re.compile(r".*/console/dashboard$"))


def find(tab: Page, gw: Gateway, control_id: str) -> None:
    """Search by control id and open the one message found."""
    tab.goto(f"{gw.base}/console/messages")
    tab.fill("#control_id", control_id)
    tab.click("#find")
    tab.wait_for_url(re.compile(r".*/console/messages\?q=.*"))
    assert control_id not in tab.url  # searches are POSTs; the URL holds an opaque id
    links = tab.locator("#results a", has_text=control_id)
    assert links.count() == 1
    links.first.click()
    tab.wait_for_url(re.compile(r".*/console/messages/\d+(\?.*)?$"))


def act(tab: Page, action: str, reason: str, within: str = "") -> None:
    form = tab.locator(f"{within} form[data-action='{action}']".strip())
    assert form.count() == 1, f"no {action} button"
    form.locator("input[name=reason]").fill(reason)
    form.locator("button").click()
    tab.wait_for_url(re.compile(rf".*/console/messages/\d+\?done={action}$"))


def _state_becomes(tab: Page, wanted: str) -> Callable[[], bool]:
    def probe() -> bool:
        tab.reload()
        return tab.get_attribute("#deliveries article", "data-state") == wanted

    return probe


def test_operator_finds_the_failure_reprocesses_after_the_fix_and_it_is_delivered(
    gw: Gateway, browser: Callable[[], Page]
) -> None:
    tab = browser()
    sign_in(tab, gw, "olivia")
    find(tab, gw, FAILED_CONTROL)
    assert "失败" in tab.inner_text("#state")
    field = tab.locator("#stages article.current td.field").first.inner_text()
    assert field.startswith("MSH-9")  # the field that failed
    assert "mapping.unsupported-message" in tab.inner_text("#stages article.current")
    assert tab.inner_text("#codec") == "gb18030"
    assert "神经内科" in tab.inner_text("#original")  # decoded in its own charset

    gw.fix_mapping()
    act(tab, "reprocess", "REF^I12 mapping restored")
    until(_state_becomes(tab, "delivered"), "the referral delivered", gw.log)
    assert "已送达" in tab.inner_text("#deliveries")
    found = gw.partner.search(
        "ServiceRequest?identifier=https://fhir.lax2.example.cn/sid/referral|REF20260611001"
    )
    assert len(found) == 1  # at ../shared/partner-fhir


def test_a_referral_held_for_consent_is_released_after_the_consent(
    gw: Gateway, browser: Callable[[], Page], tmp_path: Path
) -> None:
    gw.fix_mapping()
    gw.cli("send", str(HELD_REFERRAL))  # Nansha → Hong Kong: no consent yet, held
    tab = browser()
    sign_in(tab, gw, "olivia")
    find(tab, gw, HELD_CONTROL)
    assert tab.get_attribute("#deliveries article", "data-state") == "held"
    assert "policy.held" in tab.inner_text("#deliveries")
    given = tmp_path / "consent.json"
    given.write_bytes(
        orjson.dumps(consent((HKID, "K583726A"), "HKPMC", start="2026-01-01", end="2099-12-31"))
    )
    gw.cli("consent", "import", str(given))
    tab.reload()
    # still held: the serve loop's sweep (delivery_sweep_seconds) is not due in this test
    assert tab.get_attribute("#deliveries article", "data-state") == "held"
    act(tab, "release", "consent received on paper, imported", "#deliveries")
    assert "consent received on paper, imported" in tab.inner_text("#actions")
    until(_state_becomes(tab, "delivered"), "the released referral delivered", gw.log)
    found = gw.partner.search(
        "ServiceRequest?identifier=https://fhir.nsch.example.cn/sid/referral|REF20260618001"
    )
    assert len(found) == 1


def _no_untranslated(tab: Page, lang: str) -> None:
    text = tab.inner_text("body")
    assert "⟦" not in text, "an untranslated label key"
    if lang == "en":
        assert not HAN.findall(text), "Chinese on an English page"
    else:
        others = {str(t["zh-Hans"]) for t in labels().values() if t["zh-Hans"] != t[lang]}
        shown = sorted(o for o in others if o in text)
        assert shown == [], f"Simplified Chinese labels on the {lang} page"


def test_language_switch_shows_no_untranslated_label(
    gw: Gateway, browser: Callable[[], Page]
) -> None:
    tab = browser()
    sign_in(tab, gw, "olivia")
    for lang in ("zh-Hant-HK", "en"):
        tab.select_option("#lang", lang)  # the page switches as soon as it is picked
        tab.wait_for_function(f"document.documentElement.lang === {lang!r}")
        assert tab.get_attribute("html", "lang") == lang
        for path in ("/console/dashboard", "/console/messages", "/console/referrals",
                     "/console/alerts"):  # fmt: skip
            tab.goto(gw.base + path)
            _no_untranslated(tab, lang)
    # remembered for the user: a new browser signs in to English
    other = browser()
    sign_in(other, gw, "olivia")
    assert other.get_attribute("html", "lang") == "en"
    tab.select_option("#lang", "zh-Hans")
    tab.wait_for_function("document.documentElement.lang === 'zh-Hans'")
    assert set(LANGS) == {"zh-Hans", "zh-Hant-HK", "en"}


def test_an_auditor_cannot_reprocess(gw: Gateway, browser: Callable[[], Page]) -> None:
    tab = browser()
    sign_in(tab, gw, "audrey")
    find(tab, gw, FAILED_CONTROL)
    assert tab.locator("form[data-action='reprocess']").count() == 0
    assert tab.locator("button", has_text="Reprocess").count() == 0
    csrf = tab.get_attribute("form[action$='/logout'] input[name=csrf]", "value")
    status = tab.evaluate(
        """async (csrf) => {
            const body = new URLSearchParams({csrf, reason: "try"});
            const r = await fetch(location.pathname + "/reprocess", {method: "POST", body});
            return r.status;
        }""",
        csrf,
    )
    assert status == 403


def test_a_post_without_the_csrf_token_is_refused(gw: Gateway, browser: Callable[[], Page]) -> None:
    tab = browser()
    sign_in(tab, gw, "olivia")
    find(tab, gw, FAILED_CONTROL)
    status = tab.evaluate(
        """async () => {
            const body = new URLSearchParams({reason: "no token"});
            const r = await fetch(location.pathname + "/reprocess", {method: "POST", body});
            return r.status;
        }"""
    )
    assert status == 403
    tab.evaluate(
        """() => {
            document.querySelector("form[data-action='reprocess'] input[name=csrf]").remove();
        }"""
    )
    form = tab.locator("form[data-action='reprocess']")
    form.locator("input[name=reason]").fill("no token")
    form.locator("button").click()
    tab.wait_for_load_state()
    assert "请求无效" in tab.inner_text("main")

"""Every console label exists in zh-Hans, zh-Hant-HK and en, and every key a template
uses (directly, or built from a state, role, language, action or breaker name) is one."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.console import LANGS, ROLES, labels, translate
from gateway.console._actions import MESSAGE_ACTIONS, OUTBOX_ACTIONS
from gateway.delivery import STATES as OUTBOX_STATES
from gateway.store import STATES

TEMPLATES = Path(__file__).resolve().parents[2] / "gateway" / "console" / "templates"
HAN = re.compile(r"[\u3400-\u9fff]")


def test_every_label_has_all_three_languages() -> None:
    found = labels()
    assert len(found) > 100
    missing = {key: sorted(set(LANGS) - set(texts)) for key, texts in found.items()}
    assert {k: v for k, v in missing.items() if v} == {}
    for key, texts in found.items():
        assert all(str(texts[lang]).strip() for lang in LANGS), key
        assert not HAN.search(str(texts["en"])), f"{key}: Chinese in the English label"
        assert HAN.search(str(texts["zh-Hans"])) or texts["zh-Hans"] == texts["en"], key


def test_every_key_the_templates_use_exists() -> None:
    used = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"t\('([a-z_]+\.[A-Za-z_-]+)'\)", template.read_text("utf-8")))
    built = (
        {f"state.{s}" for s in (*STATES, *OUTBOX_STATES)}
        | {f"role.{r}" for r in ROLES}
        | {f"lang.{lang}" for lang in LANGS}
        | {f"action.{a}" for a in (*MESSAGE_ACTIONS, *OUTBOX_ACTIONS)}
        | {f"breaker.{b}" for b in ("closed", "open", "half-open", "unknown")}
        | {f"dash.{c}" for c in ("received", "queued", "converted", "failed", "held")}
        | {f"ref.{d}" for d in ("received", "sent")}
        | {"login.failed", "login.limited", "app.forbidden", "app.bad_request"}
    )
    assert len(used) > 80
    assert sorted((used | built) - set(labels())) == []


def test_a_missing_key_shows_marked() -> None:
    assert translate("en", "nav.dashboard") == "Dashboard"
    assert translate("zh-Hant-HK", "nav.messages") == "訊息"
    assert translate("en", "no.such-key") == "⟦no.such-key⟧"

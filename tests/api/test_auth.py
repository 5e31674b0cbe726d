"""API token roles (gateway/api/_auth.py): ``TOKEN [ROLE [NAME [INSTITUTION]]]`` per
line; a line without a role is an operator (the rights tokens had before roles: no audit
log); a bad role refuses the file without quoting the token; a token's name in the audit
trail is its line's, else a fingerprint, never the token; an institution is a network
key written exactly (what STOW-RS lets it send: tests/listeners/test_dicom_sender.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Settings
from gateway.api import load_tokens
from gateway.api._auth import AccessDenied, TokenSet, fingerprint, permission_for
from gateway.errors import ConfigError

OLD = "old-token-0123456789abcdef"
AUD = "aud-token-0123456789abcdef"


def settings_with(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    (tmp_path / "gateway.toml").write_text(f'api_token_file = "{path}"\n')
    return Settings.load(home=tmp_path, env={})


def test_a_token_file_of_before_roles_keeps_its_rights(tmp_path: Path) -> None:
    tokens = load_tokens(settings_with(tmp_path, f"# ours\n{OLD}\n\n"))
    who = tokens.authorize(f"Bearer {OLD}", "/messages")
    assert (who.role, who.name) == ("operator", fingerprint(OLD))
    assert OLD not in who.name and who.name.startswith("token-")
    for path in ("/convert", "/fhir/Patient", "/Consent", "/messages/1/$reprocess"):
        assert tokens.authorize(f"Bearer {OLD}", path).role == "operator"
    with pytest.raises(AccessDenied) as denied:
        tokens.authorize(f"Bearer {OLD}", "/fhir/AuditEvent")
    assert denied.value.status == 403 and denied.value.issue.code == "security.forbidden"


def test_roles_and_names(tmp_path: Path) -> None:
    tokens = load_tokens(settings_with(tmp_path, f"{OLD} admin\n{AUD}\tauditor  合规-hk\n"))
    assert tokens.authorize(f"Bearer {AUD}", "/fhir/AuditEvent/x").name == "合规-hk"
    assert tokens.authorize(f"bearer {OLD}", "/fhir/AuditEvent").role == "admin"
    assert tokens.authorize(f"Bearer {OLD}", "/messages").role == "admin"
    with pytest.raises(AccessDenied) as denied:
        tokens.authorize(f"Bearer {AUD}", "/fhir/AuditEventX")  # not the audit log
    assert denied.value.status == 403
    for header in ("", f"Basic {AUD}", f"Bearer {AUD[:-1]}", AUD):
        with pytest.raises(AccessDenied) as denied:
            tokens.authorize(header, "/fhir/AuditEvent")
        assert denied.value.status == 401 and denied.value.headers == {"WWW-Authenticate": "Bearer"}
    assert permission_for("/fhir/AuditEvent") == permission_for("/fhir/AuditEvent/1") == "audit"


@pytest.mark.parametrize("line", [f"{OLD} superuser", f"{OLD} auditor name extra", f"{OLD} {AUD}"])
def test_a_bad_role_refuses_the_file_without_quoting_tokens(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError) as bad:
        load_tokens(settings_with(tmp_path, f"# ok\n{AUD} auditor\n{line}\n"))
    assert bad.value.code == "config.bad-token-role"
    assert "line 3" in bad.value.issue.message
    assert OLD not in str(bad.value.issue.message) and AUD not in str(bad.value.issue.message)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o601], ids=oct)
def test_a_token_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    """errors.yaml said "not private" refuses the file; nothing checked its mode (a
    token file left 0644 let anyone on the host call the API, or read the audit log)."""
    settings = settings_with(tmp_path, f"{OLD} admin\n")
    (tmp_path / "tokens").chmod(mode)
    with pytest.raises(ConfigError) as refused:
        load_tokens(settings)
    assert refused.value.code == "config.no-tokens"
    message = str(refused.value.issue.message)
    assert message == f"{tmp_path / 'tokens'}: the API token file must be private (chmod 600)"
    assert OLD not in message
    (tmp_path / "tokens").chmod(0o400)  # owner-only, read-only: private enough
    assert load_tokens(settings).check(OLD)


def test_token_sets_in_code_take_the_same_lines() -> None:
    tokens = TokenSet([OLD, f"{AUD} auditor"])
    assert tokens.check(OLD) and tokens.check(AUD) and not tokens.check("nope")
    assert tokens.identify(AUD) is not None and tokens.identify(OLD) is not None
    with pytest.raises(ConfigError):
        TokenSet(["# only a comment", ""])


def test_a_token_bound_to_an_institution(tmp_path: Path) -> None:
    text = f"{OLD} operator pacs-hkpmc hkpmc\n{AUD} auditor 合规-hk\n"
    tokens = load_tokens(settings_with(tmp_path, text))
    bound = tokens.authorize(f"Bearer {OLD}", "/dicomweb/studies")
    assert (bound.role, bound.name, bound.institution) == ("operator", "pacs-hkpmc", "hkpmc")
    assert tokens.authorize(f"Bearer {AUD}", "/fhir/AuditEvent").institution is None


@pytest.mark.parametrize(
    ("institution", "problem"),
    [
        ("HKPMC", "'HKPMC' is not exactly an institution key: it folds to 'hkpmc', the key"),
        ("ｈｋｐｍｃ", "is not exactly an institution key: it folds to 'hkpmc'"),
        ("香港合作醫療中心", "'香港合作醫療中心' is not exactly an institution key"),
        ("hkpmc extra", "found 4 word(s) after the token"),
    ],
)
def test_a_token_bound_to_no_exact_institution_refuses_the_file(
    tmp_path: Path, institution: str, problem: str
) -> None:
    """As partner token lines (inbound_token_file): the key as the network file writes
    it, so that whoever reviews the file reads which institution a token stands for."""
    with pytest.raises(ConfigError) as bad:
        load_tokens(settings_with(tmp_path, f"{OLD} operator pacs {institution}\n"))
    assert bad.value.code == "config.bad-token-role"
    assert "line 1" in bad.value.issue.message and problem in bad.value.issue.message
    assert OLD not in bad.value.issue.message


@pytest.mark.parametrize("path", ["/convert", "/messages", "/messages/7/$reprocess", "/policy"])
def test_a_bound_token_may_use_only_stow_rs(tmp_path: Path, path: str) -> None:
    """A PACS's token: its studies are checked against its institution on STOW-RS only,
    so it may not convert, reprocess or read the messages of every institution."""
    tokens = load_tokens(settings_with(tmp_path, f"{OLD} operator pacs-hkpmc hkpmc\n"))
    assert tokens.authorize(f"Bearer {OLD}", "/dicomweb/studies/1.2/$commit").name == "pacs-hkpmc"
    with pytest.raises(AccessDenied) as denied:
        tokens.authorize(f"Bearer {OLD}", path)
    assert denied.value.status == 403 and denied.value.issue.code == "security.forbidden"
    assert "bound to institution hkpmc" in denied.value.issue.message

"""``gateway users add|list|passwd|disable``: argon2id hashes, roles, sessions ended by a
new password or disabling; refused roles and short passwords."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway import Settings
from gateway.cli import main
from gateway.console import Users, users
from gateway.console._session import Sessions
from gateway.store import open_store


def _run(home: Path, monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["--home", str(home), "users", *args])


def test_users_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("GATEWAY_HOME", raising=False)
    pw = "a long enough password\n"
    assert (
        _run(home, monkeypatch, "add", "wang", "--role", "operator", "--password-stdin", stdin=pw)
        == 0
    )
    assert (
        _run(
            home,
            monkeypatch,
            "add",
            "lee",
            "--role",
            "auditor",
            "--lang",
            "zh-Hant-HK",
            "--password-stdin",
            stdin=pw,
        )
        == 0
    )
    assert (
        _run(
            home, monkeypatch, "add", "x", "--role", "operator", "--password-stdin", stdin="short\n"
        )
        == 2
    )
    assert "console.weak-password" in capsys.readouterr().err
    assert (
        _run(home, monkeypatch, "add", "wang", "--role", "admin", "--password-stdin", stdin=pw) == 2
    )
    assert "console.user-exists" in capsys.readouterr().err
    assert _run(home, monkeypatch, "list") == 0
    out = capsys.readouterr().out
    assert "wang" in out and "operator" in out and "lee" in out and "zh-Hant-HK" in out

    settings = Settings.load(home=home, env={})
    store = open_store(settings)
    try:
        stored = store.engine.connect().execute(sa.select(users.c.password_hash)).scalars().all()
        assert all(h.startswith("$argon2id$") for h in stored)  # never the password itself
        people = Users(store)
        wang = people.authenticate("wang", "a long enough password")
        assert wang is not None and wang.role == "operator"
        assert people.authenticate("wang", "wrong password!") is None
        assert people.authenticate("nobody", "a long enough password") is None
        token = Sessions(store).start(wang)
        assert Sessions(store).get(token) is not None
        assert (
            _run(
                home,
                monkeypatch,
                "passwd",
                "wang",
                "--password-stdin",
                stdin="another long password\n",
            )
            == 0
        )
        assert Sessions(store).get(token) is None  # the new password ended the session
        assert people.authenticate("wang", "another long password") is not None
        token = Sessions(store).start(people.require("wang"))
        assert _run(home, monkeypatch, "disable", "wang") == 0
        assert Sessions(store).get(token) is None
        assert people.authenticate("wang", "another long password") is None
        assert _run(home, monkeypatch, "disable", "wang", "--enable") == 0
        assert people.authenticate("wang", "another long password") is not None
    finally:
        store.close()


def test_a_bad_role_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit):
        _run(
            tmp_path, monkeypatch, "add", "z", "--role", "root", "--password-stdin", stdin="x" * 12
        )


def test_a_session_ends_when_idle_too_long(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path, env={})
    store = open_store(settings)
    try:
        user = Users(store).add("chan", "auditor", "a long enough password")
        sessions = Sessions(store)
        token = sessions.start(user)
        live = sessions.get(token)
        assert live is not None and live.user.name == "chan" and live.user.role == "auditor"
        assert sessions.get("not-a-token") is None and sessions.get(None) is None
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE console_sessions SET seen_at = '2000-01-01 00:00:00'"))
        assert sessions.get(token) is None
        with store.engine.connect() as conn:  # and the row is gone
            assert conn.execute(sa.text("SELECT count(*) FROM console_sessions")).scalar() == 0
    finally:
        store.close()


@pytest.mark.filterwarnings("ignore::getpass.GetPassWarning")  # no terminal: getpass says so
@pytest.mark.parametrize("verb", [("add", "wang", "--role", "operator"), ("passwd", "wang")])
def test_no_password_on_a_closed_stdin_is_one_line(
    verb: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gateway users passwd wang < /dev/null` (no terminal, no --password-stdin) ended in
    getpass's EOFError traceback."""
    assert _run(tmp_path, monkeypatch, *verb, stdin="") == 2
    err = capsys.readouterr().err
    assert "no password given: standard input ended" in err and "[console.weak-password]" in err

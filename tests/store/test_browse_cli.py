"""gateway messages list/show/reprocess/prune and gateway db upgrade, on a real store:
a message failed by a mapping bug is found, shown, and converted after the fix, with
both outcomes kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main

from .browse import GB18030_REF, broken_home, fill, fix_mapping


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_show_reprocess_prune(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = broken_home(tmp_path, store_url)
    home = settings.home
    code, out, _ = run(capsys, home, "db", "upgrade")
    assert code == 0 and "schema revision 0018_partner_pauses" in out
    failed, converted = fill(settings)

    code, out, _ = run(capsys, home, "messages", "list", "--state", "failed")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [failed]
    assert "LAX220260611101500003" in out and "REF^I12" in out

    code, out, _ = run(capsys, home, "messages", "list", "--json", "--type", "ORU^R01")
    listed = json.loads(out)
    assert [m["id"] for m in listed["messages"]] == [converted] and listed["next"] is None

    code, out, err = run(capsys, home, "messages", "list", "--limit", "1")
    assert f"more: --after {converted}" in err
    code, out, err = run(
        capsys, home, "messages", "list", "--limit", "1", "--after", str(converted)
    )
    assert out.splitlines()[1].split()[0] == str(failed) and "more:" not in err

    code, out, _ = run(capsys, home, "messages", "show", str(failed))
    assert code == 0
    assert "decoded as gb18030 (declared: gb18030)" in out
    assert GB18030_REF.decode("gb18030").split("\r")[1][:40] in out.replace("\n", "\r")
    assert "[mapping.unsupported-message]" in out

    show = json.loads(run(capsys, home, "messages", "show", str(failed), "--json")[1])
    patient = show["patients"][0]
    code, out, _ = run(capsys, home, "messages", "list", "--json", "--patient", patient)
    assert [m["id"] for m in json.loads(out)["messages"]] == [failed]

    # still broken: reprocessing fails again (exit 1), the fix makes it convert
    code, out, _ = run(capsys, home, "messages", "reprocess", str(failed))
    assert code == 1 and "failed (attempt 2)" in out
    fix_mapping(settings)
    code, out, err = run(capsys, home, "messages", "reprocess", "--state", "failed")
    assert code == 0 and f"message {failed}: converted (attempt 3)" in out
    assert "reprocessed 1, failed 0" in err

    show = json.loads(run(capsys, home, "messages", "show", str(failed), "--json")[1])
    assert show["state"] == "converted"
    states = [(o["attempt"], o["state"], o["current"]) for o in show["outcomes"]]
    assert states == [(1, "failed", False), (2, "failed", False), (3, "converted", True)]
    assert show["outcomes"][0]["issues"][0]["code"] == "mapping.unsupported-message"
    assert show["outcomes"][2]["output"]["resourceType"] == "Bundle"
    assert show["original"]["text"] == GB18030_REF.decode("gb18030")

    code, out, _ = run(capsys, home, "messages", "prune")
    assert code == 0 and out.startswith("pruned 0 messages")


def test_usage_and_unknown_message(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = broken_home(tmp_path, store_url).home
    assert run(capsys, home, "messages", "reprocess")[0] == 2
    code, _, err = run(capsys, home, "messages", "show", "42")
    assert code == 2 and "[store.not-found]" in err
    code, _, err = run(capsys, home, "messages", "list", "--after", "x")
    assert code == 2 and "[store.bad-cursor]" in err
    code, _, err = run(capsys, home, "messages", "list", "--since", "last tuesday")
    assert code == 2 and "--since" in err


@pytest.mark.parametrize("verb", ["list", "reprocess"])
def test_a_mistyped_state_is_refused_not_an_empty_answer(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--state faild` listed nothing with exit 0, which reads as "nothing failed"."""
    with pytest.raises(SystemExit) as usage:
        run(capsys, tmp_path, "messages", verb, "--state", "faild")
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'faild'" in err and "'failed'" in err

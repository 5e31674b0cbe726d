"""gateway outbox list|show|stats on a real store: a delivered record, a refused one
(with the partner's OperationOutcome) and one still queued."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import respx

from gateway.cli import main
from gateway.delivery import Deliverer, Outbox
from gateway.store import Store
from tests.golden.dicom.make_studies import part10, wang_wei

from .conftest import CONFIG, PARTNER, POST_URL, answer_checks, bundle, response


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str]:
    code = main(["--home", str(home), *args])
    return code, capsys.readouterr().out


@pytest.fixture
def home(tmp_path: Path) -> Path:
    store = Store.for_home(tmp_path)
    outbox = Outbox(store)
    rows = [outbox.enqueue(PARTNER, bundle(f"P{n}", f"O{n}"))[0] for n in range(3)]
    with respx.mock as partner_api:
        answer_checks(partner_api)
        post = partner_api.post(POST_URL)
        post.side_effect = [
            respx.MockResponse(200, json=response("201", "201")),
            respx.MockResponse(400, json={"resourceType": "OperationOutcome", "issue": []}),
        ]
        with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG) as deliverer:
            deliverer.run_once(limit=2)
    assert [outbox.require(r).state for r in rows] == ["delivered", "dead", "pending"]
    store.close()
    return tmp_path


def test_list_show_and_stats(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, home, "outbox", "list", "--json")
    assert code == 0
    assert [(r["id"], r["state"]) for r in json.loads(out)] == [
        (3, "pending"),
        (2, "dead"),
        (1, "delivered"),
    ]
    assert "order_key" not in out  # the patient identifier only on `show`
    code, out = run(capsys, home, "outbox", "list", "--state", "dead")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["2"]

    code, out = run(capsys, home, "outbox", "show", "2", "--json")
    shown = json.loads(out)
    assert shown["state"] == "dead" and shown["last_error"] == "delivery.partner-rejected"
    assert json.loads(shown["last_response"])["resourceType"] == "OperationOutcome"
    assert [(e["from"], e["to"]) for e in shown["events"]] == [
        (None, "pending"),
        ("pending", "sending"),
        ("sending", "dead"),
    ]
    code, out = run(capsys, home, "outbox", "show", "2")
    assert code == 0 and "sending → dead" in out and "OperationOutcome" in out

    code, out = run(capsys, home, "outbox", "stats", "--json")
    (stats,) = json.loads(out)
    assert stats["partner"] == "hkpmc" and stats["depth"] == 1
    assert stats["states"] == {"delivered": 1, "dead": 1, "pending": 1}
    code, out = run(capsys, home, "outbox", "stats")
    assert code == 0 and out.startswith("hkpmc: depth 1; oldest waiting since")


def test_show_of_a_record_that_is_not_there(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(home), "outbox", "show", "99"]) == 2
    assert "delivery.not-found" in capsys.readouterr().err


def run_err(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str]:
    code = main(["--home", str(home), *args])
    return code, capsys.readouterr().err


def test_a_partner_is_named_by_key_or_facility_code_in_any_case(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`outbox list --partner HKPMC` listed nothing (the rows are under the key hkpmc);
    a typo was an empty list, which reads as "nothing waits for that partner"."""
    code, out = run(capsys, home, "outbox", "list", "--partner", "HKPMC", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [3, 2, 1]
    code, err = run_err(capsys, home, "outbox", "list", "--partner", "hkpcm")
    assert code == 2 and "[config.unknown-partner]" in err
    assert "--partner hkpcm" in err and "did you mean hkpmc?" in err and "nsch" in err


def test_send_to_an_unknown_partner_is_refused_before_anything_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`send --to nscx` said "routed to no partner" and exited 0."""
    message = Path(__file__).parents[2] / "examples/hl7v2/ref_i12_hkpmc_to_nsch.hl7"
    code, err = run_err(capsys, tmp_path, "send", str(message), "--to", "nscx")
    assert code == 2 and "--to nscx" in err and "did you mean nsch?" in err
    assert "hkpmc, njmu2, nsch" in err
    code, err = run_err(capsys, tmp_path, "send", str(message), "--to", "LAX2")
    assert code == 2 and "lax2 is an institution of the network with no FHIR server" in err
    code, out = run(capsys, tmp_path, "messages", "list", "--json")
    assert code == 0 and json.loads(out)["messages"] == []


def test_send_and_route_put_the_paths_beside_a_dicom_file_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A study's messages name its files by reference (the hash of the name the store's
    conversion read, ``message <id>/<member>``): `send` printed the bare reference, which
    no path the operator holds hashes to."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = ("陈大文_1.dcm", "陈大文_2.dcm")
    (folder / names[0]).write_bytes(part10(wang_wei(series=1, number=1)))
    (folder / names[1]).write_bytes(part10(wang_wei(series=1, number=2, PatientID="A1234567")))
    for command in ("send", "route"):
        code, err = run_err(capsys, tmp_path, command, str(folder))
        assert code == 1 or command == "route"
        assert "intake.dicom-patient-mismatch" in err, err
        for name in names:
            assert re.search(rf"file [0-9a-f]{{8}} \({re.escape(str(folder / name))}\)", err), err

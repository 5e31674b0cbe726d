"""The ``gateway`` command as a user runs it (in a subprocess: real exit codes, real
stdout/stderr, no traceback ever)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.gateway_cli import run

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "hl7v2"


def test_single_message_to_stdout(tmp_path: Path) -> None:
    proc = run("convert", str(EXAMPLES / "ref_i12_nsgp_to_nsch.hl7"), home=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    bundle = json.loads(proc.stdout)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    assert b"converted 1, failed 0" in proc.stderr


def test_batch_into_a_folder_named_by_control_id(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run("convert", str(EXAMPLES), "-o", f"{out}/", home=tmp_path)
    assert proc.returncode == 1  # the batch file holds one broken message on purpose
    names = sorted(p.name for p in out.iterdir())
    assert "NSGP20260612093015001.json" in names and len(names) == 11
    stderr = proc.stderr.decode()
    assert "converted 11, failed 1 (of 12 records in 10 files)" in stderr
    assert "batch_mixed.hl7, message LAX220260622090500002: PID-3:" in stderr
    assert "Traceback" not in stderr


def test_single_message_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / "bundle.json"
    proc = run("convert", str(EXAMPLES / "omi_o23_nsch_ct.hl7"), "-o", str(target), home=tmp_path)
    assert proc.returncode == 0
    assert json.loads(target.read_bytes())["type"] == "transaction"


def test_several_messages_to_stdout_are_json_lines(tmp_path: Path) -> None:
    proc = run("convert", str(EXAMPLES / "batch_mixed.hl7"), home=tmp_path)
    lines = proc.stdout.splitlines()
    assert [json.loads(line)["resourceType"] for line in lines] == ["Bundle", "Bundle"]


def test_progress_bar_and_summary(tmp_path: Path) -> None:
    proc = run("convert", str(EXAMPLES), "-o", f"{tmp_path}/o/", "--progress", home=tmp_path)
    stderr = proc.stderr.decode()
    final = stderr.split("\r")[-1]  # the bar's last state, drawn at the end
    assert "12 records, 1 failed" in final and "10/10 files" in final
    assert "(of 12 records in 10 files)" in stderr


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"PID|1||123^^^X^MR\r", "no MSH segment"),
        (b"MSH|^~\\&|A\r", "MSH-9"),  # truncated header
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data"),
        (b"MSH|^~\\&|A|B|C|D|20260101||REF^I12|1|P|2.5|||||CHN|KLINGON\rPID|1\r", "KLINGON"),
        (b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\rPID|1\r", "no mapping for ADT^A01"),
        (
            b"MSH|^~\\&|A|B|C|D|20260101||REF^I12|1|P|2.5\rPID|1||X1^^^A^MR\rRF1|P\r",
            "RF1-6 (originating referral id) is empty",
        ),
    ],
    ids=["no-msh", "truncated-msh", "binary", "wrong-msh18", "unsupported", "truncated-rf1"],
)
def test_malformed_input_is_one_clear_line_and_no_traceback(
    tmp_path: Path, data: bytes, expected: str
) -> None:
    proc = run("convert", "-", home=tmp_path, stdin=data)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1
    assert expected in stderr and "Traceback" not in stderr
    assert stderr.splitlines()[0].startswith("error: <stdin>, message")


def test_unreadable_path_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("convert", str(tmp_path / "missing.hl7"), home=tmp_path)
    assert proc.returncode == 2 and b"cannot read" in proc.stderr


def test_an_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "inbox" / ".hidden").mkdir(parents=True)
    (tmp_path / "inbox" / ".hidden" / "x.hl7").write_bytes(b"MSH|^~\\&|")
    proc = run("convert", str(tmp_path / "inbox"), home=tmp_path)
    assert proc.returncode == 2 and b"no input files" in proc.stderr


def test_several_messages_into_one_file_is_a_usage_error(tmp_path: Path) -> None:
    target = tmp_path / "one.json"
    proc = run("convert", str(EXAMPLES / "batch_mixed.hl7"), "-o", str(target), home=tmp_path)
    assert proc.returncode == 2 and b"give a directory" in proc.stderr
    # The first message's Bundle was written before the second showed up: it must not
    # stay behind as if the batch had been converted into it.
    assert not target.exists()


def test_several_messages_into_one_file_log_only_the_records_the_command_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 messages into one file: the command takes the first, then the second tells it
    there are several and it stops. The log says two records were converted (the two it
    took), not the 32 the stages ran through ahead of it."""
    one = (EXAMPLES / "ref_i12_nsgp_to_nsch.hl7").read_bytes().strip()
    control = b"NSGP20260612093015001"
    assert control in one
    messages = [one.replace(control, b"NSGP2026061209301%04d" % n) for n in range(40)]
    (tmp_path / "forty.hl7").write_bytes(b"\r".join(messages) + b"\r")
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "info")
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "json")
    target = tmp_path / "one.json"
    proc = run("convert", str(tmp_path / "forty.hl7"), "-o", str(target), home=tmp_path)
    assert proc.returncode == 2 and b"give a directory" in proc.stderr
    logged = [
        json.loads(line)
        for line in proc.stderr.splitlines()
        if line.startswith(b"{") and b'"record converted"' in line
    ]
    assert [entry["record"] for entry in logged] == [
        "message NSGP20260612093010000",
        "message NSGP20260612093010001",
    ]


def test_demo_runs_on_a_fresh_home_and_says_where_the_output_is(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    proc = run("demo", home=home)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    # 11 referrals/orders, 2 DICOM studies, 3 ORU and 2 CDA reports; the batch file's
    # broken message is refused on purpose.
    assert "converted 18 records, 1 refused" in out
    demo = home / "out" / "demo"
    assert f"Bundles are in {demo}" in out
    # (section 4's two gateways have their own folder, gateway/: tests/test_demo.py)
    bundles = [
        p
        for p in demo.rglob("*.json")
        if p.parent.name != "variants" and p.relative_to(demo).parts[0] != "gateway"
    ]
    assert len(bundles) == 18
    # The story ends in the Nansha report and the co-branded Lai'an one, each as its
    # receiving partner prefers (seeds/network.yaml).
    variants = demo / "variants"
    for name in ("nsch-cta-for-hkpmc", "nsch-cta-for-nsgp", "lax2-ct-cobranded-for-lax2"):
        assert (variants / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        assert b"<html" in (variants / f"{name}.html").read_bytes()


def _anonymous_study(folder: Path) -> None:
    """A study that names neither its institution nor any issuer (a plain PACS export)."""
    from tests.golden.dicom.make_studies import instance, part10

    folder.mkdir(parents=True)
    for n in (1, 2):
        ds = instance("2.25.4242", 1, n, PatientID="0012345", PatientName="WANG^WEI")
        (folder / f"IM{n}.dcm").write_bytes(part10(ds))


def test_sender_names_who_sent_a_study_that_does_not_say(tmp_path: Path) -> None:
    _anonymous_study(tmp_path / "export")
    refused = run("convert", str(tmp_path / "export"), home=tmp_path)
    assert refused.returncode == 1 and b"(0010,0020) PatientID" in refused.stderr
    # it says what is missing and how to give it, and does not claim PatientID is empty
    error = refused.stderr.decode()
    assert "[intake.dicom-no-sender]" in error and "--sender" in error and "?sender=" in error
    assert "PatientID is empty" not in error and "0012345" not in error
    assert "WANG" not in error
    done = run("convert", "--sender", "LAX2", str(tmp_path / "export"), home=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    bundle = json.loads(done.stdout)
    [patient] = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    assert patient["identifier"][0] == {
        "use": "usual",
        "type": patient["identifier"][0]["type"],
        "system": "https://fhir.lax2.example.cn/sid/mrn",
        "value": "0012345",
    }
    unknown = run("convert", "--sender", "NOWHERE", str(tmp_path / "export"), home=tmp_path)
    assert unknown.returncode == 2 and b"not an institution of the network" in unknown.stderr


def test_output_names_are_bounded_and_never_collide(tmp_path: Path) -> None:
    # Control ids too long for a file name, with characters unsafe in one, differing only
    # in those characters or in case: each record gets its own short file; none is lost.
    template = (EXAMPLES / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()
    ids = [b"A" * 300, b"A" * 299 + b"B", b"x/../y", b"x:..:y", b"CASE1", b"case1", b"CASE1"]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for n, ident in enumerate(ids):
        (inbox / f"m{n}.hl7").write_bytes(template.replace(b"NSCH20260618143000017", ident))
    out = tmp_path / "out"
    proc = run("convert", str(inbox), "-o", f"{out}/", home=tmp_path)
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert "converted 7, failed 0" in stderr and "too long" not in stderr
    names = sorted(p.name for p in out.iterdir())
    assert len({n.casefold() for n in names}) == 7
    assert all(len(n) <= 105 and n.endswith(".json") for n in names)
    assert "CASE1.json" in names and not (out / "y.json").exists()
    values = {json.loads(p.read_bytes())["identifier"]["value"] for p in out.iterdir()}
    assert values == {i.decode() for i in ids}


def test_config_shows_the_token_file_in_effect(tmp_path: Path) -> None:
    proc = run("config", home=tmp_path)
    lines = proc.stdout.decode().splitlines()
    [token] = [line for line in lines if line.startswith("api_token_file = ")]
    default = tmp_path / "secrets" / "api-tokens"
    assert token == f"api_token_file = {default} (default: $GATEWAY_HOME/secrets)"
    (tmp_path / "gateway.toml").write_text('api_token_file = "tokens.txt"\n', encoding="utf-8")
    proc = run("config", home=tmp_path)
    assert f"api_token_file = {tmp_path / 'tokens.txt'}\n" in proc.stdout.decode()


def test_serve_and_convert_format_have_help() -> None:
    from gateway.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices = sub.choices  # type: ignore[attr-defined]
    serve = {a.dest: a.help for a in choices["serve"]._actions}
    assert serve["host"] and serve["port"] and "token" in choices["serve"].description
    convert = {a.dest: a.help for a in choices["convert"]._actions}
    assert convert["format"] and "auto" in convert["format"]


def test_serve_help_on_the_command_line(tmp_path: Path) -> None:
    proc = run("serve", "--help", home=tmp_path)
    out = proc.stdout.decode()
    assert proc.returncode == 0 and "/docs" in out and "address to listen on" in out


def test_output_names_have_no_caret(tmp_path: Path) -> None:
    """CDA ids are root^extension: the file takes _ for ^ (cmd's escape character,
    quoted in shells and URLs), keeping the rest of the id readable."""
    from gateway.outputs import output_stem

    assert output_stem("2.16.156.10011.1.1^LAX2-CT-1") == "2.16.156.10011.1.1_LAX2-CT-1"
    assert "^" not in output_stem("A^B/../C" * 40)
    imaging = REPO / "examples" / "imaging"
    proc = run(
        "convert",
        str(imaging / "lax2-ct-report-local.xml"),
        str(imaging / "lax2-ct-report-cobranded.xml"),
        "-o",
        f"{tmp_path / 'out'}/",
        home=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "2.16.156.10011.1.1_LAX2-CT-20260610-0001-NJMU2.json",
        "2.16.156.10011.1.1_LAX2-CT-20260610-0001.json",
    ]


def test_config_shows_what_unset_file_settings_stand_for(tmp_path: Path) -> None:
    """`gateway config` printed `database_url = None`, `policy_key_file = None`...: an
    operator could not tell where the store, the pseudonym key or the routes are."""
    lines = dict(
        line.split(" = ", 1) for line in run("config", home=tmp_path).stdout.decode().splitlines()
    )
    assert lines["database_url"] == f"sqlite:///{tmp_path / 'gateway.db'} (default: $GATEWAY_HOME)"
    key = tmp_path / "secrets" / "policy-key"
    assert lines["policy_key_file"] == f"{key} (default: $GATEWAY_HOME/secrets)"
    assert lines["inbound_token_file"].startswith(str(tmp_path / "secrets" / "partner-tokens"))
    assert lines["delivery_routes"].endswith("routes.yaml (default)")
    assert lines["policy_dir"].endswith("policy (default)")
    assert lines["policy_agreements"].endswith("agreements.yaml (default)")
    assert "None" not in {lines[k] for k in ("database_url", "policy_dir", "delivery_routes")}


def test_a_missing_input_is_not_called_an_output(tmp_path: Path) -> None:
    """`gateway consent import nosuch.json` said `cannot write nosuch.json`."""
    proc = run("consent", "import", str(tmp_path / "nosuch.json"), home=tmp_path)
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    assert proc.stderr.decode().splitlines() == [
        f"error: cannot read or write {tmp_path / 'nosuch.json'}: No such file or directory"
    ]


def test_a_port_in_use_is_one_line_that_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = run("listen", "--port", str(port), home=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err and "cannot write" not in err
    assert "address already in use (is another gateway listen or serve running on it?)" in err


def test_output_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    """`gateway convert inbox/ | head`: the reader leaves after a few bytes (the output is
    larger than a pipe's buffer); no 'error: cannot write: Broken pipe' line."""
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -m gateway --home {tmp_path} convert {EXAMPLES} | head -c 10",
        shell=True,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert proc.stdout.startswith(b'{"resource')
    assert b"Broken pipe" not in proc.stderr and b"Traceback" not in proc.stderr


def test_a_consent_file_that_is_not_json_is_one_line(tmp_path: Path) -> None:
    """`gateway consent import b.json` of `{bad` ended in an orjson traceback."""
    (tmp_path / "b.json").write_text('{"resourceType":\n  "Consent",,}\n')
    proc = run("consent", "import", str(tmp_path / "b.json"), home=tmp_path)
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    assert proc.stderr.decode().splitlines() == [
        f"error: {tmp_path / 'b.json'}: not JSON: line 2, column 13: unexpected character, "
        "expected a string key [policy.consent-invalid]"
    ]


def _serve_on_a_held_port(home: Path) -> tuple[int, subprocess.CompletedProcess[bytes]]:
    """``gateway serve`` on a port this test holds: were it to start, it stops at once
    (no server left behind)."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        return port, run("serve", "--host", "127.0.0.1", "--port", str(port), home=home)


def test_serve_on_a_port_in_use_is_one_line_before_any_banner(tmp_path: Path) -> None:
    """The "gateway API on http://..." banner came first, then uvicorn's timestamped
    ERROR line, exit 3."""
    port, proc = _serve_on_a_held_port(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        f"error: port {port} on 127.0.0.1 is in use (is another gateway listen or serve "
        "running on it?)"
    ]


def test_serve_refuses_a_partner_whose_token_file_is_not_there(tmp_path: Path) -> None:
    """A hand-edited token_file that does not exist started the gateway; the first
    send to the partner found out."""
    (tmp_path / "partners.yaml").write_text(
        "partners:\n  nsch:\n    auth: {type: bearer, token_file: nsch-token}\n"
    )
    _, proc = _serve_on_a_held_port(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        f"error: partner nsch: no such file: token_file {tmp_path / 'nsch-token'} (gateway "
        "partners list shows each partner's files) [config.partner-auth]"
    ]


def _private_api_tokens(home: Path) -> None:
    (home / "secrets").mkdir(mode=0o700)
    (home / "secrets" / "api-tokens").write_text("serve-token-0123456789abcdef\n")
    (home / "secrets" / "api-tokens").chmod(0o600)


def test_serve_refuses_a_partner_token_file_others_can_read(tmp_path: Path) -> None:
    """The partner's bearer token file (as the API token file, the keys) 0644 started
    the gateway, which sent the partner a token anyone on the host could read."""
    _private_api_tokens(tmp_path)
    (tmp_path / "nsch-token").write_text("the-partners-token\n")
    (tmp_path / "nsch-token").chmod(0o644)
    (tmp_path / "partners.yaml").write_text(
        "partners:\n  nsch:\n    auth: {type: bearer, token_file: nsch-token}\n"
    )
    _, proc = _serve_on_a_held_port(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        f"error: partner nsch: {tmp_path / 'nsch-token'}: the partner token file must be "
        "private (chmod 600) [config.partner-auth]"
    ]


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("inbound_token_file", "inbound partner token file"),
        ("alert_webhook_token_file", "alert webhook token file"),
    ],
)
def test_serve_refuses_a_secret_file_of_the_settings_others_can_read(
    tmp_path: Path, setting: str, words: str
) -> None:
    """The inbound partner tokens (anyone reading them could send as a partner) and the
    alert webhook's token, readable by others, served; the API's were refused."""
    _private_api_tokens(tmp_path)
    secret = tmp_path / "secrets" / "a-secret"
    secret.write_text("nsch partner-token-0123456789abcdef\n")
    secret.chmod(0o604)
    (tmp_path / "gateway.toml").write_text(f'{setting} = "{secret}"\n')
    _, proc = _serve_on_a_held_port(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        f"error: {setting}: {secret}: the {words} must be private (chmod 600) [config.bad-setting]"
    ]


def test_serve_refuses_an_mllp_tls_key_others_can_read(tmp_path: Path) -> None:
    """The MLLP listener's private key (whoever reads it can pose as the gateway to the
    senders), readable by others, was used: refused before the banner, as the others."""
    _private_api_tokens(tmp_path)
    key, cert = tmp_path / "mllp.key", tmp_path / "mllp.crt"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    key.chmod(0o640)
    (tmp_path / "gateway.toml").write_text(f'mllp_tls_cert = "{cert}"\nmllp_tls_key = "{key}"\n')
    _, proc = _serve_on_a_held_port(tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        f"error: mllp_tls_key: {key}: the MLLP TLS key file must be private (chmod 600) "
        "[config.bad-setting]"
    ]


def test_serve_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    """A token file left 0644 served the API (anyone on the host could read the
    tokens); with --workers the refusal must come before the banner, not per worker."""
    (tmp_path / "secrets").mkdir()
    tokens = tmp_path / "secrets" / "api-tokens"
    tokens.write_text("serve-token-0123456789abcdef\n")
    tokens.chmod(0o644)
    import socket

    with socket.socket() as held:  # were it to start, it stops at once (not a server left)
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = run("serve", "--host", "127.0.0.1", "--port", str(port), home=tmp_path)
        workers = run(
            "serve", "--port", str(port), "--workers", "2", "--host", "127.0.0.1", home=tmp_path
        )
    line = f"error: {tokens}: the API token file must be private (chmod 600) [config.no-tokens]"
    for ran in (proc, workers):
        assert ran.returncode == 2
        assert ran.stderr.decode().splitlines() == [line]


def test_a_folder_input_always_writes_into_a_folder(tmp_path: Path) -> None:
    """`convert one/ -o out` of a folder holding one message wrote a file `out`; the
    next run, with two messages, failed "-o out is a file"."""
    inbox, out = tmp_path / "one", tmp_path / "out"
    inbox.mkdir()
    (inbox / "a.hl7").write_bytes((EXAMPLES / "omi_o23_nsch_ct.hl7").read_bytes())
    proc = run("convert", str(inbox), "-o", str(out), home=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.is_dir() and len(list(out.glob("*.json"))) == 1
    (inbox / "b.hl7").write_bytes((EXAMPLES / "ref_i12_hkpmc_to_nsch.hl7").read_bytes())
    proc = run("convert", str(inbox), "-o", str(out), home=tmp_path)
    assert proc.returncode == 0 and len(list(out.glob("*.json"))) == 2
    afile = tmp_path / "afile"
    afile.write_text("")
    proc = run("convert", str(inbox), "-o", str(afile), home=tmp_path)
    assert proc.returncode == 2 and proc.stderr.decode().splitlines() == [
        f"error: -o {afile} is a file; a folder input writes one file per message into a "
        "folder: give another -o (it is created)"
    ]

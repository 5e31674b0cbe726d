"""The API's OpenAPI description: what each endpoint takes and answers, and how to
authenticate, so that Swagger UI's "Try it out" (or any client generated from
/openapi.json) can send a record and a token.

FastAPI describes the routes and their query parameters; the routes read their bodies
themselves (several content types, a byte limit, a timeout), so the request bodies,
their content types and examples, the documented responses and the bearer scheme are
added here, once, when /openapi.json is first asked for. The examples are the records
shipped in examples/ (and their conversion), so they always convert.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson
import pydicom
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..datafiles import data_dir
from ..pipeline import Converter

__all__ = ["BEARER", "PUBLIC_PATHS", "install_openapi"]

BEARER = "HTTPBearer"  # the security scheme's name in components.securitySchemes
# Routes anyone may call (as FHIR servers answer /metadata); every other one wants a token.
PUBLIC_PATHS = frozenset(
    {"/health", "/metadata", "/fhir/metadata", "/fhir/.well-known/smart-configuration",
     "/auth/token"}  # the inbound endpoint's discovery and SMART token endpoint (docs/inbound.md)
)  # fmt: skip
FHIR_JSON = "application/fhir+json"
DICOM_JSON = "application/dicom+json"

_REF = "#/components/schemas/"
_OUTCOME = {"$ref": _REF + "OperationOutcome"}
_BINARY = {"type": "string", "format": "binary"}
_TEXT = {"type": "string"}

# Plain JSON Schema for the two FHIR resources every route speaks: enough for a client
# to read them; the full definitions are FHIR R4's (hl7.org/fhir/R4/fhir.schema.json).
SCHEMAS: dict[str, Any] = {
    "OperationOutcome": {
        "type": "object",
        "description": "Every error: one issue per problem, with the gateway's error code "
        "(details.coding, docs/errors.md), where it is (location: the source field, an HL7 "
        "v2 terser path, DICOM tag, XPath or request parameter; expression: the FHIR "
        "element, as FHIRPath) and a message that never holds patient data (a value is "
        "described by its form, 'AAAAA AAAAA': see docs/api.md).",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
            "issue": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["severity", "code"],
                    "properties": {
                        "severity": {
                            "type": "string",
                            "enum": ["fatal", "error", "warning", "information"],
                        },
                        "code": {"type": "string", "description": "FHIR issue type"},
                        "details": {
                            "type": "object",
                            "properties": {
                                "coding": {"type": "array", "items": {"type": "object"}},
                                "text": {"type": "string"},
                            },
                        },
                        "diagnostics": {"type": "string"},
                        "location": {"type": "array", "items": {"type": "string"}},
                        "expression": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    },
    "Bundle": {
        "type": "object",
        "description": "A FHIR R4 Bundle: the transaction of one record, or a "
        "batch-response with one entry per record when the body held several.",
        "required": ["resourceType", "type"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Bundle"]},
            "type": {
                "type": "string",
                "enum": ["transaction", "batch-response", "collection", "document"],
            },
            "entry": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "fullUrl": {"type": "string"},
                        "resource": {"type": "object"},
                        "request": {"type": "object"},
                        "response": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string"},
                                "outcome": _OUTCOME,
                            },
                        },
                    },
                },
            },
        },
    },
    "DiagnosticReport": {
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"type": "string", "enum": ["DiagnosticReport"]}},
    },
    "Parameters": {
        "type": "object",
        "description": "parameter 'report' (the DiagnosticReport or a Bundle with it) and "
        "optionally 'english' (the partner's English report, linked to it)",
        "required": ["resourceType", "parameter"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Parameters"]},
            "parameter": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "resource"],
                    "properties": {
                        "name": {"type": "string", "enum": ["report", "english"]},
                        "resource": {"type": "object"},
                    },
                },
            },
        },
    },
}


def _consent_headers(*, location: bool, content_location: bool = True) -> dict[str, Any]:
    """The headers of a Consent's version (gateway/api/_policy.py)."""
    found = [
        ("Location", "[base]/Consent/{id}/_history/{version}"),
        ("Content-Location", "[base]/Consent/{id}/_history/{version}"),
        ("ETag", 'W/"{version}"'),
        ("Last-Modified", "when the version was stored (HTTP-date)"),
        ("X-Gateway-Released", "messages of the held records released"),
    ]
    if not location:
        found.pop(0)
    if not content_location:
        found = [(n, t) for n, t in found if n not in ("Content-Location", "X-Gateway-Released")]
    return {name: {"description": text, "schema": {"type": "string"}} for name, text in found}


def _outcomes(*statuses: tuple[int, str]) -> dict[str, Any]:
    return {
        str(status): {"description": why, "content": {FHIR_JSON: {"schema": _OUTCOME}}}
        for status, why in statuses
    }


_PROTECTED = (401, "no valid Bearer token")
_BODY_ERRORS = (
    (408, "the body did not arrive in time (api_body_timeout)"),
    (413, "the body is larger than the limit"),
)


def _convert_body(examples: dict[str, Any]) -> dict[str, Any]:
    hl7 = {"schema": _TEXT, "examples": {"REF^I12": {"value": examples["hl7v2"]}}}
    return {
        "required": True,
        "description": "One record, or several (an HL7 v2 batch, a zip of a study, a "
        "DICOM JSON array): HL7 v2 ER7 (optionally MLLP-framed; any declared MSH-18 "
        "charset: send the bytes as they are, e.g. curl --data-binary, never -d, which "
        "strips the segment separators), DICOM Part 10, a zip of DICOM files, DICOM JSON "
        "(PS3.18 Annex F) or a CDA document. The format comes from ?format=, else the "
        "Content-Type, else the bytes.",
        "content": {
            "x-application/hl7-v2+er7": hl7,
            "application/hl7-v2": hl7,
            DICOM_JSON: {
                "schema": {"type": "array", "items": {"type": "object"}},
                "examples": {"CT study": {"value": examples["dicom_json"]}},
            },
            "application/dicom": {"schema": _BINARY},
            "application/zip": {"schema": _BINARY},
            "application/hl7-cda+xml": {
                "schema": _TEXT,
                "examples": {"CDA report": {"value": examples["cda"]}},
            },
            "application/xml": {"schema": _TEXT},
            "application/octet-stream": {"schema": _BINARY},
        },
    }


def _variants_body(examples: dict[str, Any]) -> dict[str, Any]:
    schema = {
        "oneOf": [
            {"$ref": _REF + "Bundle"},
            {"$ref": _REF + "DiagnosticReport"},
            {"$ref": _REF + "Parameters"},
        ]
    }
    content = {
        "schema": schema,
        "examples": {
            "report Bundle": {
                "summary": "the transaction Bundle /convert made of an ORU^R01",
                "value": examples["report"],
            },
            "Parameters with the English report": {
                "summary": "the report and the partner's English report",
                "value": examples["parameters"],
            },
        },
    }
    return {
        "required": True,
        "description": "A DiagnosticReport, a Bundle holding one (as /convert returns), "
        "or a Parameters resource with parameters 'report' and 'english'.",
        "content": {FHIR_JSON: content, "application/json": content},
    }


def _operations(examples: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """What FastAPI cannot see in the routes: bodies and responses, per (path, method)."""
    bundle = {"schema": {"$ref": _REF + "Bundle"}}
    store_page = {"schema": {"type": "object", "required": ["messages", "next"]}}
    dicom_response = {"schema": {"type": "object", "description": "Store Instances Response"}}
    stow_body = {
        "required": True,
        "description": "DICOM Part 10 instances, one per body part (PS3.18 §10.5)",
        "content": {'multipart/related; type="application/dicom"': {"schema": _BINARY}},
    }
    stow_responses = {
        str(status): {"description": why, "content": {DICOM_JSON: dicom_response}}
        for status, why in (
            (200, "every instance stored"),
            (202, "some instances stored; the others in FailedSOPSequence"),
            (409, "no instance could be read"),
            (503, "the store kept no instance"),
        )
    } | _outcomes(
        (400, "the multipart body cannot be split"),
        (413, "the body is larger than the limit"),
        (415, 'not multipart/related; type="application/dicom"'),
    )
    # FHIR $validate (gateway/api/_validate.py): a resource, or Parameters with it
    resource = {"schema": {"type": "object", "required": ["resourceType"]}}
    validate = {
        "requestBody": {
            "required": True,
            "description": "A FHIR R4 resource (a Bundle is validated with its entries), or "
            "a Parameters with 'resource' and optionally 'profile' (valueUri)",
            "content": {
                FHIR_JSON: resource
                | {
                    "examples": {
                        "bundle": {
                            "summary": "an imaging report's Bundle",
                            "value": examples["report"],
                        },
                        "parameters": {
                            "summary": "Parameters with the resource",
                            "value": {
                                "resourceType": "Parameters",
                                "parameter": [
                                    {"name": "resource", "resource": examples["report"]},
                                ],
                            },
                        },
                    }
                },
                "application/json": resource,
            },
        },
        "responses": _outcomes(
            (200, "validated: 'All OK' (information), or the errors and warnings found"),
            (400, "not a FHIR resource in JSON, or not of the type the URL names"),
            *_BODY_ERRORS,
        ),
    }
    return {
        ("/convert", "post"): {
            "requestBody": _convert_body(examples),
            "responses": {
                "200": {
                    "description": "the transaction Bundle (several records: a "
                    "batch-response Bundle, one entry per record)",
                    "content": {FHIR_JSON: bundle},
                }
            }
            | _outcomes(
                (400, "not a readable record (framing, charset, syntax), or a bad parameter"),
                (422, "a readable record that cannot be mapped or validated"),
                (500, "the gateway failed on the record (logged, never sent)"),
                *_BODY_ERRORS,
            ),
        },
        ("/report/variants", "post"): {
            "requestBody": _variants_body(examples),
            "responses": {
                "200": {
                    "description": "the variant: FHIR JSON (format=json), HTML or PDF",
                    "content": {
                        FHIR_JSON: bundle,
                        "text/html": {"schema": _TEXT},
                        "application/pdf": {"schema": _BINARY},
                    },
                }
            }
            | _outcomes(
                (400, "not a report, or a bad parameter"),
                (422, "a report the variant cannot be made of (language, English link)"),
                (500, "the gateway failed rendering the report (logged)"),
                *_BODY_ERRORS,
            ),
        },
        ("/messages", "get"): {
            "responses": {
                "200": {"description": "one page", "content": {"application/json": store_page}}
            }
            | _outcomes((400, "a bad filter"))
        },
        ("/metadata", "get"): {
            "responses": {
                "200": {
                    "description": "the CapabilityStatement",
                    "content": {FHIR_JSON: {"schema": {"type": "object"}}},
                }
            }
        },
        ("/messages/{message_id}", "get"): {
            "responses": {
                "200": {
                    "description": "the message and its stages",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            }
            | _outcomes((404, "no such message"))
        },
        ("/messages/{message_id}/$reprocess", "post"): {
            "responses": {
                "200": {
                    "description": "the message with its new outcome",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            }
            | _outcomes(
                (404, "no such message"),
                (409, "refused by the MLLP listener for its sender: never converted"),
                (410, "its content was pruned"),
            )
        },
        ("/dicomweb/studies", "post"): {"requestBody": stow_body, "responses": stow_responses},
        ("/dicomweb/studies/{study}", "post"): {
            "requestBody": stow_body,
            "responses": stow_responses,
        },
        ("/policy/check", "post"): {
            "requestBody": {
                "required": True,
                "description": "The transaction Bundle to decide on (?to= the recipient, "
                "?from= the sender when the Bundle does not say, ?purpose=); nothing is "
                "sent or stored (docs/policy.md)",
                "content": {FHIR_JSON: bundle, "application/json": bundle},
            },
            "responses": {
                "200": {
                    "description": "the decision: rules, reasons in zh-Hans, zh-Hant and en",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            }
            | _outcomes((400, "not a Bundle, or no recipient"), (413, "body over the limit")),
        },
        ("/Consent", "post"): {
            "requestBody": {
                "required": True,
                "description": "A FHIR R4 Consent (the patient's separate consent to a "
                "transfer); held records it now allows are released",
                "content": {FHIR_JSON: {"schema": {"type": "object"}}},
            },
            "responses": {
                "201": {
                    "description": "a new consent is on file (FHIR create): the Consent as "
                    "stored (its meta.versionId and meta.lastUpdated), no body with Prefer: "
                    "return=minimal, an OperationOutcome with return=OperationOutcome",
                    "headers": _consent_headers(location=True),
                    "content": {FHIR_JSON: {"schema": {"type": "object"}}},
                },
                "200": {
                    "description": "a new version of a consent on file (its id: FHIR "
                    "update), answered as 201 is but without Location",
                    "headers": _consent_headers(location=False),
                    "content": {FHIR_JSON: {"schema": {"type": "object"}}},
                },
            }
            | _outcomes(
                (400, "not a valid Consent"),
                (412, "If-Match names another version than the one on file"),
            ),
        },
        ("/Consent/{consent_id}", "get"): {
            "responses": {
                "200": {
                    "description": "the Consent on file (its current version)",
                    "headers": _consent_headers(location=False, content_location=False),
                    "content": {FHIR_JSON: {"schema": {"type": "object"}}},
                }
            }
            | _outcomes((404, "no consent with that id")),
        },
        ("/Consent/{consent_id}/_history/{version_id}", "get"): {
            "responses": {
                "200": {
                    "description": "the version, when it is the current one (the only "
                    "version kept)",
                    "headers": _consent_headers(location=False, content_location=False),
                    "content": {FHIR_JSON: {"schema": {"type": "object"}}},
                }
            }
            | _outcomes((404, "no consent with that id, or a version that is not current")),
        },
        ("/$verify", "post"): {
            "requestBody": {
                "required": True,
                "description": "A signed Bundle (JSON) or a signed PDF (docs/signing.md)",
                "content": {
                    FHIR_JSON: bundle,
                    "application/json": bundle,
                    "application/pdf": {"schema": _BINARY},
                },
            },
            "responses": _outcomes(
                (200, "every signature is valid and trusted"),
                (400, "neither a Bundle nor a PDF"),
                (422, "a signature is invalid or untrusted; the issues name it"),
            ),
        },
        ("/$validate", "post"): validate,
        ("/{resource_type}/$validate", "post"): validate,
        ("/dicomweb/studies/{study}/$commit", "post"): {
            "responses": {
                "200": {
                    "description": "the study was converted (now, or before: a commit "
                    "asked again answers that outcome, converting nothing)",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "202": {
                    "description": "another caller took the same instances and is still "
                    'converting them ("state": "converting"): the outcome is to come, '
                    "see the message",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "422": {
                    "description": "the study was stored but failed to convert (now, or "
                    "before: the same errors again)",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
            }
            | _outcomes((404, "no instance of this study was received"))
        },
    }


def _examples(convert: Callable[[bytes], dict[str, Any]]) -> dict[str, Any]:
    """Request examples from the shipped records; ``convert`` gives a record's Bundle."""
    examples = data_dir("examples")
    imaging = examples / "imaging"
    chinese = convert((imaging / "oru_r01_nsch_cta_zh.hl7").read_bytes())
    english = convert((imaging / "oru_r01_hkpmc_cta_en.hl7").read_bytes())
    study = sorted((imaging / "lax2_ct_head.study").rglob("*.dcm"))
    return {
        # ER7 segments end with CR; JSON carries it as \r
        "hl7v2": (examples / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_text("utf-8"),
        "dicom_json": [
            pydicom.dcmread(path, stop_before_pixels=True).to_json_dict() for path in study
        ],
        "cda": (imaging / "lax2-ct-report-local.xml").read_text("utf-8"),
        "report": chinese,
        "parameters": {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "report", "resource": chinese},
                {"name": "english", "resource": english},
            ],
        },
    }


def install_openapi(app: FastAPI, converter: Converter, lock: threading.Lock) -> None:
    """Replace ``app.openapi`` by one that completes FastAPI's description (built once,
    on the first request for it; the examples convert under the API's ``lock``)."""

    def convert(data: bytes) -> dict[str, Any]:
        with lock:
            [record] = converter.convert(data, source="openapi example")
        if record.bundle_json is None:  # a shipped example that no longer converts
            raise RuntimeError(f"example {record.label} does not convert: {record.issues}")
        parsed: dict[str, Any] = orjson.loads(record.bundle_json)
        return parsed

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            complete(schema, _operations(_examples(convert)))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(schema: dict[str, Any], operations: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Add the bodies, responses, schemas and the bearer scheme to FastAPI's ``schema``."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "a token from api_token_file (default "
            "$GATEWAY_HOME/secrets/api-tokens; `gateway config` shows the file)",
        }
    }
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            extra = operations.get((path, method)) or _inbound_operation(path, method)
            if "requestBody" in extra:
                operation["requestBody"] = extra["requestBody"]
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation error: ours is a 400 outcome
            responses.update(extra.get("responses", {}))
            if path not in PUBLIC_PATHS:
                operation["security"] = [{BEARER: []}]
                responses.update(_outcomes(_PROTECTED))
    # FastAPI's HTTPValidationError is never answered (request.invalid is an outcome)
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)


def _inbound_operation(path: str, method: str) -> dict[str, Any]:
    """The inbound endpoint's bodies (docs/inbound.md): a partner's Bundle, the SMART
    token request, a referral rejection's optional Parameters."""
    bodies = {
        ("/fhir", "post"): (FHIR_JSON, "a transaction or batch Bundle from a partner"),
        ("/auth/token", "post"): (
            "application/x-www-form-urlencoded",
            "grant_type=client_credentials, client_assertion_type, client_assertion, scope",
        ),
        ("/fhir/Task/{task_id}/$reject", "post"): (
            FHIR_JSON,
            "Parameters with 'reason' (valueString), unless ?reason= gives it: a rejection "
            "needs a reason ($accept and $complete take no body)",
        ),
    }
    if (path, method) not in bodies:
        return {}
    media, text = bodies[(path, method)]
    return {
        "requestBody": {
            "required": not path.startswith("/fhir/Task/"),  # or ?reason=
            "description": text,
            "content": {media: {"schema": {"type": "object"}}},
        }
    }

"""What fails on today's main and is being fixed on other branches (issue 8).

The ONE place the fuzz tests tolerate a failure. Each entry is an expected failure
(``xfail(strict=False)``): once the fix is merged, delete its entry here and the tests
hold the input to the harness's rule again. Nothing else in tests/fuzz/ is weakened.
"""

from __future__ import annotations

_VARIANTS_MODEL = (
    "variants input the FHIR models cannot type: exception from gateway/validation/_models.py "
    "instead of an IntakeError (issue 8, crashes)"
)

# Regression inputs (path under tests/fuzz/regressions/) that still crash today's main.
KNOWN_FAILING: dict[str, str] = {
    "variants/unknown-resource-type": "Bundle entry of resourceType Foo: ValueError (issue 8)",
    "variants/entry-without-resource-type": _VARIANTS_MODEL,
    "variants/empty-resource-type": _VARIANTS_MODEL,
    "variants/unknown-contained-type": _VARIANTS_MODEL,
    "variants/dict-in-hashable-place": _VARIANTS_MODEL,
    "variants/deeply-nested-resource": (
        "a Bundle entry whose resource is a 900-deep list passes validation; copying it: "
        "RecursionError"
    ),
    "variants/primitive-extension-not-object": (
        "NaN (not JSON) accepted as a primitive's extension `_text`: AttributeError in the models"
    ),
    "dicom/unknown-vr-study-uid.dcm": "unknown DICOM VR: NotImplementedError (issue 8)",
    "dicom/unknown-vr-series-number.dcm": "unknown DICOM VR: NotImplementedError (issue 8)",
    "dicom/unknown-vr-study-id.dcm": "unknown DICOM VR read by the view: NotImplementedError",
    "zip/version-8-8.zip": "zip needing version 8.8 to extract: NotImplementedError (issue 8)",
    "zip/empty-member-name.zip": "zip member with an empty name: IndexError (issue 8)",
}

# Failures the bounded run in `make test` meets on today's main, by (format, family):
# the family is the exception type and the gateway file it left from (Failure.family),
# "timeout <gateway file>" for a hang, "memory" for a blow-up.
KNOWN_FAILING_FAMILIES: dict[tuple[str, str], str] = {
    ("variants", "ValueError gateway/validation/_models.py"): _VARIANTS_MODEL,
    ("variants", "KeyError gateway/validation/_models.py"): _VARIANTS_MODEL,
    ("variants", "TypeError gateway/validation/_models.py"): _VARIANTS_MODEL,
    ("variants", "AttributeError gateway/validation/_models.py"): _VARIANTS_MODEL,
    ("variants", "RecursionError gateway/reports/_document.py"): "deeply nested input",
    ("dicom", "NotImplementedError gateway/intake/dicom/_reader.py"): "unknown DICOM VR",
    ("dicom", "NotImplementedError gateway/intake/dicom/_view.py"): "unknown DICOM VR",
    ("zip", "IndexError gateway/intake/dicom/_reader.py"): "zip member with an empty name",
    ("zip", "NotImplementedError gateway/intake/dicom/_reader.py"): (
        "zip needing an unsupported version (8.8, 25.5...), or a DICOM element of unknown VR"
    ),
}

"""What the rendered report says, block by block (shared by the HTML and the PDF), and
the HTML page: one column per language (views), each in its own font.

Every text of a block is in one language, so each is set in that language's font cut
(rules.fonts: Hong Kong Traditional in the HK face, Simplified in SC). The HTML embeds
a subset of each face it uses (``_webfont.py``), so it renders without system fonts or
network. Everything that comes from the report is escaped: names, findings and codes
are data.
"""

from __future__ import annotations

from html import escape
from string import Template

from ._view import ReportView
from ._webfont import font_faces

__all__ = [
    "DETAILS",
    "detail_rows",
    "footer_spans",
    "header_lines",
    "institution_rows",
    "joined",
    "radiologist_lines",
    "render_html",
    "signature_fields",
]


def joined(values: list[str | None], sep: str = " / ") -> str | None:
    """Distinct non-empty values in order ('男 / Male'; one date once)."""
    seen: list[str] = []
    for value in values:
        if value and value not in seen:
            seen.append(value)
    return sep.join(seen) if seen else None


def header_lines(views: list[ReportView]) -> list[list[tuple[ReportView, str]]]:
    """Per institution (performer first), its name in each view's language (a name
    shown once when two languages write it alike), with the view it is written in."""
    lines = []
    for n, (key, name) in enumerate(views[0].institutions):
        names: list[tuple[ReportView, str]] = []
        for view in views:
            match = next((nm for k, nm in view.institutions if k == key), None)
            if match is None and n < len(view.institutions):
                match = view.institutions[n][1]
            shown = match or name
            if all(shown != other for _, other in names):
                names.append((view, shown))
        lines.append(names)
    return lines


def institution_rows(view: ReportView) -> list[str]:
    """Who did what: where the examination was performed, who reported it."""
    reported = " / ".join(view.reported_at) or (
        view.label("not_reported") if view.pending else None
    )
    return [
        view.field("performed_at", " / ".join(view.performed_at) or None),
        view.field("interpreted_at", reported),
    ]


DETAILS = ("name", "sex", "birth_date", "mrn", "exam", "study_date", "accession", "status")


def detail_value(view: ReportView, key: str) -> str | None:
    value: str | None = getattr(view, "patient" if key == "name" else key)
    return value


def detail_rows(view: ReportView, limit: int | None = None) -> list[str]:
    """The patient and exam details, then the report number: 'label: value' each."""
    rows = []
    for key, value in (
        *((k, detail_value(view, k)) for k in DETAILS),
        ("report_number", view.report_number),
    ):
        if value and limit and len(value) > limit:
            value = value[: limit - 1] + "…"
        rows.append(view.field(key, value))
    return rows


_ROLE = {
    "local": "local_radiologist",
    "expert": "expert_radiologist",
    "radiologist": "radiologist",
}


def _role(view: ReportView, role: str) -> str:
    return view.label(_ROLE[role])


def radiologist_lines(view: ReportView) -> list[str]:
    """Each radiologist of this language's report with role and institution, then this
    language's issue time; a pending language says it is not reported yet."""
    if view.pending and not view.signers:
        return [view.label("not_reported")]
    lines = []
    for signer in view.signers:
        where = f"（{signer.institution}）" if view.chinese else f" ({signer.institution})"
        lines.append(f"{_role(view, signer.role)}{view.colon}{signer.name}")
        if signer.institution:
            lines[-1] += where
    lines.append(view.field("issued", view.issued))
    return lines


def signature_fields(view: ReportView) -> list[list[str]]:
    """Per signer of this language's report, the fields of its signature block (name,
    role, institution, time): where the signing step places the signature. A report
    that names no radiologist gets one block signed by no one ('—'), not 'not yet
    reported': it is (and no one else's name may stand in)."""
    if not view.signers and not view.pending:
        return [
            [
                view.field("signature_name", None),
                view.field("signature_role", None),
                view.field("signature_institution", None),
                view.field("signature_time", view.issued),
            ]
        ]
    return [
        [
            view.field("signature_name", signer.name),
            view.field("signature_role", _role(view, signer.role)),
            view.field("signature_institution", signer.institution),
            view.field("signature_time", view.issued),
        ]
        for signer in view.signers
    ]


def footer_spans(
    views: list[ReportView], page: str | None = None, pages: str = ""
) -> list[tuple[ReportView, str]]:
    """The footer: the report number (in the first language), then page x of y in each
    language on paged media (the PDF)."""
    spans = [(views[0], views[0].field("report_number", views[0].report_number))]
    if page is not None:
        spans += [(v, v.label("page").format(page=page, pages=pages)) for v in views]
    return spans


def _lang(view: ReportView) -> str:
    return f'lang="{escape(view.lang)}"'


def _column(view: ReportView, body: str) -> str:
    return f'<div class="col" {_lang(view)}>{body}</div>'


def _lines(texts: list[str]) -> str:
    return "".join(f"<p>{escape(t)}</p>" for t in texts)


def render_html(template: str, views: list[ReportView]) -> bytes:
    title = joined([v.label("title") for v in views]) or ""
    institutions = "\n".join(
        '<div class="institution">'
        + "<br>".join(
            f'<span class="{"cobrand" if n else "name"}" {_lang(view)}>{escape(name)}</span>'
            for n, (view, name) in enumerate(names)
        )
        + "</div>"
        for names in header_lines(views)
    )
    titles = " / ".join(f"<span {_lang(v)}>{escape(v.label('title'))}</span>" for v in views)
    roles = "".join(_column(v, _lines(institution_rows(v))) for v in views)
    details = "".join(_column(v, _lines(detail_rows(v))) for v in views)
    sections = []
    for view in views:
        parts = []
        for key, texts in (("findings", view.findings), ("impression", (view.impression,))):
            parts.append(f"<h2>{escape(view.label(key))}</h2>")
            shown = [t for t in texts if t]
            if view.pending and not shown:
                parts.append(f'<p class="pending">{escape(view.label("pending"))}</p>')
            for text in shown:
                parts.append(f'<div class="text">{escape(text)}</div>')
        sections.append(_column(view, "".join(parts)))
    radiologists = "".join(_column(v, _lines(radiologist_lines(v))) for v in views)
    signatures = []
    for view in views:
        boxes = [
            f'<div class="signature"><h3>{escape(view.label("signature"))}</h3>'
            f'{_lines(fields)}<div class="sign-here"></div></div>'
            for fields in signature_fields(view)
        ] or [f'<p class="pending">{escape(view.label("not_reported"))}</p>']
        signatures.append(_column(view, "".join(boxes)))
    footer = " · ".join(
        f"<span {_lang(view)}>{escape(text)}</span>" for view, text in footer_spans(views)
    )
    body = {
        "institutions": institutions,
        "titles": titles,
        "roles": roles,
        "details": details,
        "sections": "".join(sections),
        "radiologists": radiologists,
        "signatures": "".join(signatures),
        "footer": footer,
    }
    page = Template(template).substitute(
        lang=escape(views[0].lang),
        title=escape(title),
        columns=str(len(views)),
        fonts=font_faces(views, _texts(views, body)),
        **body,
    )
    return page.encode("utf-8")


def _texts(views: list[ReportView], body: dict[str, str]) -> dict[str, str]:
    """Per font cut, the characters its spans show (the subset each embedded font
    needs): every language's text, read from the views' blocks."""
    texts: dict[str, list[str]] = {}
    for view in views:
        texts.setdefault(view.cut, []).extend(
            [
                *(name for line in header_lines(views) for v, name in line if v is view),
                view.label("title"),
                *institution_rows(view),
                *detail_rows(view),
                view.label("findings"),
                view.label("impression"),
                view.label("pending"),
                *view.findings,
                view.impression or "",
                *radiologist_lines(view),
                view.label("signature"),
                view.label("not_reported"),
                *(f for fields in signature_fields(view) for f in fields),
                *(text for v, text in footer_spans(views, "0123456789") if v is view),
                " /·",
            ]
        )
    return {cut: "".join(parts) for cut, parts in texts.items()}

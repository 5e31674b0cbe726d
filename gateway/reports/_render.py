"""The rendered report as HTML: one column per language (views), co-branded header.

Everything that comes from the report is escaped: names, findings and codes are data.
"""

from __future__ import annotations

from html import escape
from string import Template

from ._view import ReportView

__all__ = ["header_lines", "joined", "render_html", "signer_line"]


def joined(values: list[str | None], sep: str = " / ") -> str | None:
    """Distinct non-empty values in order ('男 / Male'; one date once)."""
    seen: list[str] = []
    for value in values:
        if value and value not in seen:
            seen.append(value)
    return sep.join(seen) if seen else None


def header_lines(views: list[ReportView]) -> list[list[str]]:
    """Per institution (performer first), its name in each view's language."""
    lines = []
    for n, (key, name) in enumerate(views[0].institutions):
        names = []
        for view in views:
            match = next((nm for k, nm in view.institutions if k == key), None)
            if match is None and n < len(view.institutions):
                match = view.institutions[n][1]
            names.append(match or name)
        lines.append([nm for i, nm in enumerate(names) if nm not in names[:i]])
    return lines


def signer_line(view: ReportView) -> str:
    people = [
        f"{s.name}（{s.institution}）" if s.institution and view.lang != "en" else s.name
        for s in view.signers
    ]
    if view.lang == "en":
        people = [f"{s.name} ({s.institution})" if s.institution else s.name for s in view.signers]
    return f"{view.label('signed_by')}: {'; '.join(people) or view.label('none')}"


DETAILS = ("name", "sex", "birth_date", "mrn", "exam", "study_date", "accession", "status")


def detail_value(view: ReportView, key: str) -> str | None:
    value = {
        "name": view.patient,
        "sex": view.sex,
        "birth_date": view.birth_date,
        "mrn": view.mrn,
        "exam": view.exam,
        "study_date": view.study_date,
        "accession": view.accession,
        "status": view.status,
    }[key]
    return value


def render_html(template: str, views: list[ReportView]) -> bytes:
    title = joined([v.label("title") for v in views]) or ""
    institutions = "\n".join(
        '<div class="institution">'
        + "<br>".join(
            f'<span class="{"cobrand" if n else "name"}">{escape(name)}</span>'
            for n, name in enumerate(names)
        )
        + "</div>"
        for names in header_lines(views)
    )
    rows = []
    for key in DETAILS:
        label = joined([v.label(key) for v in views]) or key
        value = joined([detail_value(v, key) for v in views]) or views[0].label("none")
        rows.append(f"<tr><th>{escape(label)}</th><td>{escape(value)}</td></tr>")
    sections = ['<div class="columns">']
    for view in views:
        sections.append(f'<section lang="{escape(view.lang)}">')
        for key, texts in (("findings", view.findings), ("impression", (view.impression,))):
            sections.append(f"<h2>{escape(view.label(key))}</h2>")
            shown = [t for t in texts if t]
            if view.pending and not shown:
                sections.append(f'<p class="pending">{escape(view.label("pending"))}</p>')
            for text in shown:
                sections.append(f'<div class="text">{escape(text)}</div>')
        sections.append("</section>")
    sections.append("</div>")
    signers = [f'<p lang="{escape(v.lang)}">{escape(signer_line(v))}</p>' for v in views]
    issued = joined([v.issued for v in views])
    if issued:
        label = joined([v.label("issued") for v in views]) or ""
        signers.append(f"<p>{escape(f'{label}: {issued}')}</p>")
    page = Template(template).substitute(
        lang=escape(views[0].lang),
        title=escape(title),
        columns=str(len(views)),
        institutions=institutions,
        details="\n".join(rows),
        sections="\n".join(sections),
        signers="\n".join(signers),
    )
    return page.encode("utf-8")

"""The auditor's verification report (``gateway verify --report OUT.html|OUT.pdf``): one
page per file, in Chinese and English, labels from labels.yaml."""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

from ._labels import label
from ._verify import FileReport

__all__ = ["report_html", "report_pdf", "write_report"]


def _rows(file: FileReport) -> list[tuple[str, list[tuple[str, str]]]]:
    """The page of one file as (heading, [(label, value)]) sections."""
    verdict = label("report", "valid" if file.ok else "invalid")
    head = [
        (label("report", "file"), file.source),
        (label("report", "result"), verdict),
        (label("report", "patient"), file.patient or label("report", "none")),
        (label("report", "signed_content"), "; ".join(file.resources) or label("report", "none")),
    ]
    if file.problem:
        head.append((label("checks", file.problem.name), file.problem.message))
    sections = [(label("report", "title"), head)]
    for sig in file.signatures:
        rows = [
            (label("report", "signer"), sig.signer),
            (label("report", "institution"), sig.institution),
            (
                label("report", "role"),
                label("roles", sig.role) if sig.role else (sig.role_display or "?"),
            ),
            (label("report", "time"), sig.time or "?"),
            (label("report", "algorithm"), sig.algorithm or "?"),
            (label("report", "chain"), " → ".join(sig.chain) or label("report", "none")),
        ]
        for check in sig.checks:
            outcome = label("report", "passed" if check.ok else "failed")
            rows.append(
                (
                    label("checks", check.name),
                    f"{outcome}: {check.message}" + (f" [{check.code}]" if check.code else ""),
                )
            )
        sections.append((f"{label('report', 'signature')} {sig.index} · {sig.where}", rows))
    return sections


def report_html(files: list[FileReport]) -> bytes:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        "<!DOCTYPE html><html lang='zh-Hans'><head><meta charset='utf-8'>",
        f"<title>{html.escape(label('report', 'title'))}</title><style>",
        "section.page{page-break-after:always;margin-bottom:3em}",
        "table{border-collapse:collapse;width:100%}td,th{border:1px solid #999;padding:4px;"
        "text-align:left;vertical-align:top}th{width:28%;background:#eee}",
        ".ok{color:#060}.bad{color:#a00}</style></head><body>",
    ]
    for file in files:
        css = "ok" if file.ok else "bad"
        parts.append(f"<section class='page {css}'>")
        for heading, rows in _rows(file):
            parts.append(f"<h2>{html.escape(heading)}</h2><table>")
            for key, value in rows:
                parts.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>")
            parts.append("</table>")
        parts.append(f"<p>{html.escape(label('report', 'generated'))}: {now}</p></section>")
    parts.append("</body></html>")
    return "".join(parts).encode("utf-8")


def report_pdf(files: list[FileReport]) -> bytes:
    from fpdf import FPDF

    from ._font import font_file

    pdf = FPDF(format="A4")
    pdf.add_font("cjk", fname=font_file())
    pdf.set_auto_page_break(True, margin=15)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    for file in files:
        pdf.add_page()
        for heading, rows in _rows(file):
            pdf.set_font("cjk", size=13)
            pdf.multi_cell(0, 8, heading, new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("cjk", size=8)
            for key, value in rows:
                pdf.set_x(pdf.l_margin)
                pdf.multi_cell(0, 5, f"{key}: {value}", new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        pdf.set_font("cjk", size=7)
        pdf.multi_cell(
            0, 5, f"{label('report', 'generated')}: {now}", new_x="LMARGIN", new_y="NEXT"
        )
    return bytes(pdf.output())


def write_report(path: Path, files: list[FileReport]) -> None:
    data = report_pdf(files) if path.suffix.lower() == ".pdf" else report_html(files)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)

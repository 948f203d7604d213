"""A study's tables as the report shows them, and as Jupyter shows them.

The tables are written by their own steps as CSV (the data) and Markdown (what a reader sees: headline columns,
intervals formatted, the ranking rule stated). The report renders the Markdown, so every table reads the same in
``tables/<name>/<table>.md``, in the report and in a notebook; ``markdown_html`` is the small converter for the
Markdown our table writers produce (paragraphs, ``-`` lists, ``**bold**``, `` `code` ``, pipe tables).

>>> from mechunlearn.report import study_tables
>>> tables = study_tables("outputs/micro")   # {"methods/methods": ReportTable, "signature/signature": ...}
>>> tables["signature/signature"]            # renders in Jupyter: the table, then the head of its CSV
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = ["ReportTable", "markdown_html", "study_tables", "TABLE_ORDER"]

# The order of the tables in the report; other tables/<name>/ follow alphabetically.
TABLE_ORDER = ("methods", "robustness", "signature", "native")


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def _row_cells(line: str) -> list[str]:
    body = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    cells = re.split(r"(?<!\\)\|", body)
    return [cell.strip().replace("\\|", "|") for cell in cells]


def markdown_html(markdown: str) -> str:
    """HTML of the Markdown our table writers produce (``markdown_table`` and the notes above it)."""
    out: list[str] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if not stripped:
            index += 1
        elif stripped.startswith("|"):
            block = []
            while index < len(lines) and lines[index].strip().startswith("|"):
                block.append(lines[index])
                index += 1
            header, rows = _row_cells(block[0]), [_row_cells(row) for row in block[2:]]
            out.append('<table class="data"><thead><tr>' + "".join(f"<th>{_inline(c)}</th>" for c in header)
                       + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row)
                                                          + "</tr>" for row in rows) + "</tbody></table>")
        elif stripped.startswith("#"):
            level = min(6, len(stripped) - len(stripped.lstrip("#")) + 2)
            out.append(f"<h{level}>{_inline(stripped.lstrip('#').strip())}</h{level}>")
            index += 1
        elif stripped.startswith("- "):
            items = []
            while index < len(lines) and lines[index].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[index].strip()[2:])}</li>")
                index += 1
            out.append('<ul class="note">' + "".join(items) + "</ul>")
        else:
            paragraph = []
            while index < len(lines) and lines[index].strip() and not lines[index].strip().startswith(("|", "#", "- ")):
                paragraph.append(lines[index].strip())
                index += 1
            out.append(f'<p class="note">{_inline(" ".join(paragraph))}</p>')
    return "\n".join(out)


@dataclass
class ReportTable:
    """One table of a study: ``frame`` (its CSV), ``markdown`` (its .md, when written), ``name``."""

    name: str
    frame: pd.DataFrame
    markdown: str = ""

    def html(self) -> str:
        from mechunlearn.views.notebook import table_html

        return markdown_html(self.markdown) if self.markdown else table_html(self.frame, rows=len(self.frame))

    def _repr_html_(self) -> str:
        from mechunlearn.views.notebook import table_html

        shown = markdown_html(self.markdown) if self.markdown else ""
        return f"<div><h4>{html.escape(self.name)}</h4>{shown}{table_html(self.frame, rows=10, title='CSV')}</div>"

    def __repr__(self) -> str:
        return f"ReportTable({self.name!r}, {self.frame.shape[0]} rows x {self.frame.shape[1]} columns)"


def _tables_in(folder: Path, prefix: str) -> dict[str, ReportTable]:
    found = {}
    for path in sorted(folder.glob("*.csv")):
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            frame = pd.DataFrame()
        markdown_path = path.with_suffix(".md")
        found[f"{prefix}/{path.stem}"] = ReportTable(f"{prefix}/{path.stem}", frame,
                                                     markdown_path.read_text() if markdown_path.is_file() else "")
    return found


def study_tables(out: str | os.PathLike) -> dict[str, ReportTable]:
    """Every ``tables/<name>/<table>.csv`` of a study's current steps (``manifest.json``), in report order."""
    from mechunlearn.report.outputs import StudyOutputs

    outputs = StudyOutputs.from_out(out)
    steps = outputs.table_steps()
    names = [name for name in TABLE_ORDER if name in steps] + sorted(set(steps) - set(TABLE_ORDER))
    tables: dict[str, ReportTable] = {}
    for name in names:
        tables.update(_tables_in(steps[name].folder, name))
    return tables

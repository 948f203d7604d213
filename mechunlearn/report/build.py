"""The study's HTML report: one self-contained file, plotly.js and circuitsvis inlined once, opening offline.

Sections, in order: the methods table (forget / retain / MCQ / Truth Ratio / familiarity / collapse, with
intervals); robustness (the attacks' table and relearning curves, when the study has attacks); the brittleness
signature (each cell next to gold's) with its column definitions; the native switch (when the study has the
native model); every analysis' figure over the whole study; the circuitsvis views (per-token forget-loss change,
the attention heads that changed most); provenance. Tables come from the tables steps' Markdown and CSV files,
figures from the CSVs, so the report shows exactly what those files hold.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mechunlearn.report.outputs import StudyOutputs
from mechunlearn.views.page import Page, escape

__all__ = ["ModelViews", "compute_views", "build_report", "write_report", "REPORT_FILE", "VIEWS_FILE"]

REPORT_FILE = "index.html"
VIEWS_FILE = "views.html"


@dataclass
class ModelViews:
    """The circuitsvis views of one model against base, with the data they draw."""

    model_id: str
    tokens: pd.DataFrame                 # token_loss_change: text, position, token, base_nll, model_nll, change
    heads: pd.DataFrame                  # attention_change: layer, head, mean_abs_change, ..., rank, chosen
    token_views: list[Any] = field(default_factory=list)
    attention: Any = None


def compute_views(base, models: dict[str, Any], texts: Sequence[str], *, max_length: int = 48,
                  n_heads: int = 3) -> list[ModelViews]:
    """Views of each model in ``models`` (``{model id: HookedTransformer}``) against ``base`` on ``texts``."""
    from mechunlearn.views.circuits import (attention_change, attention_view, colored_tokens_view,
                                            token_loss_change)
    from mechunlearn.views.palette import display_name

    views = []
    for model_id, model in models.items():
        tokens = token_loss_change(base, model, texts, max_length=max_length)
        heads, head_tokens, base_patterns, model_patterns = attention_change(base, model, texts[0], max_length,
                                                                            n_heads)
        views.append(ModelViews(model_id, tokens, heads,
                                [colored_tokens_view(tokens, index) for index in range(len(texts))],
                                attention_view(heads, head_tokens, base_patterns, model_patterns,
                                               display_name(model_id))))
    return views


# ------------------------------------------------------------------------------------------------- sections
def _tables_section(page: Page, outputs: StudyOutputs, name: str, heading: str, intro: str) -> bool:
    step = outputs.table_steps().get(name)
    if step is None:
        return False
    from mechunlearn.report.tables import markdown_html

    page.heading(heading)
    page.paragraph(intro)
    for path in sorted(step.folder.glob("*.md")):
        page.heading(f"{name}/{path.name}", level=3, anchor=f"t-{name}-{path.stem}")
        page.raw(markdown_html(path.read_text()))
    links = ", ".join(f"<code>tables/{escape(name)}/{escape(path.name)}</code>" for path in sorted(step.folder.glob("*.csv")))
    page.raw(f'<p class="note">Data: {links}.</p>')
    return True


def _signature_section(page: Page, signature: pd.DataFrame | None) -> None:
    from mechunlearn.report.figures import signature_figure
    from mechunlearn.report.signature import SIGNATURE_COLUMNS, signature_cells

    page.heading("Brittleness signature")
    if signature is None or signature.empty:
        page.paragraph("No diagnostics in this study: the signature needs the analyses of base -> gold and base -> "
                       "each unlearned model ([analyses] names).")
        return
    page.paragraph("Seed 003's prediction: post-hoc unlearning shows a small, attention-localized, low-rank, "
                   "nullspace-aligned update, little activation change, low selectivity and more roughness; "
                   "filtering (gold) the opposite. Each cell: mean over the diagnosed seeds [95 % t interval], "
                   "gold's value below it.")
    header, rows = signature_cells(signature)
    markup = ['<table class="data"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for row in rows:
        cells = "".join(f"<td>{escape(value)}" + (f'<span class="gold">{escape(gold)}</span>' if gold else "") + "</td>"
                        for value, gold in row)
        markup.append(f"<tr>{cells}</tr>")
    markup.append("</tbody></table>")
    page.raw("".join(markup))
    columns = [column for column in SIGNATURE_COLUMNS if column.name in signature.columns]
    page.raw('<ul class="note">' + "".join(
        f"<li><b>{escape(c.title)}</b> ({escape(c.level)}; brittle: {escape(c.brittle)}): {escape(c.formula)}</li>"
        for c in columns) + "</ul>")
    page.figure(signature_figure(signature))


def _robustness(page: Page, outputs: StudyOutputs) -> None:
    from mechunlearn.report.figures import curve_figure

    shown = _tables_section(page, outputs, "robustness", "Robustness",
                            "Each attack with one budget on every model, gold included: only the difference to "
                            "gold means recovery.")
    for attack in ("relearn", "retain_finetune"):
        frame = outputs.attack_frame(attack, "headline_curve")
        if frame is not None and not frame.empty:
            if not shown:
                page.heading("Robustness")
                shown = True
            page.figure(curve_figure(frame, f"{attack}: held-out forget-unique facts vs steps (gold dashed)"))


def _native(page: Page, outputs: StudyOutputs) -> None:
    from mechunlearn.report.figures import native_switch_figure, native_switch_frame

    shown = _tables_section(page, outputs, "native", "Native switch",
                            "The natively unlearnable model: a source's sinks switched off, next to the model "
                            "retrained without it.")
    frame = native_switch_frame(outputs.native_csvs())
    if frame is not None:
        if not shown:
            page.heading("Native switch")
        page.figure(native_switch_figure(frame))


def _diagnostics(page: Page, outputs: StudyOutputs) -> None:
    from mechunlearn.views.study_figures import embedded_figures, study_figure

    analyses = outputs.analyses()
    if not analyses:
        return
    page.heading("Diagnostics")
    page.paragraph("Every analysis over the whole study: one colour per model in every panel, forget texts solid "
                   "and retain texts dashed. Per-comparison pages and CSVs: diagnostics/base__to__<model>/.")
    for analysis in analyses:
        page.heading(analysis, level=3, anchor=f"a-{analysis}")
        figure = study_figure(outputs, analysis)
        if figure is not None:
            page.figure(figure)
            continue
        for model_id, folder in outputs.analysis_folders(analysis).items():  # a user's analysis: its own figures
            for html_file in sorted(folder.glob("*.html")):
                for embedded in embedded_figures(html_file):
                    embedded.update_layout(title=f"{analysis}: {model_id}")
                    page.figure(embedded)


def _views(page: Page, views: Sequence[ModelViews]) -> None:
    from mechunlearn.views.palette import display_name

    if not views:
        return
    page.heading("Views")
    page.paragraph("Per-token change of the next-token loss on forget texts, model minus base (red: harder after "
                   "unlearning, i.e. forgotten; blue: easier), and the attention heads whose pattern on the first "
                   "text moved most (base, then the model). Data: report/views/*.csv.")
    for view in views:
        page.heading(f"{display_name(view.model_id)} vs base", level=3, anchor=f"v-{view.model_id}")
        for rendered in view.token_views:
            page.circuitsvis(rendered)
        if view.attention is not None:
            chosen = view.heads[view.heads["chosen"]]
            page.paragraph("Heads: " + ", ".join(f"L{r.layer}H{r.head} (mean |ΔA| {r.mean_abs_change:.3g})"
                                                 for r in chosen.itertuples()))
            page.circuitsvis(view.attention)


def _provenance(page: Page, outputs: StudyOutputs) -> None:
    from mechunlearn.storage import read_json

    manifest_path = outputs.out / "manifest.json"
    if not manifest_path.is_file():
        return
    manifest = read_json(manifest_path)
    environment = manifest.get("environment", {})
    versions = ", ".join(f"{name} {version}" for name, version in environment.get("versions", {}).items())
    page.heading("Provenance")
    page.raw(f'<p class="note">Study <code>{escape(str(manifest.get("study")))}</code>, key '
             f'<code>{escape(str(manifest.get("study_key")))}</code>, {len(manifest.get("steps", []))} steps, '
             f'executor {escape(str(manifest.get("executor")))}. {escape(versions)}; device '
             f'{escape(str(environment.get("device")))}, dtype {escape(str(environment.get("dtype")))}. Every '
             "step's record: manifest.json and &lt;step&gt;/step.json.</p>")


def build_report(outputs: StudyOutputs, title: str, *, signature: pd.DataFrame | None = None,
                 views: Sequence[ModelViews] = ()) -> Page:
    page = Page(title)
    models = ", ".join(escape(model_id) for model_id in outputs.models)
    page.raw(f'<p class="note">Models: {models}. Output directory: <code>{escape(str(outputs.out))}</code>.</p>')
    _tables_section(page, outputs, "methods", "Methods",
                    "Forget / retain / MCQ / Truth Ratio / familiarity / collapse per model and method "
                    "configuration: the mean over seeds [95 % t interval over seeds]; base and gold are one model. "
                    "When the MCQ items carry subjects (MMLU / WMDP files), subjects_mcq_<set> gives the accuracy "
                    "per subject next to the overall.")
    _robustness(page, outputs)
    _signature_section(page, signature)
    _native(page, outputs)
    _diagnostics(page, outputs)
    _views(page, views)
    _provenance(page, outputs)
    return page


def write_report(outputs: StudyOutputs, directory: str | os.PathLike, title: str, *,
                 signature: pd.DataFrame | None = None, views: Sequence[ModelViews] = ()) -> dict[str, Any]:
    """``directory/index.html`` (the report), ``views.html`` (the views alone) and the views' data as CSV."""
    from mechunlearn.storage import atomic_write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_report(outputs, title, signature=signature, views=views).write(directory / REPORT_FILE)
    written = [REPORT_FILE]
    if views:
        page = Page(f"{title}: views")
        _views(page, views)
        page.write(directory / VIEWS_FILE, navigation=False)
        written.append(VIEWS_FILE)
        for view in views:
            for name, frame in (("tokens", view.tokens), ("heads", view.heads)):
                relative = f"views/{view.model_id}.{name}.csv"
                atomic_write_text(directory / relative, frame.to_csv(index=False))
                written.append(relative)
    return {"report": REPORT_FILE, "written": written,
            "bytes": (directory / REPORT_FILE).stat().st_size}

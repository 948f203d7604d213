"""The report's own interactive figures (beyond each analysis' study view): the signature next to gold, the
relearning curves next to gold, the native switch. All use ``mechunlearn.views.palette``."""

from __future__ import annotations

import math

import pandas as pd

from mechunlearn.views.palette import Legend, color_for, display_name, style_figure

__all__ = ["signature_figure", "curve_figure", "native_switch_figure", "native_switch_frame"]


def signature_figure(table: pd.DataFrame):
    """One panel per signature column: a bar per model with its seed interval, gold's value as a dotted line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from mechunlearn.report.signature import SIGNATURE_COLUMNS

    columns = [column for column in SIGNATURE_COLUMNS if column.name in table.columns]
    n_cols = min(4, len(columns)) or 1
    n_rows = max(1, math.ceil(len(columns) / n_cols))
    figure = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[column.title for column in columns],
                           vertical_spacing=0.16)
    legend = Legend()
    for index, column in enumerate(columns):
        row, col = index // n_cols + 1, index % n_cols + 1
        for record in table.to_dict("records"):
            value = record[column.name]
            if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
                continue
            low, high = record[f"{column.name}/low"], record[f"{column.name}/high"]
            error = None
            if not (math.isnan(low) or math.isnan(high)):
                error = dict(type="data", symmetric=False, array=[high - value], arrayminus=[value - low])
            trace = go.Bar(x=[record["model"]], y=[value], error_y=error, marker=dict(color=color_for(record["model"])))
            legend.add(figure, trace, record["model"], row=row, col=col)
        gold = table[f"{column.name}/gold"].iloc[0] if len(table) else math.nan
        if not (math.isnan(gold) or math.isinf(gold)):
            figure.add_hline(y=gold, line=dict(color=color_for("gold"), dash="dot"), row=row, col=col)
    figure.update_xaxes(showticklabels=False)
    return style_figure(figure, "Brittleness signature (dotted: gold)", height=300 * n_rows + 120)


def curve_figure(frame: pd.DataFrame, title: str, category: str = "unique"):
    """Accuracy on held-out forget facts against optimiser steps of an attack, one line per model."""
    import plotly.graph_objects as go

    rows = frame[frame["category"] == category] if "category" in frame.columns else frame
    figure = go.Figure()
    legend = Legend()
    for model_id, group in rows.groupby("model_id", sort=False):
        group = group.sort_values("step")
        trace = go.Scatter(x=group["step"].tolist(), y=group["accuracy"].tolist(), mode="lines+markers",
                           line=dict(color=color_for(model_id), dash="dash" if model_id == "gold" else "solid"))
        legend.add(figure, trace, display_name(model_id))
    figure.update_xaxes(title_text="optimiser steps of the attack")
    figure.update_yaxes(title_text=f"forget-{category} accuracy", range=[0, 1.02])
    return style_figure(figure, title, height=420)


def native_switch_frame(tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The native switch table: accuracy per (model, category), from the first native CSV that has them."""
    for name in ("switch", "switch_vs_gold", *tables):
        frame = tables.get(name)
        if frame is None or "category" not in frame.columns or "model" not in frame.columns:
            continue
        value = next((column for column in ("mean", "accuracy") if column in frame.columns), None)
        if value is not None:
            return frame.rename(columns={value: "accuracy"})
    return None


def native_switch_figure(frame: pd.DataFrame):
    """Grouped bars: accuracy per fact category (unique / shared / inferred), a bar per model, a panel per source."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sources = list(dict.fromkeys(frame["source"])) if "source" in frame.columns else [None]
    figure = make_subplots(rows=1, cols=len(sources), subplot_titles=[str(s) for s in sources if s is not None] or None)
    legend = Legend()
    for index, source in enumerate(sources, start=1):
        rows = frame if source is None else frame[frame["source"] == source]
        for model, group in rows.groupby("model", sort=False):
            error = None
            if {"low", "high"} <= set(group.columns):
                error = dict(type="data", symmetric=False, array=(group["high"] - group["accuracy"]).tolist(),
                             arrayminus=(group["accuracy"] - group["low"]).tolist())
            trace = go.Bar(x=group["category"].astype(str).tolist(), y=group["accuracy"].tolist(), error_y=error,
                           marker=dict(color=color_for(model)))
            legend.add(figure, trace, str(model), row=1, col=index)
    figure.update_layout(barmode="group")
    figure.update_yaxes(title_text="exact cloze accuracy", range=[0, 1.05])
    return style_figure(figure, "Native switch: facts kept after switching a source off", height=420)

"""The interactive figure of every analysis over a whole study: all models in one figure, one colour each.

A diagnostics step saves one figure per comparison (base -> gold, base -> npo, ...); a reader comparing methods
needs them side by side, so each function here draws one figure per analysis from the study's CSVs
(``mechunlearn.report.outputs.StudyOutputs``): one trace per model coloured by ``palette.color_for``, forget solid
and retain dashed, one legend for all panels, integer layer axes, the models' display names. An analysis without a
study view here (a user's own) falls back to its per-comparison figures (``embedded_figures``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mechunlearn.views.palette import Legend, color_for, dash_for, display_name, style_figure

__all__ = ["Panel", "layer_lines", "bar_panels", "STUDY_VIEWS", "study_figure", "embedded_figures"]


@dataclass
class Panel:
    """One subplot: ``column`` against layer, rows matching ``where`` (``{column: value}``)."""

    title: str
    column: str
    where: dict[str, Any] = field(default_factory=dict)
    y_title: str = ""


def _select(frame: pd.DataFrame, where: dict[str, Any]) -> pd.DataFrame:
    for key, value in where.items():
        if key in frame.columns:
            frame = frame[frame[key].isin(value if isinstance(value, (list, tuple, set)) else [value])]
    return frame


def layer_lines(frame: pd.DataFrame, panels: Sequence[Panel], title: str, *, dash_by: str | None = None,
                x: str = "layer", reference: dict[str, float] | None = None, names: dict[str, str] | None = None):
    """Lines of ``panel.column`` over ``x`` per model (``model_id`` column), one subplot per panel.

    ``dash_by``: a column whose values set the dash (split: forget solid, retain dashed); ``reference``: a
    horizontal dotted line per panel title (chance accuracy)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = names or {}
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[panel.title for panel in panels])
    legend = Legend()
    for index, panel in enumerate(panels, start=1):
        rows = _select(frame, panel.where)
        if panel.column not in rows.columns:
            continue
        dashed = bool(dash_by) and dash_by in rows.columns and rows[dash_by].notna().all()
        keys = ["model_id"] + ([dash_by] if dashed else [])
        for key, group in rows.groupby(keys, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            model_id = str(key[0])
            series = names.get(model_id, display_name(model_id))
            name = series if len(key) == 1 else f"{series} / {key[1]}"
            group = group.groupby(x, as_index=False)[panel.column].mean().sort_values(x)
            if group[panel.column].isna().all():
                continue
            trace = go.Scatter(x=group[x].tolist(), y=group[panel.column].tolist(), mode="lines+markers",
                               line=dict(color=color_for(model_id), dash=dash_for(key[1]) if len(key) > 1 else "solid"))
            legend.add(figure, trace, name, row=1, col=index)
        if reference and panel.title in reference:
            figure.add_hline(y=reference[panel.title], line=dict(color=color_for("chance"), dash="dot"), row=1,
                             col=index)
        figure.update_xaxes(title_text=x, row=1, col=index)
        if panel.y_title:
            figure.update_yaxes(title_text=panel.y_title, row=1, col=index)
    return style_figure(figure, title, height=420)


def bar_panels(frame: pd.DataFrame, panels: Sequence[Panel], title: str, *, x: str, names: dict[str, str] | None = None):
    """Grouped bars of ``panel.column`` per value of ``x``, one bar per model, one subplot per panel."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = names or {}
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[panel.title for panel in panels])
    legend = Legend()
    for index, panel in enumerate(panels, start=1):
        rows = _select(frame, panel.where)
        if panel.column not in rows.columns:
            continue
        for model_id, group in rows.groupby("model_id", sort=False):
            group = group.groupby(x, as_index=False, sort=False)[panel.column].mean()
            trace = go.Bar(x=[str(value) for value in group[x]], y=group[panel.column].tolist(),
                           marker=dict(color=color_for(model_id)))
            legend.add(figure, trace, names.get(model_id, display_name(model_id)), row=1, col=index)
        if panel.y_title:
            figure.update_yaxes(title_text=panel.y_title, row=1, col=index)
    figure.update_layout(barmode="group")
    return style_figure(figure, title, height=420)


# ------------------------------------------------------------------------------------------- one view each
def _weights(outputs):
    frame = outputs.pair_frame("weight_comparison", "per_layer")
    if frame is None:
        return None
    frame = frame[frame["layer"] >= 0]
    return layer_lines(frame, [Panel("attention: ‖ΔW‖/‖W‖", "dW_fro_layer_rel", {"group": "attn"}),
                               Panel("MLP: ‖ΔW‖/‖W‖", "dW_fro_layer_rel", {"group": "mlp"}),
                               Panel("attention: stable rank of ΔW", "mean_dW_stable_rank", {"group": "attn"}),
                               Panel("MLP: stable rank of ΔW", "mean_dW_stable_rank", {"group": "mlp"})],
                       "Weight change by layer (base -> model)")


def _mlp_attn(outputs):
    frame = outputs.pair_frame("mlp_attn_analysis")
    if frame is None:
        return None
    return layer_lines(frame, [Panel("MLP / attention (relative ‖ΔW‖)", "mlp_attn_ratio_rel"),
                               Panel("MLP share of ‖ΔW‖²", "mlp_share")], "Where the update sits: MLP vs attention")


def _null_space_analysis(outputs):
    frame = outputs.pair_frame("null_space_analysis")
    if frame is None:
        return None
    return layer_lines(frame, [Panel("effective rank of ΔW (fraction)", "dW_effective_rank_frac"),
                               Panel("top-k energy of ΔW", "dW_topk_energy_ratio"),
                               Panel("subspace alignment W vs W'", "subspace_alignment")],
                       "Null space and subspaces of ΔW (mean over sampled matrices per layer)")


def _mlp_nullspace(outputs):
    frame = outputs.pair_frame("mlp_nullspace")
    if frame is None:
        return None
    frame = frame.assign(informative_null=[row["null_space_fraction"] if row["component"] == "in"
                                           else row["row_null_fraction"] for _, row in frame.iterrows()])
    return layer_lines(frame, [Panel("W_in: share of ΔW in W's left null space", "informative_null", {"component": "in"}),
                               Panel("W_out: share of ΔW in W's null space", "informative_null", {"component": "out"})],
                       "MLP updates off W's range (null-space share)")


def _activation_comparison(outputs):
    frame = outputs.pair_frame("activation_comparison")
    if frame is None:
        return None
    frame = frame.assign(relative_dh=frame["mean_dh_L2"] / frame["model_a_norm_L2"],
                         norm_ratio=frame["model_b_norm_L2"] / frame["model_a_norm_L2"])
    return layer_lines(frame, [Panel("E‖h − h_base‖ / E‖h_base‖", "relative_dh"),
                               Panel("E‖h‖ / E‖h_base‖ (L2)", "norm_ratio")],
                       "Activation change by layer (forget solid, retain dashed)", dash_by="split")


def _selectivity_view(analysis: str, title: str, split_column: str, split_title: str):
    def view(outputs):
        selectivity = outputs.pair_frame(analysis, "selectivity")
        main = outputs.pair_frame(analysis)
        if selectivity is None and main is None:
            return None
        frames = []
        if selectivity is not None:
            frames.append(selectivity.assign(table="selectivity"))
        if main is not None:
            frames.append(main.assign(table="main"))
        frame = pd.concat(frames, ignore_index=True)
        return layer_lines(frame, [Panel("selectivity (forget / retain)", "selectivity", {"table": "selectivity"}),
                                   Panel(split_title, split_column, {"table": "main"})],
                           title, dash_by="split")
    return view


def _lipschitz(outputs):
    frame = outputs.pair_frame("lipschitzness", "ratios")
    if frame is None:
        return None
    columns = [c for c in frame.columns if c.endswith("_ratio")]
    long = frame.melt(id_vars=["model_id", "split"], value_vars=columns, var_name="metric", value_name="ratio")
    long["metric"] = long["metric"].str.replace("_ratio", "", regex=False)
    return bar_panels(long, [Panel("forget texts: model / base", "ratio", {"split": "forget"}),
                             Panel("retain texts: model / base", "ratio", {"split": "retain"})],
                      "Local sensitivity (Lipschitz) relative to base", x="metric")


def _per_model_lines(analysis: str, panels: Sequence[Panel], title: str, dash_by: str | None = None,
                     chance: str | None = None):
    def view(outputs):
        frame = outputs.model_frame(analysis)
        if frame is None or frame.empty:
            return None
        reference = None
        if chance and chance in frame.columns:
            reference = {panel.title: float(frame[chance].mean()) for panel in panels}
        return layer_lines(frame, panels, title, dash_by=dash_by, reference=reference)
    return view


def _sae(outputs):
    frame = outputs.pair_frame("sae_features")
    if frame is None or frame.empty or "status" not in frame.columns:
        return None
    counts = frame.groupby(["model_id", "status"], as_index=False).size().rename(columns={"size": "features"})
    return bar_panels(counts, [Panel("base SAE features in the model", "features")], "SAE features: dies / survives "
                      "/ appears", x="status")


STUDY_VIEWS: dict[str, Callable[[Any], Any]] = {
    "weight_comparison": _weights,
    "mlp_attn_analysis": _mlp_attn,
    "null_space_analysis": _null_space_analysis,
    "mlp_nullspace": _mlp_nullspace,
    "activation_comparison": _activation_comparison,
    "activation_covariance": _selectivity_view("activation_covariance", "Covariance spectra: Wasserstein distance "
                                               "to base", "wasserstein", "Wasserstein distance to base's spectrum"),
    "row_space_projection": _selectivity_view("row_space_projection", "Activations in the row space of ΔW_in",
                                              "projection_share", "share of activation in row space"),
    "lipschitzness": _lipschitz,
    "activation_separation": _per_model_lines("activation_separation",
                                              [Panel("forget vs retain AUC", "auc"),
                                               Panel("centroid cosine distance", "cosine_distance")],
                                              "Forget vs retain separation by layer"),
    "linear_probes": _per_model_lines("linear_probes", [Panel("probe accuracy", "accuracy"),
                                                        Panel("selectivity over majority", "selectivity")],
                                      "Topic probe (forget vs retain) by layer"),
    "knowledge_probe": _per_model_lines("knowledge_probe", [Panel("all forget facts", "accuracy", {"category": "all"}),
                                                            Panel("unique facts", "accuracy", {"category": "unique"})],
                                        "Knowledge probe accuracy by layer", chance="chance"),
    "logit_lens": _per_model_lines("logit_lens", [Panel("forget MCQ", "accuracy", {"domain": "forget"}),
                                                  Panel("retain MCQ", "accuracy", {"domain": "retain"})],
                                   "Logit lens: MCQ accuracy by layer", chance="chance"),
    "tuned_lens": _per_model_lines("tuned_lens", [Panel("forget MCQ", "accuracy", {"domain": "forget"}),
                                                  Panel("retain MCQ", "accuracy", {"domain": "retain"})],
                                   "Tuned lens: MCQ accuracy by layer", chance="chance"),
    "sae_features": _sae,
}


def study_figure(outputs, analysis: str):
    """The study-wide figure of ``analysis``, or None when it has no study view (or no data)."""
    view = STUDY_VIEWS.get(analysis)
    return view(outputs) if view is not None else None


_NEWPLOT = re.compile(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*")


def embedded_figures(html_path: str | Path) -> list[Any]:
    """The plotly figures inside a page written by ``write_html`` (its ``Plotly.newPlot(id, data, layout)``
    calls), rebuilt as Figures: how an analysis without a study view still reaches the report."""
    import plotly.graph_objects as go

    text = Path(html_path).read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    figures = []
    for match in _NEWPLOT.finditer(text):
        try:
            data, end = decoder.raw_decode(text, match.end())
            rest = text[end:].lstrip()
            layout = decoder.raw_decode(rest[1:].lstrip())[0] if rest.startswith(",") else {}
        except ValueError:
            continue
        figures.append(go.Figure(data=data, layout=layout))
    return figures

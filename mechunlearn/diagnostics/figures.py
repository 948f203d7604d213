"""How every interactive diagnostics figure looks: one colour per model (or series) everywhere, one legend,
integer layer axes, and one shared copy of plotly.js for a whole folder tree of figures.

* ``color_for(name)``: a model's colour, the same in every panel of every figure. Known names have fixed colours
  (``base`` grey-black, ``gold`` gold, each unlearning method its own; a study's ``<method>-<key>-s<seed>`` ids
  take their method's colour, so the seeds of one method read as one series); any other name gets a colour from
  a stable hash of the name (never from the order of traces, which differs between figures).
* ``Legend``: adds traces so each name appears once in the legend for the whole figure (``legendgroup``), and
  clicking it hides that model in every panel.
* ``integer_layer_axes(figure)``: layer axes tick at whole layers only (no "layer 2.5").
* ``shared_plotlyjs(root)`` writes ``plotly-<version>.min.js`` once under ``root``; ``write_figure_html`` makes a
  page that references it by a relative path, so 36 figures hold plotly.js once instead of 36 times (4.6 MB
  each) and still open offline from the file system.
"""

from __future__ import annotations

import numbers
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["color_for", "SPLIT_DASH", "Legend", "integer_layer_axes", "layer_figure", "shared_plotlyjs",
           "write_figure_html", "PLOTLYJS_NAME"]

# Fixed colours: reference models first, then one per unlearning method (registry names), then series that recur
# across figures (weight groups, components). Chosen from plotly's qualitative palettes, distinguishable in print.
_FIXED = {
    "base": "#3b3b3b", "gold": "#d4a017", "native": "#17becf",
    "ga_simple": "#e377c2", "ga": "#d62728", "grad_diff": "#ff7f0e", "dpo": "#8c564b", "npo": "#1f77b4",
    "simnpo": "#aec7e8", "rmu": "#2ca02c", "cb": "#98df8a", "lat": "#9467bd", "cb_lat": "#c5b0d5",
    "wt_dist": "#7f7f7f", "wt_dist_reg": "#bcbd22", "whp": "#ff9896",
    "attn": "#1f77b4", "mlp": "#d62728", "embed": "#7f7f7f",
    "forget": "#d62728", "retain": "#1f77b4", "chance": "#9e9e9e",
}
_HASHED = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3", "#1b9e77",
           "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
_STUDY_ID = re.compile(r"^(?P<method>[a-z_]+)-[0-9a-f]{6,}-s\d+$")  # docs/study.md: <method>-<config key>-s<seed>
SPLIT_DASH = {"forget": "solid", "retain": "dash"}
PLOTLYJS_NAME = "plotly-{version}.min.js"


def color_for(name: str) -> str:
    """The colour of a model or series name: fixed for known names, else a stable hash of the name."""
    name = str(name)
    if name in _FIXED:
        return _FIXED[name]
    match = _STUDY_ID.match(name)
    if match and match["method"] in _FIXED:
        return _FIXED[match["method"]]
    for prefix in ("gold-", "native-"):  # per-source gold standards and switched native models
        if name.startswith(prefix):
            return _FIXED[prefix[:-1]]
    return _HASHED[zlib.crc32(name.encode()) % len(_HASHED)]


def dash_for(split: str) -> str:
    return SPLIT_DASH.get(split, "dot")


class Legend:
    """One legend entry per name for the whole figure: ``add(figure, trace, name, row, col)`` shows the first."""

    def __init__(self) -> None:
        self.shown: set[str] = set()

    def add(self, figure, trace, name: str, row: int | None = None, col: int | None = None) -> None:
        trace.update(name=name, legendgroup=name, showlegend=name not in self.shown)
        self.shown.add(name)
        if row is None:
            figure.add_trace(trace)
        else:
            figure.add_trace(trace, row=row, col=col)


def integer_layer_axes(figure, max_ticks: int = 17) -> None:
    """Layer axes tick at integers, at most ``max_ticks`` of them (every k-th layer).

    For a figure whose x axes show layers (one of them is titled "layer"; in a column of subplots with a shared x
    axis only the bottom one carries the title, so all of them are set).
    """
    axes = []
    figure.for_each_xaxis(axes.append)
    if not any(axis.title.text == "layer" for axis in axes):
        return
    layers = [float(value) for trace in figure.data if getattr(trace, "x", None) is not None
              for value in trace.x if isinstance(value, numbers.Real) and not isinstance(value, bool)]
    span = (max(layers) - min(layers)) if layers else 1
    step = max(1, -(-int(span) // (max_ticks - 1)))
    for axis in axes:
        axis.update(tickmode="linear", tick0=0, dtick=step, tickformat="d")


def layer_figure(frame: pd.DataFrame, panels: Sequence[tuple[str, str]], title: str, *, color_by: str,
                 dash_by: str | None = None, labels: dict[str, str] | None = None):
    """Interactive per-layer line figure: one subplot per ``(column, subplot title)``, layer on the x axis.

    One trace per value of ``color_by`` (coloured by ``color_for`` of its label) and, if given, per value of
    ``dash_by`` (forget solid, retain dashed); ``labels`` renames values (a pair's "other" -> the model's name).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels = labels or {}
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[panel_title for _, panel_title in panels])
    keys = [color_by] + ([dash_by] if dash_by else [])
    legend = Legend()
    for column_index, (column, _) in enumerate(panels, start=1):
        for key, group in frame.groupby(keys, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            series = str(labels.get(key[0], key[0]))
            name = series if not dash_by else f"{series} / {key[1]}"
            group = group.sort_values("layer")
            if group[column].isna().all():
                continue  # a series this panel does not show (e.g. the distance between models in a norm panel)
            trace = go.Scatter(x=group["layer"].tolist(), y=group[column].tolist(), mode="lines+markers",
                               line=dict(color=color_for(series), dash=dash_for(key[1]) if dash_by else "solid"))
            legend.add(figure, trace, name, row=1, col=column_index)
        figure.update_xaxes(title_text="layer", row=1, col=column_index)
    figure.update_layout(title=title, hovermode="x unified")
    integer_layer_axes(figure)
    return figure


# --------------------------------------------------------------------------------------------------- plotly.js
def shared_plotlyjs(root: str | os.PathLike) -> Path:
    """``root/plotly-<version>.min.js``, written once (atomically); the version in the name keeps pages made by
    another plotly from loading a script they were not written for."""
    import plotly
    from plotly.offline import get_plotlyjs

    from mechunlearn.storage import atomic_write_text

    path = Path(root) / PLOTLYJS_NAME.format(version=plotly.__version__)
    if not path.is_file():
        atomic_write_text(path, get_plotlyjs())
    return path


def write_figure_html(figure, staging_path: Path, final_path: Path, plotlyjs: str | os.PathLike | None) -> None:
    """Write ``figure`` as a full HTML page at ``staging_path``, to be moved to ``final_path``.

    ``plotlyjs=None`` embeds plotly.js; a path makes the page load it from there, relative to ``final_path``
    (the page's place once published), so moving the whole tree keeps it working.
    """
    if plotlyjs is None:
        figure.write_html(staging_path, include_plotlyjs=True, full_html=True)
        return
    relative = os.path.relpath(Path(plotlyjs).resolve(), Path(final_path).resolve().parent)
    figure.write_html(staging_path, include_plotlyjs=Path(relative).as_posix(), full_html=True)

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

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

# One palette for the whole toolkit (report, attacks, native, diagnostics): mechunlearn.views.palette.
from mechunlearn.views.palette import SPLIT_DASH, Legend, color_for, dash_for, integer_layer_axes

__all__ = ["color_for", "SPLIT_DASH", "Legend", "integer_layer_axes", "layer_figure", "shared_plotlyjs",
           "write_figure_html", "PLOTLYJS_NAME"]

PLOTLYJS_NAME = "plotly-{version}.min.js"


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

"""One look for every figure of a study: a colour per model (or series) shared by every panel, one legend entry
per series, integer layer axes and the models' real names.

* ``color_for(name)``: fixed colours for the reference models (``base``, ``gold``, ``native``), for each unlearning
  method (registry names) and for series that recur (``attn`` / ``mlp``, ``forget`` / ``retain``); a study's
  ``<method>-<config key>-s<seed>`` id and a table label ``<method>-<config key>`` take their method's colour, so
  the seeds of one method read as one series; ``gold-<source>`` / ``native-...`` take gold's / native's; any other
  name gets a colour from a stable hash of the name (never from the order of traces, which differs by figure).
* ``Legend``: adds traces so that each name appears once in the legend of the whole figure (``legendgroup``:
  clicking it hides that series in every panel).
* ``integer_layer_axes(figure)``: layer axes tick at whole layers only (no "layer 2.5").
* ``display_name(model_id)``: ``npo-3f2a1c9e-s0`` -> ``npo (s0)``, the name a reader knows.

The same colours feed the static figures (``mechunlearn.figures``), the report, the attacks' and the diagnostics'
plots: a model is one colour wherever it appears.
"""

from __future__ import annotations

import numbers
import re
import zlib

__all__ = ["color_for", "dash_for", "marker_for", "display_name", "method_of", "Legend", "integer_layer_axes",
           "style_figure", "FIXED_COLORS", "SPLIT_DASH", "FONT"]

# Reference models, then one colour per unlearning method, then series that recur across figures; from plotly's
# and ColorBrewer's qualitative palettes, distinguishable in print. Keys are registry names (methods/).
FIXED_COLORS = {
    "base": "#3b3b3b", "gold": "#d4a017", "native": "#17becf",
    "ga_simple": "#e377c2", "ga": "#d62728", "grad_diff": "#ff7f0e", "dpo": "#8c564b", "npo": "#1f77b4",
    "simnpo": "#aec7e8", "rmu": "#2ca02c", "cb": "#98df8a", "lat": "#9467bd", "cb_lat": "#c5b0d5",
    "wt_dist": "#7f7f7f", "wt_dist_reg": "#bcbd22", "whp": "#ff9896",
    "attn": "#1f77b4", "mlp": "#d62728", "embed": "#7f7f7f",
    "forget": "#d62728", "retain": "#1f77b4", "chance": "#9e9e9e",
    "unique": "#d62728", "shared": "#9467bd", "inferred": "#2ca02c", "all": "#3b3b3b",
}
_HASHED = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3", "#1b9e77",
           "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
# docs/study.md: unlearned model ids are <method>-<config key>-s<seed>; table rows <method> or <method>-<key>
_STUDY_ID = re.compile(r"^(?P<method>[a-z_]+)-(?P<key>[0-9a-f]{6,})(?:-s(?P<seed>\d+))?$")
SPLIT_DASH = {"forget": "solid", "retain": "dash"}
FONT = "Helvetica, Arial, sans-serif"


def method_of(name: str) -> str | None:
    """The method of a study id or table label (``npo-3f2a1c9e-s0`` -> ``npo``), or None."""
    match = _STUDY_ID.match(str(name))
    return match["method"] if match else None


def color_for(name: str) -> str:
    """The colour of a model or series name: fixed for known names, else a stable hash of the name."""
    name = str(name)
    if name in FIXED_COLORS:
        return FIXED_COLORS[name]
    method = method_of(name)
    if method in FIXED_COLORS:
        return FIXED_COLORS[method]
    for prefix in ("gold-", "native-"):  # per-source gold standards and switched native models
        if name.startswith(prefix):
            return FIXED_COLORS[prefix[:-1]]
    return _HASHED[zlib.crc32(name.encode()) % len(_HASHED)]


def dash_for(split: str) -> str:
    """Line dash of a split: forget solid, retain dashed, anything else dotted."""
    return SPLIT_DASH.get(str(split), "dot")


def marker_for(name: str) -> str:
    """A marker per seed of a study id (so seeds of one colour stay apart), a circle otherwise."""
    match = _STUDY_ID.match(str(name))
    seed = int(match["seed"]) if match and match["seed"] is not None else 0
    return ("circle", "square", "diamond", "triangle-up", "cross", "x")[seed % 6]


def display_name(model_id: str) -> str:
    """``npo-3f2a1c9e-s0`` -> ``npo (s0)``; ``npo-3f2a1c9e`` stays (a grid's configurations differ by key)."""
    match = _STUDY_ID.match(str(model_id))
    if match and match["seed"] is not None:
        return f"{match['method']} (s{match['seed']})"
    return str(model_id)


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

    Applies to a figure whose x axes show layers (one of them titled "layer"; in a column of subplots sharing an x
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


def style_figure(figure, title: str | None = None, height: int | None = None):
    """The shared layout: white template, one horizontal legend below the panels, integer layer axes."""
    figure.update_layout(template="plotly_white", font=dict(family=FONT, size=12),
                         legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
                         margin=dict(l=60, r=20, t=60 if title else 30, b=80))
    if title is not None:
        figure.update_layout(title=title)
    if height is not None:
        figure.update_layout(height=height)
    integer_layer_axes(figure)
    return figure

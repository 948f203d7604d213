"""Results that draw themselves in Jupyter, and plotly set up so notebooks exported to HTML keep their figures.

* ``notebook_mode()`` sets plotly's default renderer to ``plotly_mimetype+notebook``: JupyterLab reads the plotly
  mimetype, and the ``notebook`` part puts plotly.js into the notebook ONCE (in the output of the cell that calls
  it), so ``jupyter nbconvert --to html`` keeps every figure, offline. Nothing happens at import time; call it
  once at the top of a notebook.
* ``HTMLReprMixin``: ``_repr_html_`` for any object with ``.figure()`` and ``.frame`` (an ``AnalysisResult``, an
  attack result): the figure and the head of the table. After ``notebook_mode()`` the figure uses the plotly.js
  the notebook already holds; before it, the figure carries its own copy (self-contained, 4.6 MB).
* ``table_html(frame)``: the head of a table as HTML, with the row count.
"""

from __future__ import annotations

from typing import Any

__all__ = ["notebook_mode", "notebook_mode_active", "figure_html", "table_html", "result_html", "HTMLReprMixin",
           "NOTEBOOK_RENDERER"]

NOTEBOOK_RENDERER = "plotly_mimetype+notebook"
_STATE = {"active": False}


def notebook_mode(renderer: str = NOTEBOOK_RENDERER) -> str:
    """Make plotly render for notebooks that are also exported to HTML; returns the renderer set.

    In a running IPython kernel, the ``notebook`` renderer is activated now (plotly.js goes into this cell's
    output), so results shown afterwards by ``_repr_html_`` need not embed their own copy.
    """
    import plotly.io as pio

    pio.renderers.default = renderer
    _STATE["active"] = "notebook" in renderer.split("+")
    try:
        from IPython import get_ipython
    except ImportError:  # plain Python: nothing to display into
        return renderer
    if get_ipython() is not None and hasattr(pio.renderers, "_activate_pending_renderers"):
        # plotly activates pending renderers on the first fig.show(); doing it here puts plotly.js in the
        # notebook before any _repr_html_ output relies on it (and plotly does not add it a second time)
        pio.renderers._activate_pending_renderers()
    return renderer


def notebook_mode_active() -> bool:
    return _STATE["active"]


def figure_html(figure) -> str:
    """A figure as an HTML fragment: relying on the notebook's plotly.js after ``notebook_mode()``, else with its
    own copy (never a CDN: notebooks are opened offline)."""
    return figure.to_html(full_html=False, include_plotlyjs=not notebook_mode_active(),
                          config={"displaylogo": False, "responsive": True})


def table_html(frame, rows: int = 10, title: str | None = None) -> str:
    """The first ``rows`` rows of ``frame`` as an HTML table, with the shape."""
    import html

    caption = f"<b>{html.escape(title)}</b> " if title else ""
    shown = frame.head(rows).to_html(index=False, float_format=lambda value: f"{value:.4g}", na_rep="n/a",
                                     border=0, classes="dataframe")
    more = f" (first {rows} shown)" if len(frame) > rows else ""
    return (f"<div>{caption}<span style='color:#666'>{len(frame)} rows x {frame.shape[1]} columns{more}</span>"
            f"{shown}</div>")


def result_html(result: Any, rows: int = 10) -> str:
    """What a result shows in Jupyter: its figure, then the head of its main table."""
    import html

    name = getattr(result, "name", type(result).__name__)
    parts = [f"<div><h4 style='margin:4px 0'>{html.escape(str(name))}</h4>"]
    try:
        parts.append(figure_html(result.figure()))
    except Exception as error:  # a figure that cannot be drawn must not hide the table
        parts.append(f"<p style='color:#a00'>figure unavailable: {html.escape(str(error))}</p>")
    frame = getattr(result, "frame", None)
    if frame is not None:
        parts.append(table_html(frame, rows))
    parts.append("</div>")
    return "".join(parts)


class HTMLReprMixin:
    """Adds ``_repr_html_`` (figure + head of ``frame``) to a result class: ``class AnalysisResult(HTMLReprMixin)``."""

    def _repr_html_(self) -> str:
        return result_html(self)

"""Figures and views shared by the report, the attacks, the diagnostics and notebooks.

* ``palette``: one colour per model or series in every panel (``color_for``), one legend entry per series
  (``Legend``), integer layer axes (``integer_layer_axes``), display names (``display_name``), the shared layout
  (``style_figure``).
* ``page.Page``: one self-contained HTML page of many figures and circuitsvis views, each library inlined once.
* ``study_figures``: each analysis' figure over a whole study (all models in one figure).
* ``circuits``: circuitsvis views (per-token forget-loss change, attention heads that changed).
* ``notebook``: ``notebook_mode()`` (plotly's ``plotly_mimetype+notebook`` renderer, set only when called) and
  ``HTMLReprMixin`` (``_repr_html_``: the figure and the head of the table).

Importing this package imports no plotly, torch or circuitsvis and changes no setting.
"""

from mechunlearn.views.notebook import HTMLReprMixin, notebook_mode, result_html, table_html
from mechunlearn.views.palette import (Legend, color_for, dash_for, display_name, integer_layer_axes, method_of,
                                       style_figure)

__all__ = ["color_for", "dash_for", "display_name", "method_of", "Legend", "integer_layer_axes", "style_figure",
           "notebook_mode", "HTMLReprMixin", "result_html", "table_html"]

"""One self-contained HTML page holding many figures: plotly.js once, the circuitsvis bundle once.

``plotly``'s ``write_html`` embeds its 4.6 MB library in every file and circuitsvis' ``str(html)`` imports its
bundle from a CDN (unpkg), which fails offline. A :class:`Page` inlines each library once, in ``<head>``, and every
figure or view after it is a ``<div>`` with a short script that draws into it, so the page opens from the file
system with no network and its size is the two libraries plus the data.
"""

from __future__ import annotations

import html
import itertools
import os
from pathlib import Path
from typing import Any

__all__ = ["Page", "plotlyjs_source", "circuitsvis_bundle", "figure_div", "strip_circuitsvis_bundle", "escape"]

escape = html.escape
_COUNTER = itertools.count()

_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1180px; padding: 0 24px 48px;
       color: #222; line-height: 1.45; }
h1 { margin-top: 28px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { margin-top: 24px; }
nav a { margin-right: 14px; }
table.data { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
table.data th, table.data td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
table.data th { background: #f4f4f4; } table.data td:first-child, table.data th:first-child { text-align: left; }
table.data td .gold { color: #8a6d00; font-size: 11px; display: block; }
p.note, div.note { color: #555; font-size: 13px; }
div.figure { margin: 8px 0 20px; } div.cv { margin: 8px 0 20px; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def plotlyjs_source() -> str:
    """The plotly.js bundle of the installed plotly (what ``write_html(include_plotlyjs=True)`` inlines)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def circuitsvis_bundle() -> str:
    """circuitsvis' browser bundle (``dist/cdn/iife.js``: defines the global ``CircuitsVis``), as circuitsvis'
    own ``render_local`` inlines it (closing script tags removed); its source-map comment is dropped too, so no
    browser asks for a file that is not there."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    source = path.read_text(encoding="utf-8").replace("</script>", "")
    return "\n".join(line for line in source.splitlines() if not line.startswith("//# sourceMappingURL="))


def strip_circuitsvis_bundle(local_src: str) -> str:
    """A circuitsvis ``RenderedHTML.local_src`` without its inlined bundle: the ``<div>`` and the
    ``CircuitsVis.render(...)`` call, for a page that loads the bundle once (``Page.circuitsvis``)."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    bundle = path.read_text(encoding="utf-8").replace("</script>", "")
    if bundle not in local_src:
        raise ValueError("this circuitsvis view does not inline circuitsvis' bundle (local_src expected)")
    return local_src.replace(bundle, "")


def figure_div(figure, div_id: str | None = None) -> str:
    """A plotly figure as a ``<div>`` + script that needs plotly.js already on the page."""
    div_id = div_id or f"figure-{next(_COUNTER)}"
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                          config={"displaylogo": False, "responsive": True})


class Page:
    """An HTML page built in order: ``heading``, ``paragraph``, ``raw``, ``figure``, ``circuitsvis``; ``render``
    puts plotly.js and the circuitsvis bundle in ``<head>`` once each, only when a figure / view needs them."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.uses_plotly = False
        self.uses_circuitsvis = False

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        anchor = anchor or "s-" + "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
        if level == 2:
            self.toc.append((anchor, text))
        self.parts.append(f'<h{level} id="{escape(anchor)}">{escape(text)}</h{level}>')

    def paragraph(self, text: str, css_class: str = "note") -> None:
        """A paragraph of plain text (escaped)."""
        self.parts.append(f'<p class="{css_class}">{escape(text)}</p>')

    def raw(self, markup: str) -> None:
        """Markup written by our code (tables, lists); never user text unescaped."""
        self.parts.append(markup)

    def figure(self, figure) -> None:
        self.uses_plotly = True
        self.parts.append(f'<div class="figure">{figure_div(figure)}</div>')

    def circuitsvis(self, rendered) -> None:
        """A circuitsvis view (``circuitsvis.tokens.colored_tokens(...)``, ``circuitsvis.attention...``): its
        render call, drawing with the bundle this page inlines once. The wrapper closes circuitsvis' ``<div/>``
        (not self-closing in HTML), so React's render replaces only what is inside it."""
        self.uses_circuitsvis = True
        self.parts.append(f'<div class="cv">{strip_circuitsvis_bundle(rendered.local_src)}</div>')

    def render(self, navigation: bool = True) -> str:
        head = [f"<meta charset=\"utf-8\"><title>{escape(self.title)}</title><style>{_CSS}</style>"]
        if self.uses_plotly:
            head.append(f'<script type="text/javascript">{plotlyjs_source()}</script>')
        if self.uses_circuitsvis:
            head.append(f'<script type="text/javascript">{circuitsvis_bundle()}</script>')
        nav = ""
        if navigation and self.toc:
            nav = "<nav>" + "".join(f'<a href="#{escape(a)}">{escape(t)}</a>' for a, t in self.toc) + "</nav>"
        body = "\n".join(self.parts)
        return (f"<!DOCTYPE html>\n<html><head>{''.join(head)}</head>\n<body><h1>{escape(self.title)}</h1>"
                f"{nav}\n{body}\n</body></html>\n")

    def write(self, path: str | os.PathLike, **render_options: Any) -> Path:
        from mechunlearn.storage import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.render(**render_options))
        return path

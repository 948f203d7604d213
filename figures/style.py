"""One static style for every publication figure: a paper column wide, 8 pt text, embedded TrueType fonts.

* Size: ``COLUMN_WIDTH`` = 3.4 in (one column of a two-column paper: ICML 3.25 in, NeurIPS/ACL ~3.3 in) by
  ``PANEL_HEIGHT`` per row of panels; ``FULL_WIDTH`` = 7.0 in for a figure across both columns.
* Fonts: DejaVu Sans (ships with matplotlib, so every machine draws the same glyphs), embedded as TrueType in PDF
  (``pdf.fonttype = 42``: journals reject Type 3 fonts) and kept as text in SVG (``svg.fonttype = "none"``).
* Colours: ``mechunlearn.views.palette.color_for`` (the interactive figures' colours), one legend per figure,
  integer layer ticks, the models' display names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["COLUMN_WIDTH", "FULL_WIDTH", "PANEL_HEIGHT", "RC", "FORMATS", "PNG_DPI", "style", "new_figure",
           "finish", "save_figure", "integer_layers", "LINESTYLE"]

COLUMN_WIDTH = 3.4
FULL_WIDTH = 7.0
PANEL_HEIGHT = 1.75
PNG_DPI = 300
FORMATS = ("pdf", "svg", "png")
LINESTYLE = {"forget": "-", "retain": "--"}

RC = {
    "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "font.size": 7.5,
    "axes.titlesize": 7.5, "axes.labelsize": 7.5, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "axes.linewidth": 0.6, "lines.linewidth": 1.1, "lines.markersize": 2.8, "xtick.major.width": 0.6,
    "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5, "axes.grid": True,
    "grid.linewidth": 0.3, "grid.alpha": 0.5, "savefig.bbox": "tight", "savefig.pad_inches": 0.02,
    "figure.dpi": 100, "svg.hashsalt": "mechunlearn", "path.simplify": True,
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The figures' rcParams for the duration of a block (the caller's matplotlib settings are left alone)."""
    import matplotlib

    with matplotlib.rc_context(RC):
        yield


def new_figure(n_panels: int, columns: int | None = None, width: float = COLUMN_WIDTH, sharey: bool = False):
    """A figure of ``n_panels`` axes in rows of ``columns`` (default: all in one row up to 2, else 2 per row)."""
    from matplotlib.figure import Figure

    columns = columns or (n_panels if n_panels <= 2 else 2)
    rows = -(-n_panels // columns)
    figure = Figure(figsize=(width, PANEL_HEIGHT * rows + 0.45), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, sharey=sharey).ravel()
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return figure, list(axes[:n_panels])


def integer_layers(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    axis.set_xlabel("layer")


def finish(figure, axes: Sequence, columns: int | None = None) -> None:
    """One legend for the whole figure (first occurrence of each label across panels), below the panels."""
    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels and not label.startswith("_"):
                handles.append(handle)
                labels.append(label)
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=columns or min(4, len(labels)),
                      handlelength=1.8, columnspacing=1.0)


def save_figure(figure, directory: str | os.PathLike, name: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """``directory/name.<format>`` for each format, each written atomically; returns the paths."""
    import io

    from mechunlearn.storage import atomic_write_bytes

    written = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown figure format {fmt!r}; use {', '.join(FORMATS)}")
        buffer = io.BytesIO()
        # a fixed creation date keeps the PDF and SVG bytes equal between runs of the same data
        metadata = {"pdf": {"CreationDate": None, "Creator": "mechunlearn"}, "svg": {"Date": None, "Creator": "mechunlearn"},
                    "png": {"Software": "mechunlearn"}}[fmt]
        figure.savefig(buffer, format=fmt, dpi=PNG_DPI if fmt == "png" else None, metadata=metadata)
        path = Path(directory) / f"{name}.{fmt}"
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written

"""``make_figures``: every figure of ``FIGURES`` (and the WHP alpha sweep) for a study's outputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mechunlearn.figures.panels import FIGURES, whp_alpha_sweep_figure
from mechunlearn.figures.style import FORMATS, save_figure, style
from mechunlearn.figures.whp import SWEEP_FILE

__all__ = ["make_figures"]


def make_figures(outputs, directory: str | os.PathLike | None = None, *, formats: Sequence[str] = FORMATS,
                 whp_sweep: pd.DataFrame | None = None, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Write each figure the study has data for as ``directory/<name>.<format>``; returns the index
    (``{"figures": {name: [files]}, "skipped": [names], "formats"}``, also written as ``index.json``).

    ``outputs``: a study's output directory or a ``StudyOutputs``; ``directory`` defaults to ``OUT/figures``.
    ``whp_sweep``: the alpha sweep's frame; by default ``whp_alpha_sweep.csv`` from ``directory`` or from the
    study's ``OUT/figures/`` (the figures step computes it from the study's whp run). ``only``: a subset of
    figure names.
    """
    from mechunlearn.report.outputs import StudyOutputs
    from mechunlearn.storage import atomic_write_text, write_json

    if not isinstance(outputs, StudyOutputs):
        outputs = StudyOutputs.from_out(outputs)
    directory = Path(directory) if directory is not None else outputs.out / "figures"
    directory.mkdir(parents=True, exist_ok=True)
    unknown = set(only or ()) - set(FIGURES) - {"whp_alpha_sweep"}
    if unknown:
        raise ValueError(f"unknown figure(s) {sorted(unknown)}; known: {', '.join([*FIGURES, 'whp_alpha_sweep'])}")
    sweep_path = directory / SWEEP_FILE
    if whp_sweep is not None:
        atomic_write_text(sweep_path, whp_sweep.to_csv(index=False))
    else:
        found = next((path for path in (sweep_path, outputs.out / "figures" / SWEEP_FILE) if path.is_file()), None)
        whp_sweep = pd.read_csv(found) if found is not None else None
    builders = {**FIGURES, "whp_alpha_sweep": lambda _: whp_alpha_sweep_figure(whp_sweep)}
    index: dict[str, Any] = {"figures": {}, "skipped": [], "formats": list(formats)}
    with style():
        for name, build in builders.items():
            if only and name not in only:
                continue
            figure = build(outputs)
            if figure is None:
                index["skipped"].append(name)
                continue
            index["figures"][name] = [path.name for path in save_figure(figure, directory, name, formats)]
    write_json(directory / "index.json", index)
    return index

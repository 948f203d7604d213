"""Step 6, layer-wise MCQ accuracy through the logit lens: at which layer does a model "know" the answers?

Scoring: ``mechunlearn.diagnostics.mcq_by_layer``; the lens: ``mechunlearn.diagnostics.lenses.LogitLens``.
Columns: ``model, domain, layer, accuracy, delta_from_final, chance, n_items, hook``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from mechunlearn.data import MCQItem
from mechunlearn.diagnostics.base import Analysis, AnalysisResult
from mechunlearn.diagnostics.figures import layer_figure
from mechunlearn.diagnostics.lenses import LogitLens
from mechunlearn.diagnostics.mcq_by_layer import layerwise_mcq_accuracy

__all__ = ["LogitLensAnalysis"]


class LogitLensAnalysis(Analysis):
    """Per model: layer-wise MCQ accuracy through the logit lens. ``run(models)`` -> ``AnalysisResult``.

    Options: ``items`` (MCQItems, grouped by their ``domain``) or ``world`` + ``domains`` (default
    ("forget", "retain")), ``batch_size`` (sequences per forward pass), ``choice_prefix`` (" ").
    """

    name = "logit_lens"
    scope = "model"
    kind = "lens"
    inputs = ("mcq",)
    description = "layer-wise multiple-choice accuracy read through the logit lens"
    lens_name = "logit lens"

    def __init__(self, items: Sequence[MCQItem] | None = None, world=None,
                 domains: Sequence[str] = ("forget", "retain"), batch_size: int = 32, choice_prefix: str = " ") -> None:
        if (items is None) == (world is None):
            raise ValueError(f"{self.name}: pass exactly one of items= (MCQItems, e.g. load_mcq(path)) or world= "
                             "(its mcq_items per domain)")
        self.items = list(items) if items is not None else [i for d in domains for i in world.mcq_items(d)]
        if not self.items:
            raise ValueError(f"{self.name}: no MCQ items (domains {list(domains)}); pass non-empty items")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.choice_prefix = batch_size, choice_prefix

    def lens_for(self, model) -> tuple[LogitLens, dict[str, Any]]:
        return LogitLens(model), {}

    def run(self, models: dict[str, Any]) -> AnalysisResult:
        if not models:
            raise ValueError(f"{self.name}: no models given; pass {{name: HookedTransformer}}")
        frames, summary = [], {"lens": self.lens_name, "models": {}}
        for model_name, model in models.items():
            lens, info = self.lens_for(model)
            frame = layerwise_mcq_accuracy(model, self.items, lens, batch_size=self.batch_size,
                                           choice_prefix=self.choice_prefix)
            frames.append(frame.assign(model=model_name))
            summary["models"][model_name] = info | {
                domain: {"final_accuracy": float(group["accuracy"].iloc[-1]),
                         "best_layer": int(group.loc[group["accuracy"].idxmax(), "layer"]),
                         "best_accuracy": float(group["accuracy"].max()), "chance": float(group["chance"].iloc[0])}
                for domain, group in frame.groupby("domain", sort=False)}
        frame = pd.concat(frames, ignore_index=True)
        frame = frame[["model", *[c for c in frame.columns if c != "model"]]]
        return AnalysisResult(self.name, frame, summary=summary, plot=self._plot)

    def _plot(self, result: AnalysisResult):
        return layer_figure(result.frame, [("accuracy", "MCQ accuracy"), ("delta_from_final", "accuracy - final")],
                            f"Layer-wise MCQ accuracy ({self.lens_name}); forget solid, retain dashed",
                            color_by="model", dash_by="domain")

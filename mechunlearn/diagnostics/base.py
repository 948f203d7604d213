"""The three kinds of analysis, their result type and the registry.

* ``WeightAnalysis``: reads two models' weights (``W_Q, W_K, W_V, W_O, W_in, W_out``, embeddings) -> result.
* ``ActivationAnalysis``: declares the hook names it needs and keeps streaming accumulators. The runner
  (``mechunlearn.diagnostics.runner``) does ONE forward pass per (model, split) with every analysis' hooks
  attached and calls ``update`` for each batch. ``scope = "model"`` analyses are fed each model on its own;
  ``scope = "pair"`` analyses get the base and the other model's activations of the same batch.
* Every ``run``/``result`` returns an ``AnalysisResult``: ``.frame`` (pandas), ``.figure()`` (plotly),
  ``.save(dir)`` (CSV + JSON + the figure as standalone HTML that works offline).

Adding an analysis is one file: subclass, set ``name``, and add one line to ``BUILTIN_ANALYSES`` below (or call
``register_analysis`` on your own class).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from torch import Tensor

from mechunlearn.numeric import to_json

__all__ = ["AnalysisResult", "Analysis", "WeightAnalysis", "ActivationAnalysis", "register_analysis",
           "get_analysis", "available_analyses", "ANALYSES", "BUILTIN_ANALYSES", "layer_of"]


@dataclass
class AnalysisResult:
    """Data first: ``frame`` (the main table), optional named ``tables``, a ``summary`` dict, then pictures.

    ``plot`` builds the plotly figure from the data (set by the analysis); ``save`` writes ``<name>.csv`` (and
    one CSV per extra table), ``summary.json`` and ``<name>.html`` atomically into ``directory``.
    """

    name: str
    frame: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    plot: Callable[["AnalysisResult"], Any] | None = None

    def figure(self):
        """A plotly Figure drawn from ``frame``/``tables`` (a plain table view when the analysis has no plot)."""
        import plotly.graph_objects as go

        if self.plot is not None:
            return self.plot(self)
        frame = self.frame.head(200)
        return go.Figure(go.Table(header=dict(values=list(frame.columns)),
                                  cells=dict(values=[frame[c].tolist() for c in frame.columns])))

    def save(self, directory: str | os.PathLike, html: bool = True) -> Path:
        from mechunlearn.storage import atomic_directory

        target = Path(directory)
        with atomic_directory(target) as staging:
            self.frame.to_csv(staging / f"{self.name}.csv", index=False)
            for table_name, table in self.tables.items():
                table.to_csv(staging / f"{table_name}.csv", index=False)
            (staging / "summary.json").write_text(json.dumps(to_json(self.summary), indent=2))
            if html:
                self.figure().write_html(staging / f"{self.name}.html", include_plotlyjs=True, full_html=True)
        return target


class Analysis:
    """Common attributes: ``name`` (registry key and output folder) and ``scope`` ("model" or "pair")."""

    name: ClassVar[str] = ""
    scope: ClassVar[str] = "pair"
    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""


class WeightAnalysis(Analysis):
    """``run(base, other) -> AnalysisResult`` from the two models' weights only."""

    kind = "weight"

    def run(self, base, other) -> AnalysisResult:
        raise NotImplementedError


class ActivationAnalysis(Analysis):
    """Streaming analysis over hook activations, fed by the runner.

    The runner calls, in order: ``start(models)`` once (``models`` maps model names to models; for a pair
    analysis the keys are ``"base"`` and ``"other"``); then per batch of each split ``update(...)``; then
    ``result()``. ``update`` receives ``activations`` = ``{model_name: {hook_name: tensor[batch, pos, ...]}}``
    (detached), the ``split`` name ("forget"/"retain"), and the ``TokenBatch`` (``.tokens``, ``.mask``).
    ``extra_passes`` is True for analyses that run forward passes of their own (Lipschitz perturbs inputs).
    """

    kind = "activation"
    extra_passes: ClassVar[bool] = False

    def hook_names(self, model) -> list[str]:
        raise NotImplementedError

    def start(self, models: dict[str, Any]) -> None:
        self.models = models

    def update(self, split: str, activations: dict[str, dict[str, Tensor]], batch) -> None:
        raise NotImplementedError

    def result(self) -> AnalysisResult:
        raise NotImplementedError


# Built-in analyses: name -> "module:Class", imported lazily (importing the package registers nothing as a side
# effect). Adding one = one file + one line here + its test.
BUILTIN_ANALYSES: dict[str, str] = {
    "weight_comparison": "mechunlearn.diagnostics.weights:WeightComparison",
    "mlp_attn_analysis": "mechunlearn.diagnostics.weights:MLPvsAttention",
    "null_space_analysis": "mechunlearn.diagnostics.subspaces:NullSpaceAnalysis",
    "mlp_nullspace": "mechunlearn.diagnostics.subspaces:MLPNullspaceAlignment",
    "activation_comparison": "mechunlearn.diagnostics.activation_norms:ActivationNorms",
    "activation_separation": "mechunlearn.diagnostics.separation:ActivationSeparation",
    "activation_covariance": "mechunlearn.diagnostics.covariance:ActivationCovariance",
    "row_space_projection": "mechunlearn.diagnostics.row_space:RowSpaceProjection",
    "lipschitzness": "mechunlearn.diagnostics.lipschitz:LocalLipschitz",
    "linear_probes": "mechunlearn.diagnostics.probes:LinearProbes",
    "logit_lens": "mechunlearn.diagnostics.lenses:LogitLensMCQ",
    "tuned_lens": "mechunlearn.diagnostics.lenses:TunedLensMCQ",
    "sae_features": "mechunlearn.diagnostics.sae_features:SAEFeatureDiff",
}
ANALYSES: dict[str, type[Analysis]] = {}  # user-registered analyses


def register_analysis(cls: type[Analysis]) -> type[Analysis]:
    """Register a user's analysis class under ``cls.name`` (usable as a decorator); a taken name is refused."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name; set a class attribute name = '...'")
    if cls.name in BUILTIN_ANALYSES or cls.name in ANALYSES:
        raise ValueError(f"an analysis named {cls.name!r} is already registered")
    ANALYSES[cls.name] = cls
    return cls


def available_analyses() -> list[str]:
    return [*BUILTIN_ANALYSES, *ANALYSES]


def get_analysis(name: str) -> type[Analysis]:
    if name in ANALYSES:
        return ANALYSES[name]
    if name not in BUILTIN_ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; known analyses: {', '.join(available_analyses())}")
    import importlib

    module_name, class_name = BUILTIN_ANALYSES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def layer_of(hook_or_param_name: str) -> int:
    """The block index in a TransformerLens name (``blocks.3.mlp.W_in`` -> 3), or -1 outside the blocks."""
    parts = hook_or_param_name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else -1

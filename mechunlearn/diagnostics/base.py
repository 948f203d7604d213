"""The kinds of analysis, their result type and the registry.

* ``WeightAnalysis``: reads two models' weights (``W_Q, W_K, W_V, W_O, W_in, W_out``, embeddings) -> result.
* ``ActivationAnalysis``: declares the hook names it needs and keeps streaming accumulators. The runner
  (``mechunlearn.diagnostics.runner``) does ONE forward pass per (model, split) with every analysis' hooks
  attached and calls ``update`` for each batch, with the activations of the hooks THAT analysis declared only.
  ``scope = "model"`` analyses are fed each model on its own; ``scope = "pair"`` analyses get the base and the
  other model's activations of the same batch.
* Self-contained analyses (``Analysis`` with a ``run(models)``: the lenses, the knowledge probe) run their own
  passes over their own data (MCQ items, cloze prompts), once per model.
* Every ``run``/``result`` returns an ``AnalysisResult``: ``.frame`` (pandas), ``.figure()`` (plotly),
  ``.save(dir)`` (CSV + JSON + the figure as HTML that works offline).

Each class says what it reads (``inputs``: "texts", "mcq", "facts"; weight analyses nothing but the weights), so
``diagnose`` keys each output by exactly the data it depends on.

Adding an analysis is one file: subclass, set ``name`` and ``description``, and add one line to
``BUILTIN_ANALYSES`` below (or call ``register_analysis`` on your own class).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from torch import Tensor

from mechunlearn.views.notebook import HTMLReprMixin

__all__ = ["AnalysisResult", "Analysis", "WeightAnalysis", "ActivationAnalysis", "register_analysis",
           "get_analysis", "available_analyses", "describe_analyses", "ANALYSES", "BUILTIN_ANALYSES", "layer_of",
           "check_comparable", "ordered_splits", "contrast_splits", "require_started", "require_updates"]


@dataclass
class AnalysisResult(HTMLReprMixin):
    """Data first: ``frame`` (the main table), optional named ``tables``, a ``summary`` dict, then pictures.

    ``plot`` builds the plotly figure from the data (set by the analysis); ``labels`` maps the roles of a pair
    analysis ("base", "other") to the models' real names for the figure (the runner sets it). ``save`` writes
    ``<name>.csv`` (and one CSV per extra table), ``summary.json`` and ``<name>.html`` atomically into
    ``directory``.
    """

    name: str
    frame: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    plot: Callable[["AnalysisResult"], Any] | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def label(self, role: str) -> str:
        """The display name of a model role (``"other"`` -> ``"npo"``); the role itself when none was set."""
        return self.labels.get(role, role)

    def figure(self):
        """A plotly Figure drawn from ``frame``/``tables`` (a plain table view when the analysis has no plot)."""
        import plotly.graph_objects as go

        if self.plot is not None:
            return self.plot(self)
        frame = self.frame.head(200)
        return go.Figure(go.Table(header=dict(values=list(frame.columns)),
                                  cells=dict(values=[frame[c].tolist() for c in frame.columns])))

    def save(self, directory: str | os.PathLike, html: bool = True, *, plotlyjs: str | os.PathLike | None = None,
             step: dict[str, Any] | None = None) -> Path:
        """Write the result into ``directory`` (replaced atomically).

        ``plotlyjs``: where the HTML finds plotly.js. ``None`` embeds it (one self-contained file, ~4.6 MB); a path
        to a shared ``plotly.min.js`` (``figures.shared_plotlyjs(root)``) makes the page reference it relatively,
        so a folder tree of figures holds plotly.js once and still opens offline. ``step``: the record that keys
        this output (``step.json``, see ``docs/study.md``), written in the same atomic move.
        """
        from mechunlearn.diagnostics.figures import write_figure_html
        from mechunlearn.storage import atomic_directory, write_json

        target = Path(directory)
        with atomic_directory(target) as staging:
            self.frame.to_csv(staging / f"{self.name}.csv", index=False)
            for table_name, table in self.tables.items():
                table.to_csv(staging / f"{table_name}.csv", index=False)
            write_json(staging / "summary.json", self.summary)
            if html:
                write_figure_html(self.figure(), staging / f"{self.name}.html", target / f"{self.name}.html",
                                  plotlyjs)
            if step is not None:
                write_json(staging / "step.json", step)
        return target


class Analysis:
    """Common attributes: ``name`` (registry key, module and output folder), ``scope`` ("model" or "pair"), a
    one-line ``description`` (``mechunlearn diagnose --list``) and the data it reads (``inputs``).

    An analysis that is neither a weight nor an activation analysis is self-contained: ``run(models)`` with
    ``models`` = ``{name: HookedTransformer}`` returns one result covering every model.
    """

    name: ClassVar[str] = ""
    scope: ClassVar[str] = "pair"
    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()

    def run(self, models: dict[str, Any]) -> AnalysisResult:
        raise NotImplementedError


class WeightAnalysis(Analysis):
    """``run(base, other) -> AnalysisResult`` from the two models' weights only."""

    kind = "weight"
    inputs = ()

    def run(self, base, other) -> AnalysisResult:  # type: ignore[override]
        raise NotImplementedError


class ActivationAnalysis(Analysis):
    """Streaming analysis over hook activations, fed by the runner.

    The runner calls, in order: ``start(models)`` once (``models`` maps model names to models; for a pair
    analysis the keys are ``"base"`` and ``"other"``); then per batch of each split ``update(...)``; then
    ``result()``. ``update`` receives ``activations`` = ``{model_name: {hook_name: tensor[batch, pos, ...]}}``
    (detached; only the hooks ``hook_names(model)`` declared for that model), the ``split`` name
    ("forget"/"retain"), and the ``TokenBatch`` (``.tokens``, ``.mask``). ``extra_passes`` is True for analyses
    that run forward passes of their own (Lipschitz perturbs inputs).
    """

    kind = "activation"
    inputs = ("texts",)
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
# Each module is named after its analysis, and so is its class.
BUILTIN_ANALYSES: dict[str, str] = {
    "weight_comparison": "mechunlearn.diagnostics.weight_comparison:WeightComparison",
    "mlp_attn_analysis": "mechunlearn.diagnostics.mlp_attn_analysis:MLPAttnAnalysis",
    "null_space_analysis": "mechunlearn.diagnostics.null_space_analysis:NullSpaceAnalysis",
    "mlp_nullspace": "mechunlearn.diagnostics.mlp_nullspace:MLPNullspace",
    "activation_comparison": "mechunlearn.diagnostics.activation_comparison:ActivationComparison",
    "activation_separation": "mechunlearn.diagnostics.activation_separation:ActivationSeparation",
    "activation_covariance": "mechunlearn.diagnostics.activation_covariance:ActivationCovariance",
    "row_space_projection": "mechunlearn.diagnostics.row_space_projection:RowSpaceProjection",
    "lipschitzness": "mechunlearn.diagnostics.lipschitzness:Lipschitzness",
    "linear_probes": "mechunlearn.diagnostics.linear_probes:LinearProbes",
    "knowledge_probe": "mechunlearn.diagnostics.knowledge_probe:KnowledgeProbe",
    "logit_lens": "mechunlearn.diagnostics.logit_lens:LogitLensAnalysis",
    "tuned_lens": "mechunlearn.diagnostics.tuned_lens:TunedLensAnalysis",
    "sae_features": "mechunlearn.diagnostics.sae_features:SAEFeatures",
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


def describe_analyses() -> dict[str, str]:
    """``{name: one-line description}`` of every registered analysis (imports each module)."""
    return {name: get_analysis(name).description for name in available_analyses()}


def layer_of(hook_or_param_name: str) -> int:
    """The block index in a TransformerLens name (``blocks.3.mlp.W_in`` -> 3), or -1 outside the blocks."""
    parts = hook_or_param_name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else -1


def check_comparable(base, other) -> None:
    """Raise a clear error unless the two models have the same architecture and shapes."""
    fields = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab")
    differences = [f"{name}: {getattr(base.cfg, name)} vs {getattr(other.cfg, name)}" for name in fields
                   if getattr(base.cfg, name) != getattr(other.cfg, name)]
    if differences:
        raise ValueError("cannot compare models of different shapes (" + "; ".join(differences) + "); compare "
                         "checkpoints of the same architecture, e.g. a base model and its unlearned version")


# ------------------------------------------------------------------------------ what activation analyses share
def ordered_splits(splits: Sequence[str]) -> list[str]:
    """Forget first, retain second, any other split after them in the order seen (stable frames and plots)."""
    known = [name for name in ("forget", "retain") if name in splits]
    return known + [name for name in splits if name not in known]


def contrast_splits(splits: Sequence[str]) -> tuple[str, str] | None:
    """The (target, control) pair of splits a forget-vs-retain contrast uses, or None with fewer than two."""
    ordered = ordered_splits(splits)
    return (ordered[0], ordered[1]) if len(ordered) >= 2 else None


def require_started(analysis: ActivationAnalysis) -> None:
    if getattr(analysis, "models", None) is None:
        raise ValueError(f"{analysis.name}: start(models) was not called; run the analysis through "
                         "mechunlearn.diagnostics.run_activation_analyses (or run_analyses)")


def require_updates(analysis_name: str, seen_anything: bool) -> None:
    if not seen_anything:
        raise ValueError(f"{analysis_name}: no batches were fed; run it through "
                         "mechunlearn.diagnostics.run_activation_analyses with non-empty forget and retain texts")

"""Step 5, linear probes (a TOPIC probe): at which layer can a linear read-out tell forget text from retain text?

Per model and per residual-stream layer, the **last-token hidden state** of every forget and retain text is the
feature vector of one sample (label 1 = forget, 0 = retain), scored by the cross-validated probe of
``mechunlearn.diagnostics.probing`` (``LogisticRegression(C=1.0, max_iter=1000)``, stratified k-fold, out-of-fold
accuracy and AUC).

What it measures: forget and retain texts differ in their topic and their names, so this probe separates them
from layer 0 on even for the gold model, which never saw the forget data. It is the seed's step 5 kept as the
seed defines it, a measure of how distinct the forget TOPIC is in each layer; whether the model still KNOWS the
forget facts ("forgot" vs "hides") is ``knowledge_probe``'s question.

Columns (``linear_probes.csv``): ``model, layer, accuracy, majority_baseline, selectivity, auc, n_forget,
n_retain, hook``. ``majority_baseline`` = the larger class' share, ``selectivity`` = accuracy - baseline (the
seed's definition). Layers: 0 = embeddings (``include_embeddings=True``), ``l + 1`` = ``blocks.{l}.hook_resid_post``.

Memory: a probe needs all its samples at once, so this analysis keeps rows instead of streaming statistics:
``texts x d_model`` float32 values per layer and model (one row per text, not per token), bounded by the runner's
``max_samples`` texts per split (500 by default: 1000 x 4096 x 4 bytes = 16 MB per layer for a 7B-sized model).

Difference from the seed: the features are standardised inside each training fold before the logistic
regression (see ``probing``); ``standardize=False`` gives the seed's plain ``LogisticRegression``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mechunlearn.diagnostics.base import ActivationAnalysis, AnalysisResult
from mechunlearn.diagnostics.figures import layer_figure
from mechunlearn.diagnostics.layers import residual_stream_hooks
from mechunlearn.diagnostics.probing import forget_vs_retain_probe
from mechunlearn.diagnostics.streaming import last_token_rows

__all__ = ["LinearProbes", "COLUMNS"]

COLUMNS = ["model", "layer", "accuracy", "majority_baseline", "selectivity", "auc", "n_forget", "n_retain", "hook"]


class LinearProbes(ActivationAnalysis):
    """Per model and layer: a cross-validated topic probe of forget vs retain last-token states.

    Options: ``C`` (1.0), ``max_iter`` (1000), ``cv_folds`` (5), ``standardize`` (True), ``seed`` (0),
    ``include_embeddings`` (True: also probe layer 0), ``layers`` (residual-stream layers to probe; default all),
    ``positive_split``/``negative_split`` (the runner's split names, "forget"/"retain").
    """

    name = "linear_probes"
    scope = "model"
    description = "topic probe: forget-vs-retain text classifier on last-token states per layer (not knowledge)"

    def __init__(self, C: float = 1.0, max_iter: int = 1000, cv_folds: int = 5, standardize: bool = True,
                 seed: int = 0, include_embeddings: bool = True, layers: list[int] | None = None,
                 positive_split: str = "forget", negative_split: str = "retain") -> None:
        if C <= 0:
            raise ValueError(f"C (inverse regularisation strength) must be positive, got {C}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be at least 1, got {max_iter}")
        if cv_folds < 2:
            raise ValueError(f"cv_folds must be at least 2, got {cv_folds}")
        if positive_split == negative_split:
            raise ValueError("positive_split and negative_split must name two different splits")
        self.C, self.max_iter, self.cv_folds, self.standardize, self.seed = C, max_iter, cv_folds, standardize, seed
        self.include_embeddings, self.layers = include_embeddings, None if layers is None else list(layers)
        self.splits = (positive_split, negative_split)
        self.models = None

    def _hooks(self, model) -> list[tuple[int, str]]:
        hooks = residual_stream_hooks(model, self.layers)
        return [(layer, hook) for layer, hook in hooks if layer > 0 or self.include_embeddings]

    def hook_names(self, model) -> list[str]:
        return [hook for _, hook in self._hooks(model)]

    def start(self, models: dict[str, Any]) -> None:
        self.models = models
        self._hooks_by_model = {name: self._hooks(model) for name, model in models.items()}
        # (model, split, layer) -> list of [batch, d_model] float32 CPU blocks: the bounded store (see docstring).
        self._rows: dict[tuple[str, str, int], list[Tensor]] = defaultdict(list)

    def update(self, split: str, activations: dict[str, dict[str, Tensor]], batch) -> None:
        if self.models is None:
            raise ValueError("linear_probes: start(models) was not called; run it through "
                             "mechunlearn.diagnostics.run_activation_analyses")
        if split not in self.splits:
            return  # a probe contrasts two splits; others are not its business
        for model_name, hooks in self._hooks_by_model.items():
            for layer, hook in hooks:
                activation = activations[model_name][hook]
                rows = last_token_rows(activation, batch.mask.to(activation.device))
                self._rows[(model_name, split, layer)].append(rows.float().cpu())

    def result(self) -> AnalysisResult:
        if self.models is None or not self._rows:
            raise ValueError("linear_probes: no batches were fed; run it through "
                             "mechunlearn.diagnostics.run_activation_analyses with forget and retain texts")
        positive, negative = self.splits
        records = []
        for model_name, hooks in self._hooks_by_model.items():
            for layer, hook in hooks:
                forget, retain = (self._rows.get((model_name, split, layer)) for split in self.splits)
                if not forget or not retain:
                    missing = positive if not forget else negative
                    raise ValueError(f"linear_probes: split {missing!r} was never fed; pass splits named "
                                     f"{positive!r} and {negative!r} (or set positive_split/negative_split)")
                forget_rows, retain_rows = torch.cat(forget).numpy(), torch.cat(retain).numpy()
                scores = forget_vs_retain_probe(forget_rows, retain_rows, C=self.C, max_iter=self.max_iter,
                                      cv_folds=self.cv_folds, standardize=self.standardize, seed=self.seed)
                records.append({"model": model_name, "layer": layer, **scores, "n_forget": len(forget_rows),
                                "n_retain": len(retain_rows), "hook": hook})
        frame = pd.DataFrame(records, columns=COLUMNS)
        summary: dict[str, Any] = {"measures": "topic (forget vs retain texts), not knowledge",
                                   "C": self.C, "max_iter": self.max_iter, "cv_folds": self.cv_folds,
                                   "standardize": self.standardize, "models": {}}
        for model_name, group in frame.groupby("model", sort=False):
            best = group.loc[group["selectivity"].idxmax()]
            summary["models"][model_name] = {"best_layer": int(best["layer"]),
                                             "best_selectivity": float(best["selectivity"]),
                                             "max_auc": float(group["auc"].max()),
                                             "mean_selectivity": float(group["selectivity"].mean())}
        return AnalysisResult(self.name, frame, summary=summary, plot=_plot)


def _plot(result: AnalysisResult):
    return layer_figure(result.frame, [("accuracy", "probe accuracy"), ("selectivity", "selectivity (acc - majority)"),
                                       ("auc", "AUC")], "Topic probe (linear_probes): forget vs retain text, per layer",
                        color_by="model")

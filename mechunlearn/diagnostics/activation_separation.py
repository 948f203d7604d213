"""Step 8, activation separation: can forget-text activations be told apart from retain-text ones, per model?

For every model (scope "model": the frame has a ``model`` column) and residual-stream layer (0 = embeddings,
``l + 1`` = ``blocks.{l}.hook_resid_post``, as in ``activation_comparison``):

* ``cosine_distance``: ``1 - cos(mu_forget, mu_retain)`` between the two splits' token centroids (streaming
  means over every real token);
* ``auc``: out-of-fold ROC AUC of the same cross-validated topic probe as ``linear_probes``
  (``mechunlearn.diagnostics.probing.forget_vs_retain_probe``: standardised ``LogisticRegression(C=1.0,
  max_iter=1000)``, stratified ``n_folds``-fold shuffled with ``seed``), on one example per *text*: its
  activations mean-pooled over its real tokens. Token-level examples would make the classifier's memory grow with
  tokens; per-text pooling keeps at most ``max_texts`` texts x ``d_model`` floats per (model, layer, split) and no
  token of one text lands in both a training and a test fold. NaN (undefined) with fewer than two texts in a
  split. Like ``linear_probes`` this measures how distinct the forget TOPIC is, not knowledge;
* ``variance_ratio``: Fisher-style ``trace(S_between) / trace(S_within)`` over tokens, with
  ``S_between = sum_k n_k (mu_k - mu)(mu_k - mu)^T`` and ``S_within = sum_k sum_i (x_i - mu_k)(x_i - mu_k)^T``;
  only traces are needed, so the streaming moments keep per-dimension variances, not ``d x d`` matrices.

The contrast is between the ``forget`` and ``retain`` splits (or the first two splits fed, in that order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mechunlearn.diagnostics.base import (ActivationAnalysis, AnalysisResult, contrast_splits, require_started,
                                          require_updates)
from mechunlearn.diagnostics.figures import layer_figure
from mechunlearn.diagnostics.layers import real_token_rows, residual_stream_hooks
from mechunlearn.diagnostics.probing import forget_vs_retain_probe
from mechunlearn.diagnostics.streaming import RunningMoments, mean_pooled_rows
from mechunlearn.numeric import ratio

__all__ = ["ActivationSeparation"]


class ActivationSeparation(ActivationAnalysis):
    """Forget-vs-retain separation of each model's residual stream, per layer (cosine, AUC, variance ratio).

    Options: ``max_texts`` (texts per split kept, mean-pooled, for the AUC; default 500, the seed's
    ``--max-samples``), ``n_folds`` (5), ``C`` (1.0), ``max_iter`` (1000), ``seed`` (0, the folds' shuffle),
    ``layers`` (default all).
    """

    name = "activation_separation"
    scope = "model"
    description = "forget-vs-retain centroid cosine distance, topic-probe AUC and Fisher variance ratio per layer"

    def __init__(self, max_texts: int = 500, n_folds: int = 5, C: float = 1.0, max_iter: int = 1000,
                 seed: int = 0, layers: Sequence[int] | None = None) -> None:
        if max_texts < 2:
            raise ValueError(f"max_texts must be at least 2 (texts per split for the AUC), got {max_texts}")
        if n_folds < 2:
            raise ValueError(f"n_folds must be at least 2 for cross-validation, got {n_folds}")
        self.max_texts, self.n_folds, self.C, self.max_iter, self.seed = max_texts, n_folds, C, max_iter, seed
        self.layers = None if layers is None else list(layers)
        self.models = None

    def hook_names(self, model) -> list[str]:
        return [hook for _, hook in residual_stream_hooks(model, self.layers)]

    def start(self, models: dict[str, Any]) -> None:
        self.models = models
        self._hooks = {name: residual_stream_hooks(model, self.layers) for name, model in models.items()}
        # (model, layer, split) -> token moments (variances only: the ratio needs traces, not matrices)
        self._moments: dict[tuple[str, int, str], RunningMoments] = defaultdict(
            lambda: RunningMoments(diagonal_only=True))
        self._pooled: dict[tuple[str, int, str], list[Tensor]] = defaultdict(list)
        self._texts_kept: dict[tuple[str, str], int] = defaultdict(int)
        self._splits: list[str] = []

    def update(self, split: str, activations: dict[str, dict[str, Tensor]], batch) -> None:
        require_started(self)
        if split not in self._splits:
            self._splits.append(split)
        for model_name, hooks in activations.items():
            room = self.max_texts - self._texts_kept[(model_name, split)]
            for layer, hook in self._hooks[model_name]:
                activation = hooks[hook]
                self._moments[(model_name, layer, split)].update(real_token_rows(activation, batch.mask))
                if room > 0:
                    pooled = mean_pooled_rows(activation[:room].float(), batch.mask[:room].to(activation.device))
                    self._pooled[(model_name, layer, split)].append(pooled.cpu())
            self._texts_kept[(model_name, split)] += max(0, min(room, len(batch)))

    def result(self) -> AnalysisResult:
        require_updates(self.name, bool(self._moments))
        pair = contrast_splits(self._splits)
        if pair is None:
            raise ValueError(f"{self.name} contrasts two splits but was fed only {self._splits}: "
                             "pass forget and retain texts")
        target, control = pair
        rows = []
        for model_name, hooks in self._hooks.items():
            for layer, _ in hooks:
                first, second = self._moments[(model_name, layer, target)], self._moments[(model_name, layer, control)]
                pooled_first = torch.cat(self._pooled[(model_name, layer, target)]).numpy()
                pooled_second = torch.cat(self._pooled[(model_name, layer, control)]).numpy()
                rows.append({
                    "model": model_name, "layer": layer,
                    "cosine_distance": _cosine_distance(first.mean, second.mean),
                    "auc": self._auc(pooled_first, pooled_second),
                    "variance_ratio": _fisher_ratio([first, second]),
                    f"n_tokens_{target}": first.count, f"n_tokens_{control}": second.count,
                    f"n_texts_{target}": len(pooled_first), f"n_texts_{control}": len(pooled_second),
                })
        frame = pd.DataFrame(rows)
        summary: dict[str, Any] = {"splits": [target, control], "max_texts": self.max_texts}
        for model_name, group in frame.groupby("model", sort=False):
            best = group.loc[group["auc"].idxmax()] if group["auc"].notna().any() else None
            summary[model_name] = {
                "max_auc": None if best is None else float(best["auc"]),
                "layer_of_max_auc": None if best is None else int(best["layer"]),
                "mean_cosine_distance": float(group["cosine_distance"].mean()),
                "max_variance_ratio": float(group["variance_ratio"].max()),
            }
        return AnalysisResult(self.name, frame, summary=summary, plot=plot_separation)

    def _auc(self, first: np.ndarray, second: np.ndarray) -> float:
        if min(len(first), len(second)) < 2:
            return float("nan")  # no cross-validated AUC exists with fewer than two texts in a split
        return forget_vs_retain_probe(first, second, C=self.C, max_iter=self.max_iter, cv_folds=self.n_folds,
                                      seed=self.seed)["auc"]


def _cosine_distance(first: Tensor, second: Tensor) -> float:
    return float(1.0 - torch.nn.functional.cosine_similarity(first, second, dim=0))


def _fisher_ratio(groups: list[RunningMoments]) -> float:
    """trace(S_between) / trace(S_within) from per-group counts, means and summed squared deviations."""
    total = sum(group.count for group in groups)
    grand_mean = sum(group.mean * group.count for group in groups) / total
    between = sum(group.count * float(((group.mean - grand_mean) ** 2).sum()) for group in groups)
    within = sum(float(group.within_scatter.sum()) for group in groups)
    return ratio(between, within)


def plot_separation(result: AnalysisResult):
    return layer_figure(result.frame, [("auc", "topic-probe AUC"), ("cosine_distance", "centroid cosine distance"),
                                       ("variance_ratio", "between / within variance")],
                        "Forget vs retain separation per layer", color_by="model")

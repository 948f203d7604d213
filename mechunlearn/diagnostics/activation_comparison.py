"""Step 3, activation norms: does the intervention globally suppress or amplify the residual stream?

Per layer and split, the mean over real tokens (padding excluded) of the L1 and L2 norms of each model's
hidden state and of the difference of the two models' hidden states on the same token
(``activation_comparison.csv``, columns as the seed's Appendix A).

Layers follow Hugging Face's ``hidden_states`` numbering ``0..N`` (``mechunlearn.diagnostics.layers``). One
difference from the seed: Hugging Face's last hidden state has the final LayerNorm applied, ours does not, so
layer N is the raw residual stream like every other layer (and its norms are not squashed to the LayerNorm's
scale).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mechunlearn.diagnostics.base import (ActivationAnalysis, AnalysisResult, ordered_splits, require_started,
                                          require_updates)
from mechunlearn.diagnostics.figures import layer_figure
from mechunlearn.diagnostics.layers import real_token_rows, residual_stream_hooks

__all__ = ["ActivationComparison", "COLUMNS"]

COLUMNS = ["layer", "split", "model_a_norm_L1", "model_a_norm_L2", "model_b_norm_L1", "model_b_norm_L2",
           "mean_dh_L1", "mean_dh_L2"]


# --------------------------------------------------------------------------------------------------- the analysis
class ActivationComparison(ActivationAnalysis):
    """Mean L1/L2 norms of each model's residual stream and of their difference, per layer and split.

    Options: ``layers`` (residual-stream layers 0..N to keep; default all).
    """

    name = "activation_comparison"
    scope = "pair"
    description = "mean L1/L2 hidden-state norms of base and other, and of their difference, per layer and split"

    def __init__(self, layers: Sequence[int] | None = None) -> None:
        self.layers = None if layers is None else list(layers)
        self.models = None

    def hook_names(self, model) -> list[str]:
        return [hook for _, hook in residual_stream_hooks(model, self.layers)]

    def start(self, models: dict[str, Any]) -> None:
        self.models = models
        self._hooks = residual_stream_hooks(models["base"], self.layers)
        # (split, layer) -> float64 sums of the six per-token norms, and the token count
        self._sums: dict[tuple[str, int], Tensor] = defaultdict(lambda: torch.zeros(6, dtype=torch.float64))
        self._tokens: dict[tuple[str, int], int] = defaultdict(int)

    def update(self, split: str, activations: dict[str, dict[str, Tensor]], batch) -> None:
        require_started(self)
        for layer, hook in self._hooks:
            base = real_token_rows(activations["base"][hook], batch.mask)
            other = real_token_rows(activations["other"][hook], batch.mask).to(base.device)
            difference = other - base
            # float64 before summing: thousands of float32 norms otherwise lose digits.
            norms = torch.stack([base.abs().sum(-1), base.norm(dim=-1), other.abs().sum(-1), other.norm(dim=-1),
                                 difference.abs().sum(-1), difference.norm(dim=-1)]).double().sum(dim=1)
            self._sums[(split, layer)] += norms.cpu()
            self._tokens[(split, layer)] += base.shape[0]

    def result(self) -> AnalysisResult:
        require_updates(self.name, bool(self._tokens))
        splits = ordered_splits(list(dict.fromkeys(split for split, _ in self._tokens)))
        rows = []
        for layer, _ in self._hooks:
            for split in splits:
                count = self._tokens[(split, layer)]
                means = (self._sums[(split, layer)] / max(count, 1)).tolist()
                rows.append(dict(zip(COLUMNS, [layer, split, *means])))
        frame = pd.DataFrame(rows)
        # Token counts go to the summary: the frame's columns are exactly the seed's activation_comparison.csv.
        summary: dict[str, Any] = {"layers": [layer for layer, _ in self._hooks],
                                   "tokens": {split: self._tokens[(split, self._hooks[0][0])] for split in splits}}
        for split in splits:
            part = frame[frame["split"] == split]
            # Relative change of the mean L2 norm and of the hidden state itself, averaged over layers.
            summary[f"{split}_mean_relative_norm_change"] = float(
                ((part["model_b_norm_L2"] - part["model_a_norm_L2"]) / part["model_a_norm_L2"]).mean())
            summary[f"{split}_mean_relative_dh_L2"] = float((part["mean_dh_L2"] / part["model_a_norm_L2"]).mean())
        return AnalysisResult(self.name, frame, summary=summary, plot=plot_activation_comparison)


def plot_activation_comparison(result: AnalysisResult):
    """Per layer: each model's mean L2 and L1 norm, and the norm of their difference (one colour per model and
    for the difference, forget solid and retain dashed)."""
    frame = result.frame
    base, other = result.label("base"), result.label("other")
    difference = f"{other} - {base}"
    long = pd.concat([
        frame.assign(model=base, norm_L1=frame["model_a_norm_L1"], norm_L2=frame["model_a_norm_L2"]),
        frame.assign(model=other, norm_L1=frame["model_b_norm_L1"], norm_L2=frame["model_b_norm_L2"]),
        frame.assign(model=difference, norm_L1=frame["mean_dh_L1"], norm_L2=frame["mean_dh_L2"]),
    ])
    return layer_figure(long, [("norm_L2", "mean ||h||₂ (and ||h_other - h_base||₂)"),
                               ("norm_L1", "mean ||h||₁ (and ||h_other - h_base||₁)")],
                        f"Activation norms per layer: {base} vs {other}", color_by="model", dash_by="split")

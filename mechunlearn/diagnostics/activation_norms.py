"""Step 3, activation norms: does the intervention globally suppress or amplify the residual stream?

Per layer and split, the mean over real tokens (padding excluded) of the L1 and L2 norms of each model's
hidden state and of the difference of the two models' hidden states on the same token
(``activation_comparison.csv``, columns as the seed's Appendix A).

Layers follow Hugging Face's ``hidden_states`` numbering ``0..N``: layer 0 is ``blocks.0.hook_resid_pre`` (the
token embeddings; GPT-NeoX has rotary positions, so nothing is added), layer ``l + 1`` is
``blocks.{l}.hook_resid_post``. One difference from the seed: Hugging Face's last hidden state has the final
LayerNorm applied, ours (``blocks.{N-1}.hook_resid_post``) does not, so layer N is the raw residual stream like
every other layer (and its norms are not squashed to the LayerNorm's scale).

This module also holds the small helpers the other activation analyses share (residual-stream hook names,
checks, the per-layer line figure).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechunlearn.diagnostics.base import ActivationAnalysis, AnalysisResult
from mechunlearn.diagnostics.streaming import token_rows
from mechunlearn.hooks.names import resid_post, resid_pre

__all__ = ["ActivationNorms", "residual_stream_hooks", "real_token_rows", "layer_figure"]

COLUMNS = ["layer", "split", "model_a_norm_L1", "model_a_norm_L2", "model_b_norm_L1", "model_b_norm_L2",
           "mean_dh_L1", "mean_dh_L2"]


# ------------------------------------------------------------------------------------------------ shared helpers
def residual_stream_hooks(model, layers: Sequence[int] | None = None) -> list[tuple[int, str]]:
    """``(layer, hook)`` for HF's ``hidden_states`` 0..N (0 = embeddings = ``blocks.0.hook_resid_pre``)."""
    n_layers = model.cfg.n_layers
    chosen = range(n_layers + 1) if layers is None else layers
    hooks = []
    for layer in chosen:
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer {layer} is out of range: this model has residual-stream layers 0..{n_layers} "
                             "(0 = embeddings, l + 1 = output of block l)")
        hooks.append((layer, resid_pre(0) if layer == 0 else resid_post(layer - 1)))
    return hooks


def real_token_rows(activation: Float[Tensor, "batch pos ..."], mask: Bool[Tensor, "batch pos"]) -> Tensor:
    """The activations of real (non-pad) tokens as float32 rows, with the mask moved to the activation's device."""
    return token_rows(activation.float().flatten(2), mask.to(activation.device))


def require_started(analysis: ActivationAnalysis) -> None:
    if getattr(analysis, "models", None) is None:
        raise ValueError(f"{analysis.name}: start(models) was not called; run the analysis through "
                         "mechunlearn.diagnostics.run_activation_analyses (or run_analyses)")


def require_updates(analysis_name: str, seen_anything: bool) -> None:
    if not seen_anything:
        raise ValueError(f"{analysis_name}: no batches were fed; run it through "
                         "mechunlearn.diagnostics.run_activation_analyses with non-empty forget and retain texts")


def ordered_splits(splits: Sequence[str]) -> list[str]:
    """Forget first, retain second, any other split after them in the order seen (stable frames and plots)."""
    known = [name for name in ("forget", "retain") if name in splits]
    return known + [name for name in splits if name not in known]


def contrast_splits(splits: Sequence[str]) -> tuple[str, str] | None:
    """The (target, control) pair of splits a forget-vs-retain contrast uses, or None with fewer than two."""
    ordered = ordered_splits(splits)
    return (ordered[0], ordered[1]) if len(ordered) >= 2 else None


def layer_figure(frame: pd.DataFrame, panels: Sequence[tuple[str, str]], trace_by: Sequence[str], title: str):
    """Interactive per-layer line figure: one subplot per ``(column, subplot title)``, one trace per value of
    the ``trace_by`` columns (model and/or split), layer on the x axis."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[panel_title for _, panel_title in panels])
    dashes = ["solid", "dash", "dot", "dashdot"]
    groups = list(frame.groupby(list(trace_by), sort=False)) if trace_by else [((), frame)]
    for column_index, (column, _) in enumerate(panels, start=1):
        for trace_index, (key, group) in enumerate(groups):
            key = key if isinstance(key, tuple) else (key,)
            label = " / ".join(str(part) for part in key) or column
            group = group.sort_values("layer")
            figure.add_trace(go.Scatter(x=group["layer"], y=group[column], mode="lines+markers", name=label,
                                        legendgroup=label, showlegend=column_index == 1,
                                        line=dict(dash=dashes[trace_index % len(dashes)])),
                             row=1, col=column_index)
        figure.update_xaxes(title_text="layer", row=1, col=column_index)
    figure.update_layout(title=title, hovermode="x unified")
    return figure


# --------------------------------------------------------------------------------------------------- the analysis
class ActivationNorms(ActivationAnalysis):
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
        return AnalysisResult(self.name, frame, summary=summary, plot=plot_activation_norms)


def plot_activation_norms(result: AnalysisResult):
    """L2 norm of each model and of the difference, per layer; one trace per model and split."""
    frame = result.frame
    long = pd.concat([
        frame.assign(model="base (A)", norm_L1=frame["model_a_norm_L1"], norm_L2=frame["model_a_norm_L2"]),
        frame.assign(model="other (B)", norm_L1=frame["model_b_norm_L1"], norm_L2=frame["model_b_norm_L2"]),
    ])
    figure = layer_figure(long, [("norm_L2", "mean ||h||₂"), ("norm_L1", "mean ||h||₁")], ["model", "split"],
                          "Activation norms per layer")
    import plotly.graph_objects as go

    for split, group in frame.groupby("split", sort=False):
        figure.add_trace(go.Scatter(x=group["layer"], y=group["mean_dh_L2"], name=f"||h_B - h_A||₂ / {split}",
                                    mode="lines+markers", line=dict(width=3)), row=1, col=1)
        figure.add_trace(go.Scatter(x=group["layer"], y=group["mean_dh_L1"], name=f"||h_B - h_A||₁ / {split}",
                                    mode="lines+markers", line=dict(width=3)), row=1, col=2)
    return figure

"""Step 11, row-space projection: do forget-text MLP inputs lie in the directions the intervention changed?

For every MLP layer ``l``: ``dW_in = W_in(other) - W_in(base)`` (TransformerLens' ``[d_model, d_mlp]``, read
from the models given to ``start``), its SVD ``dW_in = U S V^T`` and the top ``k`` input-space directions
(default 10, fewer when the numerical rank is smaller). TransformerLens computes ``x @ W_in``, so the input
space is the *row* index of ``W_in`` and the input directions are the LEFT singular vectors ``U`` (they are the
right singular vectors, the row space, of Hugging Face's ``dense_h_to_4h.weight = W_in^T``).

The measured quantity is the projection energy share over real tokens,
``sum_t ||U_k^T x_t||^2 / sum_t ||x_t||^2``, per split, with ``selectivity = share(forget) / share(retain)``
(table ``selectivity``; ``mechunlearn.numeric.ratio``: NaN when both shares are 0, inf when only retain's is).
``random_baseline = k / d_model`` is the share an isotropic input would have.

Which ``x``: the MLP input of the BASE model, ``ln2(resid)``. The question is whether the update targets the
inputs the original model computes on forget text; the other model's inputs would already carry the effects of
upstream edits. In TransformerLens 3.x ``blocks.{l}.ln2.hook_normalized`` is the normalised residual *before*
the LayerNorm's weight and bias (``hook_normalized(x / scale) * w + b``), so the analysis applies the base
model's ``ln2.w`` and ``ln2.b`` to it to get exactly what ``W_in`` multiplies (checked against
``mlp.hook_pre`` in the tests).

Numerical rank: singular values above ``S_max * max(d_model, d_mlp) * eps(float32)`` (numpy's
``matrix_rank`` rule at the weights' precision). A layer the intervention did not touch has rank 0, share 0
and a NaN selectivity.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechunlearn.diagnostics.base import (ActivationAnalysis, AnalysisResult, contrast_splits, ordered_splits,
                                          require_started, require_updates)
from mechunlearn.diagnostics.figures import color_for, integer_layer_axes, layer_figure
from mechunlearn.diagnostics.layers import real_token_rows
from mechunlearn.hooks.names import mlp_in
from mechunlearn.numeric import ratio

__all__ = ["RowSpaceProjection", "input_directions"]


def input_directions(delta_w_in: Float[Tensor, "d_model d_mlp"], top_k: int) -> tuple[Tensor, Tensor, int]:
    """``(U_k [d_model, k], all singular values, numerical rank)`` of a TransformerLens-oriented ``dW_in``."""
    # float64 where it is cheap (exact tests, small models); float32 on the weights' device for big ones.
    dtype = torch.float64 if delta_w_in.numel() <= 2 ** 22 else torch.float32
    left, singular_values, _ = torch.linalg.svd(delta_w_in.to(dtype), full_matrices=False)
    tolerance = singular_values.max() * max(delta_w_in.shape) * torch.finfo(torch.float32).eps
    rank = int((singular_values > tolerance).sum()) if singular_values.max() > 0 else 0
    return left[:, : min(top_k, rank)], singular_values, rank


class RowSpaceProjection(ActivationAnalysis):
    """Share of the base model's MLP-input energy inside the top-k input directions of ``dW_in``, per layer.

    Options: ``top_k`` (directions per layer; default 10).
    """

    name = "row_space_projection"
    scope = "pair"
    description = "share of MLP-input energy in the top-k input directions of dW_in, forget vs retain"

    def __init__(self, top_k: int = 10) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1 direction, got {top_k}")
        self.top_k = top_k
        self.models = None

    def hook_names(self, model) -> list[str]:
        return [mlp_in(layer) for layer in range(model.cfg.n_layers)]

    @torch.no_grad()
    def start(self, models: dict[str, Any]) -> None:
        self.models = models
        base, other = models["base"], models["other"]
        self._directions: dict[int, Tensor] = {}
        self._layer_norms: dict[int, tuple[Tensor | None, Tensor | None]] = {}
        subspace_rows = []
        for layer in range(base.cfg.n_layers):
            base_w_in = base.blocks[layer].mlp.W_in.detach().float()
            delta = other.blocks[layer].mlp.W_in.detach().float().to(base_w_in.device) - base_w_in
            directions, singular_values, rank = input_directions(delta, self.top_k)
            self._directions[layer] = directions.float()
            ln2 = base.blocks[layer].ln2  # LayerNormPre (folded weights) has no w/b: its output is the input
            self._layer_norms[layer] = (getattr(ln2, "w", None), getattr(ln2, "b", None))
            energy = float((singular_values ** 2).sum())
            subspace_rows.append({
                "layer": layer, "k": directions.shape[1], "rank": rank, "dW_in_fro": energy ** 0.5,
                "top_k_energy_share": ratio(float((singular_values[: directions.shape[1]] ** 2).sum()), energy),
                "top_singular_value": float(singular_values[0]),
            })
        self._subspaces = pd.DataFrame(subspace_rows)
        self._d_model = base.cfg.d_model
        self._energy: dict[tuple[str, int], Tensor] = defaultdict(lambda: torch.zeros(2, dtype=torch.float64))
        self._tokens: dict[tuple[str, int], int] = defaultdict(int)

    def update(self, split: str, activations: dict[str, dict[str, Tensor]], batch) -> None:
        require_started(self)
        for layer, directions in self._directions.items():
            rows = real_token_rows(activations["base"][mlp_in(layer)], batch.mask)
            weight, bias = self._layer_norms[layer]
            if weight is not None:
                rows = rows * weight.detach().float().to(rows.device) + bias.detach().float().to(rows.device)
            projected = rows @ directions.to(rows.device)
            sums = torch.stack([(projected.double() ** 2).sum(), (rows.double() ** 2).sum()])
            self._energy[(split, layer)] += sums.cpu()
            self._tokens[(split, layer)] += rows.shape[0]

    def result(self) -> AnalysisResult:
        require_updates(self.name, bool(self._tokens))
        splits = ordered_splits(list(dict.fromkeys(split for split, _ in self._tokens)))
        rows = []
        for layer, directions in self._directions.items():
            k = directions.shape[1]
            for split in splits:
                inside, total = self._energy[(split, layer)].tolist()
                rows.append({"layer": layer, "split": split, "k": k,
                             "projection_share": ratio(inside, total),
                             "random_baseline": k / self._d_model, "n_tokens": self._tokens[(split, layer)]})
        frame = pd.DataFrame(rows)
        tables = {"subspaces": self._subspaces}
        summary: dict[str, Any] = {"top_k": self.top_k, "splits": splits}
        pair = contrast_splits(splits)
        if pair is not None:
            target, control = pair
            wide = frame.pivot(index="layer", columns="split", values="projection_share")
            selectivity = pd.Series([ratio(forget, retain) for forget, retain in zip(wide[target], wide[control])],
                                    index=wide.index)
            tables["selectivity"] = pd.DataFrame({
                "layer": wide.index, f"share_{target}": wide[target].to_numpy(),
                f"share_{control}": wide[control].to_numpy(), "selectivity": selectivity.to_numpy()})
            finite = selectivity.replace([np.inf, -np.inf], np.nan)
            summary["mean_selectivity"] = float(finite.mean()) if finite.notna().any() else None
            summary["max_selectivity_layer"] = int(finite.idxmax()) if finite.notna().any() else None
        for split in splits:
            summary[f"{split}_mean_share"] = float(frame.loc[frame["split"] == split, "projection_share"].mean())
        return AnalysisResult(self.name, frame, tables=tables, summary=summary, plot=plot_row_space)


def plot_row_space(result: AnalysisResult):
    frame = result.frame
    figure = layer_figure(frame, [("projection_share", "share of MLP-input energy in top-k dW_in directions")],
                          f"Row-space projection per MLP layer ({result.label('base')}'s inputs, "
                          f"{result.label('other')}'s update)", color_by="split")
    import plotly.graph_objects as go

    baseline = frame.drop_duplicates("layer").sort_values("layer")
    figure.add_trace(go.Scatter(x=baseline["layer"].tolist(), y=baseline["random_baseline"].tolist(),
                                name="isotropic baseline k/d", mode="lines",
                                line=dict(color=color_for("chance"), dash="dot")))
    integer_layer_axes(figure)
    return figure

"""Step 10, MLP null-space alignment: is each MLP update on W's manifold (column / row space) or off it?

For each MLP matrix, the fraction of ||dW||_F^2 in the column space of W and in its complement; and the same
split on the row side.

Orientation: every matrix is its Hugging Face ``[out, in]`` weight, the map ``y = W x`` (``W = W_TL.T`` for
``W_in``/``W_out``: TransformerLens multiplies ``x @ W_in``). So

* ``W_in`` is ``[d_mlp, d_model]``: its column space is a rank-r subspace of the d_mlp neuron space (the
  neuron pre-activation patterns W_in can produce); the "null space" side is its orthogonal complement, the left
  null space (null space of W^T). Its row space is the part of the residual stream W_in reads.
* ``W_out`` is ``[d_model, d_mlp]``: its column space is what it writes into the residual stream; its row
  space, the neuron patterns it reads; the row-side remainder is W's null space proper (inputs W ignores).

A full-rank ``[m, n]`` matrix with m > n has an (m - n)-dimensional left null space and no right null space,
so for trained GPT-NeoX weights the column side is informative for W_in and the row side for W_out; the
``*_random`` columns give the fraction an isotropic random dW would have (r / m, r / n), the baseline to read
the measured fractions against. The rank r is W's numerical rank (singular values above ``rtol * sigma_1``,
``rtol`` defaulting to numpy.linalg.matrix_rank's max(m, n) * float32 eps), or a fixed ``rank``, or the count
holding an ``energy`` share of sigma^2 (then the "column space" is W's dominant subspace).

A zero dW has no direction: its fractions are NaN (undefined).
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from tqdm.auto import tqdm

from mechunlearn.diagnostics import linalg
from mechunlearn.diagnostics.base import AnalysisResult, WeightAnalysis, check_comparable
from mechunlearn.diagnostics.figures import Legend, color_for, integer_layer_axes
from mechunlearn.diagnostics.matrices import hf_matrix, weight_matrices
from mechunlearn.diagnostics.null_space_analysis import spec_columns
from mechunlearn.numeric import ratio

__all__ = ["MLPNullspace"]


class MLPNullspace(WeightAnalysis):
    """Step 10: is each MLP update on W's manifold (column / row space) or off it (the null-space side)?"""

    name = "mlp_nullspace"
    description = "fraction of ||dW||_F^2 of W_in / W_out in the column space vs null space of W (and row side)"

    def __init__(self, rank: int | None = None, energy: float | None = None, rtol: float | None = None,
                 progress: bool = True):
        if rank is not None and energy is not None:
            raise ValueError("pass at most one of rank (a fixed subspace dimension) and energy (a sigma^2 share)")
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if energy is not None and not 0 < energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {energy}")
        self.rank, self.energy, self.rtol, self.progress = rank, energy, rtol, progress

    def _rank_rule(self) -> str:
        if self.rank is not None:
            return f"fixed rank {self.rank}"
        if self.energy is not None:
            return f"energy {self.energy}"
        return "numerical rank, rtol = " + ("max(m, n) * eps(float32)" if self.rtol is None else str(self.rtol))

    def _rank(self, values: torch.Tensor, shape: tuple[int, int]) -> int:
        if self.rank is not None:
            return min(self.rank, values.numel())
        if self.energy is not None:
            return linalg.empirical_rank(values, self.energy)
        return linalg.numerical_rank(values, shape, self.rtol)

    def run(self, base, other) -> AnalysisResult:
        check_comparable(base, other)
        device = next(base.parameters()).device
        rows = []
        specs = weight_matrices(base, components=("in", "out"), include_embeddings=False)
        for spec in tqdm(specs, desc="MLP null space", disable=not self.progress, leave=False):
            weight = hf_matrix(base, spec, device)
            delta = hf_matrix(other, spec, device) - weight
            left, values, right = linalg.svd(weight)
            rank = self._rank(values, tuple(weight.shape))
            column, column_null = linalg.column_space_split(delta, left[:, :rank])
            row_side, row_null = linalg.row_space_split(delta, right[:rank].T)
            delta_norm, weight_norm = linalg.frobenius_norm(delta), linalg.frobenius_norm(weight)
            rows.append(spec_columns(spec, weight) | {
                "W_rank": rank, "dW_fro": delta_norm, "dW_fro_rel": ratio(delta_norm, weight_norm),
                "col_space_fraction": column, "null_space_fraction": column_null,
                "col_space_fraction_random": rank / weight.shape[0],
                "row_space_fraction": row_side, "row_null_fraction": row_null,
                "row_space_fraction_random": rank / weight.shape[1]})
        frame = pd.DataFrame(rows)
        fractions = ["col_space_fraction", "null_space_fraction", "col_space_fraction_random", "row_space_fraction",
                     "row_null_fraction", "row_space_fraction_random"]
        summary = {"rank_rule": self._rank_rule(), "n_matrices": len(frame),
                   "n_zero_updates": int((frame["dW_fro"] == 0).sum()),
                   "mean_by_component": frame.groupby("component")[fractions].mean().to_dict(orient="index"),
                   "informative_side": {"in": "column (W_in is tall: a left null space of d_mlp - r dimensions)",
                                        "out": "row (W_out is wide: a null space of d_mlp - r dimensions)"}}
        summary["mean_null_space_fraction"] = float(frame["null_space_fraction"].mean())
        if math.isnan(summary["mean_null_space_fraction"]):
            summary["mean_null_space_fraction"] = None
        return AnalysisResult(self.name, frame, summary=summary, plot=_plot_mlp_nullspace)


def _plot_mlp_nullspace(result: AnalysisResult):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    frame = result.frame
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=(
        "column side: share of ||dW||_F^2 outside W's column space (left null space)",
        "row side: share of ||dW||_F^2 in W's null space (inputs W ignores)"))
    legend = Legend()
    colors = {"in": color_for("attn"), "out": color_for("mlp")}  # two series, two fixed colours
    for row, (measured, random_share) in enumerate((("null_space_fraction", "col_space_fraction_random"),
                                                    ("row_null_fraction", "row_space_fraction_random")), start=1):
        for component in ("in", "out"):
            part = frame[frame["component"] == component]
            legend.add(figure, go.Scatter(x=part["layer"].tolist(), y=part[measured].tolist(), mode="lines+markers",
                                          line=dict(color=colors[component])), f"W_{component}", row=row, col=1)
            legend.add(figure, go.Scatter(x=part["layer"].tolist(), y=(1 - part[random_share]).tolist(),
                                          mode="lines", line=dict(color=colors[component], dash="dot")),
                       f"W_{component}: random dW", row=row, col=1)
    figure.update_yaxes(range=[-0.02, 1.02])
    figure.update_xaxes(title_text="layer", row=2, col=1)
    figure.update_layout(title=f"MLP null-space alignment: {result.label('base')} -> {result.label('other')}")
    integer_layer_axes(figure)
    return figure

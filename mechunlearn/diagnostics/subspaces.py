"""Steps 7 and 10 of the study: is ``dW`` low-rank, do the principal subspaces move, and does ``dW`` live in the
column space or the null space of ``W``?

``null_space_analysis`` (``NullSpaceAnalysis``) - for up to ``max_matrices`` weight matrices (a seeded sample;
all of them when there are fewer), from full SVDs: the top-k energy ratio of dW (sum of the top-k sigma^2 over
all sigma^2), its effective rank (the least count of singular values holding ``energy`` = 99% of sigma^2: the
same count as step 1's empirical rank) and its entropy rank (Roy & Vetterli), and the principal angles between
the top-k left singular subspaces of ``W_base`` and ``W_other``: Grassmann distance sqrt(sum theta^2) and
alignment mean cos^2 theta (1 = same subspace). The right (input-side) subspaces get the same two numbers.

``mlp_nullspace`` (``MLPNullspaceAlignment``) - for each MLP matrix, the fraction of ||dW||_F^2 in the column
space of W and in its complement; and the same split on the row side.

Orientation (documented once, used by both): every matrix is its Hugging Face ``[out, in]`` weight, the map
``y = W x`` (``W = W_TL.T`` for ``W_in``/``W_out``: TransformerLens multiplies ``x @ W_in``). So

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

A zero dW has no direction: its fractions are NaN (undefined), its top-k energy ratio 1 and its ranks 0.
"""

from __future__ import annotations

import math
import random

import pandas as pd
import torch
from tqdm.auto import tqdm

from mechunlearn.diagnostics import linalg
from mechunlearn.diagnostics.base import AnalysisResult, WeightAnalysis
from mechunlearn.diagnostics.weights import _require_comparable, hf_matrix, weight_matrices

__all__ = ["NullSpaceAnalysis", "MLPNullspaceAlignment", "sample_matrices"]


def sample_matrices(specs: list, max_matrices: int | None, seed: int) -> list:
    """A seeded sample of ``max_matrices`` specs in model order (all of them when there are fewer)."""
    if max_matrices is None or len(specs) <= max_matrices:
        return list(specs)
    chosen = sorted(random.Random(seed).sample(range(len(specs)), max_matrices))
    return [specs[index] for index in chosen]


def _spec_columns(spec, weight) -> dict:
    return {"name": spec.name, "layer": spec.layer, "group": spec.group, "component": spec.component,
            "hf_name": spec.hf_name, "shape0": weight.shape[0], "shape1": weight.shape[1]}


def _layer_scatter(frame: pd.DataFrame, panels: list[tuple[str, str]], title: str, color: str = "group"):
    """One subplot per metric, metric against layer, one trace per ``color`` value; hover names the matrix."""
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           subplot_titles=[label for _, label in panels])
    for row, (column, _) in enumerate(panels, start=1):
        for value in sorted(frame[color].unique()):
            part = frame[frame[color] == value]
            figure.add_scatter(x=part["layer"], y=part[column], mode="markers", name=str(value), text=part["name"],
                               legendgroup=str(value), showlegend=row == 1, row=row, col=1)
    figure.update_xaxes(title_text="layer", row=len(panels), col=1)
    figure.update_layout(title=title, height=260 * len(panels) + 120)
    return figure


class NullSpaceAnalysis(WeightAnalysis):
    """Step 7: low-rankness of dW and the shift of the principal subspaces, on a seeded sample of matrices."""

    name = "null_space_analysis"
    description = "top-k energy and effective rank of dW; Grassmann distance of W's top-k singular subspaces"

    def __init__(self, max_matrices: int | None = 50, k: int = 10, energy: float = 0.99, seed: int = 0,
                 include_embeddings: bool = False, progress: bool = True):
        if k < 1:
            raise ValueError(f"k (the number of top singular directions compared) must be >= 1, got {k}")
        if max_matrices is not None and max_matrices < 1:
            raise ValueError(f"max_matrices must be >= 1 or None (all matrices), got {max_matrices}")
        if not 0 < energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {energy}")
        self.max_matrices, self.k, self.energy, self.seed = max_matrices, k, energy, seed
        self.include_embeddings, self.progress = include_embeddings, progress

    def run(self, base, other) -> AnalysisResult:
        _require_comparable(base, other)
        device = next(base.parameters()).device
        specs = sample_matrices(weight_matrices(base, include_embeddings=self.include_embeddings),
                                self.max_matrices, self.seed)
        rows = []
        for spec in tqdm(specs, desc="null space analysis", disable=not self.progress, leave=False):
            weight = hf_matrix(base, spec, device)
            modified = hf_matrix(other, spec, device)
            delta = modified - weight
            k = min(self.k, *weight.shape)
            delta_values = linalg.singular_values(delta)
            left_base, base_values, right_base = linalg.svd(weight)
            left_other, _, right_other = linalg.svd(modified)
            left_angles = linalg.principal_angles(left_base[:, :k], left_other[:, :k])
            right_angles = linalg.principal_angles(right_base[:k].T, right_other[:k].T)
            row = _spec_columns(spec, weight) | {"k": k, "dW_fro": float(delta_values.square().sum().sqrt())}
            row["dW_topk_energy_ratio"] = linalg.top_k_energy_ratio(delta_values, k)
            row["dW_effective_rank"] = linalg.effective_rank(delta_values, self.energy)
            row["dW_effective_rank_frac"] = row["dW_effective_rank"] / min(weight.shape)
            row["dW_entropy_rank"] = linalg.entropy_rank(delta_values)
            row["W_effective_rank"] = linalg.effective_rank(base_values, self.energy)
            row["grassmann_distance"] = float(left_angles.square().sum().sqrt())
            row["subspace_alignment"] = float(torch.cos(left_angles).square().mean())
            row["max_principal_angle"] = float(left_angles.max())
            row["grassmann_distance_right"] = float(right_angles.square().sum().sqrt())
            row["subspace_alignment_right"] = float(torch.cos(right_angles).square().mean())
            rows.append(row)
        frame = pd.DataFrame(rows)
        metrics = ["dW_topk_energy_ratio", "dW_effective_rank", "dW_effective_rank_frac", "grassmann_distance",
                   "subspace_alignment", "grassmann_distance_right", "subspace_alignment_right"]
        summary = {"n_matrices": len(frame), "n_candidates": len(weight_matrices(
                       base, include_embeddings=self.include_embeddings)),
                   "k": self.k, "energy": self.energy, "seed": self.seed,
                   "mean": frame[metrics].mean().to_dict(), "median": frame[metrics].median().to_dict(),
                   "mean_by_group": frame.groupby("group")[metrics].mean().to_dict(orient="index"),
                   "sampled": frame["name"].tolist()}
        return AnalysisResult(self.name, frame, summary=summary, plot=self._plot)

    def _plot(self, result: AnalysisResult):
        return _layer_scatter(result.frame, [
            ("dW_topk_energy_ratio", f"dW: energy in the top {self.k} singular values (1 = very low rank)"),
            ("dW_effective_rank", f"dW: effective rank ({self.energy:.0%} of sigma^2)"),
            ("grassmann_distance", f"Grassmann distance, top-{self.k} left singular subspaces of W_base vs W_other"),
        ], "null space & subspace analysis")


class MLPNullspaceAlignment(WeightAnalysis):
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
        _require_comparable(base, other)
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
            delta_norm, weight_norm = float(torch.linalg.matrix_norm(delta)), float(values.square().sum().sqrt())
            rows.append(_spec_columns(spec, weight) | {
                "W_rank": rank, "dW_fro": delta_norm, "dW_fro_rel": linalg.safe_ratio(delta_norm, weight_norm),
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
    from plotly.subplots import make_subplots

    frame = result.frame
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=(
        "column side: share of ||dW||_F^2 outside W's column space (left null space)",
        "row side: share of ||dW||_F^2 in W's null space (inputs W ignores)"))
    for row, (measured, random_share) in enumerate((("null_space_fraction", "col_space_fraction_random"),
                                                    ("row_null_fraction", "row_space_fraction_random")), start=1):
        for component in ("in", "out"):
            part = frame[frame["component"] == component]
            figure.add_scatter(x=part["layer"], y=part[measured], mode="lines+markers", name=f"W_{component}",
                               legendgroup=component, showlegend=row == 1, row=row, col=1)
            figure.add_scatter(x=part["layer"], y=1 - part[random_share], mode="lines", line=dict(dash="dot"),
                               name=f"W_{component}: random dW", legendgroup=component, showlegend=row == 1,
                               row=row, col=1)
    figure.update_yaxes(range=[-0.02, 1.02])
    figure.update_xaxes(title_text="layer", row=2, col=1)
    figure.update_layout(title="MLP null-space alignment")
    return figure

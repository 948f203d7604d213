"""Step 7, null space & subspace analysis: is ``dW`` low-rank, and do the principal subspaces move?

For up to ``max_matrices`` weight matrices (a seeded sample; all of them when there are fewer), from full SVDs:
the top-k energy ratio of dW (sum of the top-k sigma^2 over all sigma^2), its effective rank (the least count of
singular values holding ``energy`` = 99% of sigma^2: the same count as step 1's empirical rank) and its entropy
rank (Roy & Vetterli), and the principal angles between the top-k left singular subspaces of ``W_base`` and
``W_other``: Grassmann distance sqrt(sum theta^2) and alignment mean cos^2 theta (1 = same subspace). The right
(input-side) subspaces get the same two numbers. Matrices are oriented as in ``mechunlearn.diagnostics.matrices``.

A zero dW has no direction: its top-k energy ratio is 1 and its ranks 0.
"""

from __future__ import annotations

import random

import pandas as pd
import torch
from tqdm.auto import tqdm

from mechunlearn.diagnostics import linalg
from mechunlearn.diagnostics.base import AnalysisResult, WeightAnalysis, check_comparable
from mechunlearn.diagnostics.figures import Legend, color_for, integer_layer_axes
from mechunlearn.diagnostics.matrices import hf_matrix, weight_matrices

__all__ = ["NullSpaceAnalysis", "sample_matrices", "spec_columns", "layer_scatter"]


def sample_matrices(specs: list, max_matrices: int | None, seed: int) -> list:
    """A seeded sample of ``max_matrices`` specs in model order (all of them when there are fewer)."""
    if max_matrices is None or len(specs) <= max_matrices:
        return list(specs)
    chosen = sorted(random.Random(seed).sample(range(len(specs)), max_matrices))
    return [specs[index] for index in chosen]


def spec_columns(spec, weight) -> dict:
    return {"name": spec.name, "layer": spec.layer, "group": spec.group, "component": spec.component,
            "hf_name": spec.hf_name, "shape0": weight.shape[0], "shape1": weight.shape[1]}


def layer_scatter(frame: pd.DataFrame, panels: list[tuple[str, str]], title: str, color: str = "group"):
    """One subplot per metric, metric against layer, one colour per ``color`` value; hover names the matrix."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                           subplot_titles=[label for _, label in panels])
    legend = Legend()
    for row, (column, _) in enumerate(panels, start=1):
        for value in sorted(frame[color].unique()):
            part = frame[frame[color] == value]
            legend.add(figure, go.Scatter(x=part["layer"].tolist(), y=part[column].tolist(), mode="markers",
                                          text=part["name"].tolist(), marker=dict(color=color_for(str(value)))),
                       str(value), row=row, col=1)
    figure.update_xaxes(title_text="layer", row=len(panels), col=1)
    figure.update_layout(title=title, height=260 * len(panels) + 120)
    integer_layer_axes(figure)
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
        check_comparable(base, other)
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
            row = spec_columns(spec, weight) | {"k": k, "dW_fro": linalg.frobenius_norm(delta)}
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
        return layer_scatter(result.frame, [
            ("dW_topk_energy_ratio", f"dW: energy in the top {self.k} singular values (1 = very low rank)"),
            ("dW_effective_rank", f"dW: effective rank ({self.energy:.0%} of sigma^2)"),
            ("grassmann_distance", f"Grassmann distance, top-{self.k} left singular subspaces of W_base vs W_other"),
        ], "null space & subspace analysis")

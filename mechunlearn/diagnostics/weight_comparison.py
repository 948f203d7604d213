"""Step 1, weight comparison: how large is ``dW = W_other - W_base``, where is it, and how many dimensions has it?

One row per weight matrix, the columns of the seed's Appendix A (``per_matrix.csv``) plus ``component`` and
``hf_name``; tables ``per_layer`` (Appendix A), ``per_component`` and ``per_coarse_layer`` (early / middle / late
thirds of the blocks), all with the per_layer columns.

Where this differs from the seed's scripts, and why:

* Matrices, names and orientation: ``mechunlearn.diagnostics.matrices`` (Q, K and V split out of GPT-NeoX's
  fused parameter; every matrix as its HF ``[out, in]`` weight). LayerNorm weights and biases are excluded.
* Frobenius norms accumulate in float64 (``linalg.frobenius_norm``): a float32 sum over a 768 x 3072 matrix is
  off by ~4e-5 relative, which puts a 1.5e-4 error into the stable rank even with an exact sigma_1.
* ``group`` has a third value, ``embed``, for ``W_E`` / ``W_U`` (``layer`` -1). They appear in
  ``per_layer`` as the row (layer -1, embed); ``per_coarse_layer`` covers the blocks only. A model with tied
  embeddings lists the shared matrix twice (as W_E and as W_U).
* The spectral norm is the fast randomized block Lanczos estimate (``linalg.spectral_norm``: a lower bound,
  within 0.5% on the worst spectra, see benchmarks/bench_spectral.py); ``exact=True`` or
  ``empirical_rank=True`` use the full SVD. The zero matrix has stable rank 0 and empirical rank 0 (not NaN),
  so identical models give all-zero rows. Ratios follow ``mechunlearn.numeric.ratio``: ``dW_fro_rel`` of a
  zero base matrix is NaN (undefined) when it did not change and inf when it did.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mechunlearn.diagnostics import linalg
from mechunlearn.diagnostics.base import AnalysisResult, WeightAnalysis, check_comparable
from mechunlearn.diagnostics.figures import Legend, color_for, integer_layer_axes
from mechunlearn.diagnostics.matrices import GROUP_OF, hf_matrix, weight_matrices
from mechunlearn.numeric import ratio

__all__ = ["compare_matrices", "aggregate", "depth_bin", "root_sum_square", "WeightComparison"]

DEPTHS = ("early", "middle", "late")


def compare_matrices(base, other, *, spectral: bool = True, exact: bool = False, empirical_rank: bool = False,
                     energy: float = 0.99, include_embeddings: bool = True, progress: bool = True) -> pd.DataFrame:
    """The per-matrix frame (Appendix A ``per_matrix.csv`` + ``component``, ``hf_name``) for ``other - base``.

    ``spectral=False`` keeps only the Frobenius columns (no SVD): what the MLP/attention ratio needs.
    """
    check_comparable(base, other)
    device = next(base.parameters()).device
    rows = []
    specs = weight_matrices(base, include_embeddings=include_embeddings)
    for spec in tqdm(specs, desc="weight comparison", disable=not progress, leave=False):
        weight = hf_matrix(base, spec, device)
        delta = hf_matrix(other, spec, device) - weight
        row = {"name": spec.name, "layer": spec.layer, "group": spec.group, "component": spec.component,
               "hf_name": spec.hf_name, "shape0": weight.shape[0], "shape1": weight.shape[1]}
        row["dW_fro"] = linalg.frobenius_norm(delta)
        row["W_fro"] = linalg.frobenius_norm(weight)
        row["dW_fro_rel"] = ratio(row["dW_fro"], row["W_fro"])
        if spectral:
            if empirical_rank:  # one full SVD per matrix serves the exact spectral norm and the rank
                delta_values, weight_values = linalg.singular_values(delta), linalg.singular_values(weight)
                row["dW_spectral"], row["W_spectral"] = float(delta_values[0]), float(weight_values[0])
            else:
                row["dW_spectral"] = linalg.spectral_norm(delta, exact=exact)
                row["W_spectral"] = linalg.spectral_norm(weight, exact=exact)
            row["dW_spectral_rel"] = ratio(row["dW_spectral"], row["W_spectral"])
            row["dW_stable_rank"] = linalg.stable_rank_from_norms(row["dW_fro"], row["dW_spectral"])
            row["W_stable_rank"] = linalg.stable_rank_from_norms(row["W_fro"], row["W_spectral"])
            if empirical_rank:
                row["dW_empirical_rank"] = linalg.empirical_rank(delta_values, energy)
                row["W_empirical_rank"] = linalg.empirical_rank(weight_values, energy)
        rows.append(row)
    return pd.DataFrame(rows)


def depth_bin(layers: pd.Series, n_layers: int) -> pd.Series:
    """early / middle / late: the block's third of the depth (layer * 3 // n_layers)."""
    return layers.map(lambda layer: DEPTHS[min(2, layer * 3 // n_layers)])


def root_sum_square(values: pd.Series) -> float:
    return float(np.sqrt(np.square(values.to_numpy(dtype=float)).sum()))


def aggregate(per_matrix: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Appendix A ``per_layer.csv`` columns for any grouping (layer+group, component, depth bin+group).

    Norms combine as a root-sum-square (the Frobenius norm of all the group's matrices stacked), spectral norms
    as a max, stable / empirical ranks as a mean.
    """
    rows = []
    for key, frame in per_matrix.groupby(keys, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["dW_fro_layer"] = root_sum_square(frame["dW_fro"])
        row["W_fro_layer"] = root_sum_square(frame["W_fro"])
        row["dW_fro_layer_rel"] = ratio(row["dW_fro_layer"], row["W_fro_layer"])
        if "dW_spectral" in frame:
            row["max_dW_spectral"] = float(frame["dW_spectral"].max())
            row["max_W_spectral"] = float(frame["W_spectral"].max())
            row["max_dW_spectral_rel"] = ratio(row["max_dW_spectral"], row["max_W_spectral"])
            row["mean_dW_stable_rank"] = float(frame["dW_stable_rank"].mean())
        if "dW_empirical_rank" in frame:
            row["mean_dW_empirical_rank"] = float(frame["dW_empirical_rank"].mean())
        row["count_mats"] = len(frame)
        rows.append(row)
    return pd.DataFrame(rows)


def _plot_weight_comparison(result: AnalysisResult):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    per_layer = result.tables["per_layer"]
    blocks = per_layer[per_layer["layer"] >= 0]
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=(
        "layer locality: ||dW||_F / ||W||_F per layer", "spectral: max sigma_1(dW) / max sigma_1(W) per layer"))
    legend = Legend()
    for group in sorted(blocks["group"].unique()):
        frame = blocks[blocks["group"] == group]
        for row, column in ((1, "dW_fro_layer_rel"), (2, "max_dW_spectral_rel")):
            if column in frame:
                legend.add(figure, go.Scatter(x=frame["layer"].tolist(), y=frame[column].tolist(),
                                              mode="lines+markers", line=dict(color=color_for(group))),
                           group, row=row, col=1)
    figure.update_xaxes(title_text="layer", row=2, col=1)
    figure.update_layout(title=f"weight comparison (attention vs MLP): {result.label('base')} -> "
                               f"{result.label('other')}", hovermode="x unified")
    integer_layer_axes(figure)
    return figure


class WeightComparison(WeightAnalysis):
    """Step 1: per-matrix size, spectrum and rank of ``dW``; per-layer, per-component and depth-bin tables."""

    name = "weight_comparison"
    description = "Frobenius / spectral norms and stable rank of dW per weight matrix, aggregated per layer"

    def __init__(self, empirical_rank: bool = False, exact: bool = False, energy: float = 0.99,
                 include_embeddings: bool = True, progress: bool = True):
        if not 0 < energy <= 1:
            raise ValueError(f"energy must be in (0, 1] (the variance share the empirical rank keeps), got {energy}")
        self.empirical_rank, self.exact, self.energy = empirical_rank, exact, energy
        self.include_embeddings, self.progress = include_embeddings, progress

    def run(self, base, other) -> AnalysisResult:
        per_matrix = compare_matrices(base, other, exact=self.exact, empirical_rank=self.empirical_rank,
                                      energy=self.energy, include_embeddings=self.include_embeddings,
                                      progress=self.progress)
        per_layer = aggregate(per_matrix, ["layer", "group"])
        per_component = aggregate(per_matrix, ["component", "group"])
        per_component = per_component.sort_values("component", key=lambda names: names.map(
            list(GROUP_OF).index)).reset_index(drop=True)  # model order: Q K V O in out embed unembed
        blocks = per_matrix[per_matrix["layer"] >= 0].assign(
            depth=lambda frame: depth_bin(frame["layer"], base.cfg.n_layers))
        per_coarse_layer = aggregate(blocks, ["depth", "group"])
        per_coarse_layer["depth"] = pd.Categorical(per_coarse_layer["depth"], DEPTHS, ordered=True)
        per_coarse_layer = per_coarse_layer.sort_values(["depth", "group"]).reset_index(drop=True)
        per_coarse_layer["depth"] = per_coarse_layer["depth"].astype(str)
        return AnalysisResult(self.name, per_matrix, tables={"per_layer": per_layer, "per_component": per_component,
                                                             "per_coarse_layer": per_coarse_layer},
                              summary=self._summary(per_matrix, per_layer), plot=_plot_weight_comparison)

    def _summary(self, per_matrix: pd.DataFrame, per_layer: pd.DataFrame) -> dict:
        total_delta, total_weight = root_sum_square(per_matrix["dW_fro"]), root_sum_square(per_matrix["W_fro"])
        blocks = per_layer[per_layer["layer"] >= 0]
        peak = blocks.loc[blocks["dW_fro_layer_rel"].idxmax()] if len(blocks) and total_delta > 0 else None
        summary = {
            "n_matrices": len(per_matrix), "identical": bool(total_delta == 0),
            "dW_fro_total": total_delta, "W_fro_total": total_weight,
            "dW_fro_rel_total": ratio(total_delta, total_weight),
            "dW_fro_rel_by_group": {group: ratio(root_sum_square(frame["dW_fro"]),
                                                             root_sum_square(frame["W_fro"]))
                                    for group, frame in per_matrix.groupby("group")},
            "mean_dW_stable_rank_by_group": per_matrix.groupby("group")["dW_stable_rank"].mean().to_dict(),
            "max_dW_spectral_rel": float(per_matrix["dW_spectral_rel"].max()),
            "peak_layer": None if peak is None else int(peak["layer"]),
            "peak_group": None if peak is None else str(peak["group"]),
            "spectral_method": ("full SVD" if (self.exact or self.empirical_rank) else
                                "randomized block Lanczos (full SVD for matrices with a side < 512)"),
            "excluded": "LayerNorm weights and all biases (vectors: no spectrum)",
        }
        if self.empirical_rank:
            summary["mean_dW_empirical_rank_by_group"] = (
                per_matrix.groupby("group")["dW_empirical_rank"].mean().to_dict())
        return summary

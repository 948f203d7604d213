"""Steps 1 and 4 of the study: how large is ``dW = W_other - W_base``, where is it, and is it MLP or attention?

``weight_comparison`` (``WeightComparison``) - one row per weight matrix, the columns of the seed's Appendix A
(``per_matrix.csv``) plus ``component`` and ``hf_name``; tables ``per_layer`` (Appendix A), ``per_component``
and ``per_coarse_layer`` (early / middle / late thirds of the blocks), all with the per_layer columns.

``mlp_attn_analysis`` (``MLPvsAttention``) - per layer, the ratio of MLP change to attention change.

Where this differs from the seed's scripts, and why:

* Matrices are TransformerLens' ``W_Q, W_K, W_V, W_O, W_in, W_out, W_E, W_U``. GPT-NeoX fuses Q, K and V in
  one ``query_key_value`` parameter; we split it (Q, K and V do different jobs and an update can touch one of
  them only), so ``hf_name`` names the fused parameter three times. Heads are flattened and every matrix is
  oriented like its Hugging Face ``[out, in]`` weight (``y = W x``): ``shape0`` = output features,
  ``shape1`` = input features, as Appendix A says; ``W_E`` keeps the embedding's ``[d_vocab, d_model]``.
  Row permutations (head order inside the fused QKV) change no norm or singular value. ``W_U`` is named
  ``embed_out.weight``, its key in GPT-NeoX checkpoints (transformers >= 5 loads it as ``lm_head.weight``).
* LayerNorm weights and all biases are excluded: they are vectors, with no spectrum or rank.
* ``group`` has a third value, ``embed``, for ``W_E`` / ``W_U`` (``layer`` -1). They appear in
  ``per_layer`` as the row (layer -1, embed); ``per_coarse_layer`` covers the blocks only. A model with tied
  embeddings lists the shared matrix twice (as W_E and as W_U).
* The spectral norm is the fast randomized block Lanczos estimate (``linalg.spectral_norm``: a lower bound,
  within 0.5% on the worst spectra, see benchmarks/bench_spectral.py); ``exact=True`` or
  ``empirical_rank=True`` use the full SVD. The zero matrix has stable rank 0 and empirical rank 0 (not NaN),
  so identical models give all-zero rows. ``dW_fro_rel`` of a zero base matrix is 0 (no change) or inf.
* ``mlp_attn_analysis`` needs only Frobenius norms, so its ``run`` skips the SVDs; the ratios come out the
  same as from a ``weight_comparison`` result (``MLPvsAttention.from_weight_comparison``). A 0/0 ratio (neither
  group changed) is NaN: undefined, not "attention-dominated".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from mechunlearn.diagnostics import linalg
from mechunlearn.diagnostics.base import AnalysisResult, WeightAnalysis

__all__ = ["MatrixSpec", "weight_matrices", "hf_matrix", "compare_matrices", "aggregate", "depth_bin",
           "WeightComparison", "MLPvsAttention", "mlp_vs_attention"]

GROUP_OF = {"Q": "attn", "K": "attn", "V": "attn", "O": "attn", "in": "mlp", "out": "mlp", "embed": "embed",
            "unembed": "embed"}
_TL_NAME = {"Q": "attn.W_Q", "K": "attn.W_K", "V": "attn.W_V", "O": "attn.W_O", "in": "mlp.W_in",
            "out": "mlp.W_out"}
_HF_NAME = {"Q": "attention.query_key_value", "K": "attention.query_key_value", "V": "attention.query_key_value",
            "O": "attention.dense", "in": "mlp.dense_h_to_4h", "out": "mlp.dense_4h_to_h"}
DEPTHS = ("early", "middle", "late")


@dataclass(frozen=True)
class MatrixSpec:
    """One weight matrix: its TransformerLens name, block (-1 outside), group, component and HF parameter."""

    name: str
    layer: int
    group: str
    component: str
    hf_name: str


def weight_matrices(model, *, components: tuple[str, ...] | None = None,
                    include_embeddings: bool = True) -> list[MatrixSpec]:
    """Every weight matrix of a GPT-NeoX HookedTransformer, in model order (embedding, blocks, unembedding)."""
    wanted = components or tuple(GROUP_OF)
    specs = []
    if include_embeddings and "embed" in wanted:
        specs.append(MatrixSpec("embed.W_E", -1, "embed", "embed", "gpt_neox.embed_in.weight"))
    for layer in range(model.cfg.n_layers):
        for component in ("Q", "K", "V", "O", "in", "out"):
            if component in wanted:
                specs.append(MatrixSpec(f"blocks.{layer}.{_TL_NAME[component]}", layer, GROUP_OF[component],
                                        component, f"gpt_neox.layers.{layer}.{_HF_NAME[component]}.weight"))
    if include_embeddings and "unembed" in wanted:
        specs.append(MatrixSpec("unembed.W_U", -1, "embed", "unembed", "embed_out.weight"))
    return specs


def hf_matrix(model, spec: MatrixSpec, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> Float[Tensor, "out in"]:
    """The matrix oriented as its HF ``[out, in]`` weight (heads flattened), upcast to ``dtype``."""
    weight = model.get_parameter(spec.name).detach()
    weight = weight.to(device=device or weight.device, dtype=dtype)
    if spec.component in ("Q", "K", "V"):  # [n_heads, d_model, d_head] -> [(n_heads d_head), d_model]
        return weight.permute(0, 2, 1).reshape(-1, weight.shape[1])
    if spec.component == "O":  # [n_heads, d_head, d_model] -> [d_model, (n_heads d_head)]
        return weight.reshape(-1, weight.shape[-1]).T
    if spec.component in ("in", "out", "unembed"):  # TransformerLens multiplies x @ W: HF stores W.T
        return weight.T
    return weight  # W_E: [d_vocab, d_model], like HF's embed_in.weight


def _require_comparable(base, other) -> None:
    from mechunlearn.diagnostics.runner import check_comparable

    check_comparable(base, other)


def compare_matrices(base, other, *, spectral: bool = True, exact: bool = False, empirical_rank: bool = False,
                     energy: float = 0.99, include_embeddings: bool = True, progress: bool = True) -> pd.DataFrame:
    """The per-matrix frame (Appendix A ``per_matrix.csv`` + ``component``, ``hf_name``) for ``other - base``.

    ``spectral=False`` keeps only the Frobenius columns (no SVD): what the MLP/attention ratio needs.
    """
    _require_comparable(base, other)
    device = next(base.parameters()).device
    rows = []
    specs = weight_matrices(base, include_embeddings=include_embeddings)
    for spec in tqdm(specs, desc="weight comparison", disable=not progress, leave=False):
        weight = hf_matrix(base, spec, device)
        delta = hf_matrix(other, spec, device) - weight
        row = {"name": spec.name, "layer": spec.layer, "group": spec.group, "component": spec.component,
               "hf_name": spec.hf_name, "shape0": weight.shape[0], "shape1": weight.shape[1]}
        row["dW_fro"] = float(torch.linalg.matrix_norm(delta))
        row["W_fro"] = float(torch.linalg.matrix_norm(weight))
        row["dW_fro_rel"] = linalg.safe_ratio(row["dW_fro"], row["W_fro"])
        if spectral:
            if empirical_rank:  # one full SVD per matrix serves the exact spectral norm and the rank
                delta_values, weight_values = linalg.singular_values(delta), linalg.singular_values(weight)
                row["dW_spectral"], row["W_spectral"] = float(delta_values[0]), float(weight_values[0])
            else:
                row["dW_spectral"] = linalg.spectral_norm(delta, exact=exact)
                row["W_spectral"] = linalg.spectral_norm(weight, exact=exact)
            row["dW_spectral_rel"] = linalg.safe_ratio(row["dW_spectral"], row["W_spectral"])
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


def _root_sum_square(values: pd.Series) -> float:
    return float(np.sqrt(np.square(values.to_numpy(dtype=float)).sum()))


def aggregate(per_matrix: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Appendix A ``per_layer.csv`` columns for any grouping (layer+group, component, depth bin+group).

    Norms combine as a root-sum-square (the Frobenius norm of all the group's matrices stacked), spectral norms
    as a max, stable / empirical ranks as a mean.
    """
    rows = []
    for key, frame in per_matrix.groupby(keys, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["dW_fro_layer"] = _root_sum_square(frame["dW_fro"])
        row["W_fro_layer"] = _root_sum_square(frame["W_fro"])
        row["dW_fro_layer_rel"] = linalg.safe_ratio(row["dW_fro_layer"], row["W_fro_layer"])
        if "dW_spectral" in frame:
            row["max_dW_spectral"] = float(frame["dW_spectral"].max())
            row["max_W_spectral"] = float(frame["W_spectral"].max())
            row["max_dW_spectral_rel"] = linalg.safe_ratio(row["max_dW_spectral"], row["max_W_spectral"])
            row["mean_dW_stable_rank"] = float(frame["dW_stable_rank"].mean())
        if "dW_empirical_rank" in frame:
            row["mean_dW_empirical_rank"] = float(frame["dW_empirical_rank"].mean())
        row["count_mats"] = len(frame)
        rows.append(row)
    return pd.DataFrame(rows)


def _plot_weight_comparison(result: AnalysisResult):
    from plotly.subplots import make_subplots

    per_layer = result.tables["per_layer"]
    blocks = per_layer[per_layer["layer"] >= 0]
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=(
        "layer locality: ||dW||_F / ||W||_F per layer", "spectral: max sigma_1(dW) / max sigma_1(W) per layer"))
    for group in sorted(blocks["group"].unique()):
        frame = blocks[blocks["group"] == group]
        figure.add_scatter(x=frame["layer"], y=frame["dW_fro_layer_rel"], mode="lines+markers", name=group,
                           legendgroup=group, row=1, col=1)
        if "max_dW_spectral_rel" in frame:
            figure.add_scatter(x=frame["layer"], y=frame["max_dW_spectral_rel"], mode="lines+markers", name=group,
                               legendgroup=group, showlegend=False, row=2, col=1)
    figure.update_xaxes(title_text="layer", row=2, col=1)
    figure.update_layout(title="weight comparison (attention vs MLP)", hovermode="x unified")
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
        total_delta, total_weight = _root_sum_square(per_matrix["dW_fro"]), _root_sum_square(per_matrix["W_fro"])
        blocks = per_layer[per_layer["layer"] >= 0]
        peak = blocks.loc[blocks["dW_fro_layer_rel"].idxmax()] if len(blocks) and total_delta > 0 else None
        summary = {
            "n_matrices": len(per_matrix), "identical": bool(total_delta == 0),
            "dW_fro_total": total_delta, "W_fro_total": total_weight,
            "dW_fro_rel_total": linalg.safe_ratio(total_delta, total_weight),
            "dW_fro_rel_by_group": {group: linalg.safe_ratio(_root_sum_square(frame["dW_fro"]),
                                                             _root_sum_square(frame["W_fro"]))
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


# ------------------------------------------------------------------------------------------- step 4: MLP vs attn
def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN for 0/0 (neither changed: undefined) and inf for x/0."""
    if denominator == 0:
        return math.nan if numerator == 0 else math.inf
    return numerator / denominator


def mlp_vs_attention(per_matrix: pd.DataFrame) -> pd.DataFrame:
    """Per layer: MLP and attention change (absolute and relative Frobenius) and their ratios."""
    per_layer = aggregate(per_matrix[per_matrix["group"].isin(["attn", "mlp"])], ["layer", "group"])
    rows = []
    for layer, frame in per_layer.groupby("layer", sort=True):
        by_group = frame.set_index("group")
        attn = by_group.loc["attn"] if "attn" in by_group.index else None
        mlp = by_group.loc["mlp"] if "mlp" in by_group.index else None
        if attn is None or mlp is None:
            continue
        row = {"layer": int(layer), "attn_dW_fro": attn["dW_fro_layer"], "mlp_dW_fro": mlp["dW_fro_layer"],
               "attn_W_fro": attn["W_fro_layer"], "mlp_W_fro": mlp["W_fro_layer"],
               "attn_dW_fro_rel": attn["dW_fro_layer_rel"], "mlp_dW_fro_rel": mlp["dW_fro_layer_rel"]}
        row["mlp_attn_ratio_rel"] = _ratio(row["mlp_dW_fro_rel"], row["attn_dW_fro_rel"])
        row["mlp_attn_ratio_abs"] = _ratio(row["mlp_dW_fro"], row["attn_dW_fro"])
        row["mlp_share"] = _ratio(row["mlp_dW_fro"] ** 2, row["mlp_dW_fro"] ** 2 + row["attn_dW_fro"] ** 2)
        rows.append(row)
    return pd.DataFrame(rows)


def _plot_mlp_vs_attention(result: AnalysisResult):
    from plotly.subplots import make_subplots

    frame = result.frame
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=(
        "MLP change / attention change (relative Frobenius; 1 = equal)", "relative Frobenius change per group"))
    figure.add_scatter(x=frame["layer"], y=frame["mlp_attn_ratio_rel"], mode="lines+markers", name="ratio (rel)",
                       row=1, col=1)
    figure.add_scatter(x=frame["layer"], y=frame["mlp_attn_ratio_abs"], mode="lines+markers", name="ratio (abs)",
                       line=dict(dash="dot"), row=1, col=1)
    figure.add_hline(y=1.0, line=dict(color="grey", dash="dash"), row=1, col=1)
    for group in ("attn", "mlp"):
        figure.add_bar(x=frame["layer"], y=frame[f"{group}_dW_fro_rel"], name=group, row=2, col=1)
    figure.update_yaxes(type="log", row=1, col=1)
    figure.update_xaxes(title_text="layer", row=2, col=1)
    figure.update_layout(title="MLP vs attention", barmode="group")
    return figure


class MLPvsAttention(WeightAnalysis):
    """Step 4: per layer, is the change in the MLP (knowledge storage) or in attention (routing)?"""

    name = "mlp_attn_analysis"
    description = "ratio of MLP change to attention change per layer (relative and absolute Frobenius)"

    def __init__(self, progress: bool = True):
        self.progress = progress

    def run(self, base, other) -> AnalysisResult:
        return self.from_per_matrix(compare_matrices(base, other, spectral=False, include_embeddings=False,
                                                     progress=self.progress))

    @classmethod
    def from_weight_comparison(cls, result: AnalysisResult) -> AnalysisResult:
        """The same analysis from an existing ``weight_comparison`` result (no second pass over the weights)."""
        return cls.from_per_matrix(result.frame)

    @classmethod
    def from_per_matrix(cls, per_matrix: pd.DataFrame) -> AnalysisResult:
        frame = mlp_vs_attention(per_matrix)
        blocks = per_matrix[per_matrix["group"].isin(["attn", "mlp"])]
        totals = {group: (_root_sum_square(part["dW_fro"]), _root_sum_square(part["W_fro"]))
                  for group, part in blocks.groupby("group")}
        attn_delta, attn_weight = totals.get("attn", (0.0, 0.0))
        mlp_delta, mlp_weight = totals.get("mlp", (0.0, 0.0))
        ratio_rel = _ratio(linalg.safe_ratio(mlp_delta, mlp_weight), linalg.safe_ratio(attn_delta, attn_weight))
        summary = {
            "attn_dW_fro_rel": linalg.safe_ratio(attn_delta, attn_weight),
            "mlp_dW_fro_rel": linalg.safe_ratio(mlp_delta, mlp_weight),
            "mlp_attn_ratio_rel": ratio_rel, "mlp_attn_ratio_abs": _ratio(mlp_delta, attn_delta),
            "n_layers": len(frame), "n_layers_mlp_dominant": int((frame.get("mlp_attn_ratio_rel", pd.Series(
                dtype=float)) > 1).sum()),
            "dominant": "none" if math.isnan(ratio_rel) else ("mlp" if ratio_rel > 1 else "attn"),
            "layer_max_ratio_rel": (int(frame.loc[frame["mlp_attn_ratio_rel"].idxmax(), "layer"])
                                    if len(frame) and frame["mlp_attn_ratio_rel"].notna().any() else None),
        }
        return AnalysisResult(cls.name, frame, summary=summary, plot=_plot_mlp_vs_attention)

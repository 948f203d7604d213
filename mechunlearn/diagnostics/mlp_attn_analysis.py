"""Step 4, MLP vs attention: per layer, is the change in the MLP (knowledge storage) or in attention (routing)?

Per layer, the ratio of MLP change to attention change, from Frobenius norms of ``dW`` (root-sum-square over each
group's matrices; relative = divided by the same for ``W``). It needs Frobenius norms only, so ``run`` skips the
SVDs; the ratios come out the same as from a ``weight_comparison`` result (``from_weight_comparison``). Ratios
follow ``mechunlearn.numeric.ratio``: 0/0 (neither group changed) is NaN, undefined, not "attention-dominated";
x/0 is inf.
"""

from __future__ import annotations

import math

import pandas as pd

from mechunlearn.diagnostics.base import AnalysisResult, WeightAnalysis
from mechunlearn.diagnostics.figures import Legend, color_for, integer_layer_axes
from mechunlearn.diagnostics.weight_comparison import aggregate, compare_matrices, root_sum_square
from mechunlearn.numeric import ratio

__all__ = ["MLPAttnAnalysis", "mlp_vs_attention"]


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
        row["mlp_attn_ratio_rel"] = ratio(row["mlp_dW_fro_rel"], row["attn_dW_fro_rel"])
        row["mlp_attn_ratio_abs"] = ratio(row["mlp_dW_fro"], row["attn_dW_fro"])
        row["mlp_share"] = ratio(row["mlp_dW_fro"] ** 2, row["mlp_dW_fro"] ** 2 + row["attn_dW_fro"] ** 2)
        rows.append(row)
    return pd.DataFrame(rows)


def _plot_mlp_vs_attention(result: AnalysisResult):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    frame = result.frame
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=(
        "MLP change / attention change (relative Frobenius; 1 = equal)", "relative Frobenius change per group"))
    legend = Legend()
    for column, label, dash in (("mlp_attn_ratio_rel", "ratio (relative)", "solid"),
                                ("mlp_attn_ratio_abs", "ratio (absolute)", "dot")):
        legend.add(figure, go.Scatter(x=frame["layer"].tolist(), y=frame[column].tolist(), mode="lines+markers",
                                      line=dict(color=color_for("ratio"), dash=dash)), label, row=1, col=1)
    figure.add_hline(y=1.0, line=dict(color=color_for("chance"), dash="dash"), row=1, col=1)
    for group in ("attn", "mlp"):
        legend.add(figure, go.Bar(x=frame["layer"].tolist(), y=frame[f"{group}_dW_fro_rel"].tolist(),
                                  marker_color=color_for(group)), group, row=2, col=1)
    figure.update_yaxes(type="log", row=1, col=1)
    figure.update_xaxes(title_text="layer", row=2, col=1)
    figure.update_layout(title=f"MLP vs attention: {result.label('base')} -> {result.label('other')}",
                         barmode="group")
    integer_layer_axes(figure)
    return figure


class MLPAttnAnalysis(WeightAnalysis):
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
        totals = {group: (root_sum_square(part["dW_fro"]), root_sum_square(part["W_fro"]))
                  for group, part in blocks.groupby("group")}
        attn_delta, attn_weight = totals.get("attn", (0.0, 0.0))
        mlp_delta, mlp_weight = totals.get("mlp", (0.0, 0.0))
        ratio_rel = ratio(ratio(mlp_delta, mlp_weight), ratio(attn_delta, attn_weight))
        summary = {
            "attn_dW_fro_rel": ratio(attn_delta, attn_weight),
            "mlp_dW_fro_rel": ratio(mlp_delta, mlp_weight),
            "mlp_attn_ratio_rel": ratio_rel, "mlp_attn_ratio_abs": ratio(mlp_delta, attn_delta),
            "n_layers": len(frame), "n_layers_mlp_dominant": int((frame.get("mlp_attn_ratio_rel", pd.Series(
                dtype=float)) > 1).sum()),
            "dominant": "none" if math.isnan(ratio_rel) else ("mlp" if ratio_rel > 1 else "attn"),
            "layer_max_ratio_rel": (int(frame.loc[frame["mlp_attn_ratio_rel"].idxmax(), "layer"])
                                    if len(frame) and frame["mlp_attn_ratio_rel"].notna().any() else None),
        }
        return AnalysisResult(cls.name, frame, summary=summary, plot=_plot_mlp_vs_attention)

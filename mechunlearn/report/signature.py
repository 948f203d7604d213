"""The brittleness signature: one row per model, one column per diagnostic summary, each next to gold's.

Seed 003's "Big Picture" predicts that post-hoc unlearning shows "small magnitude, attention-localized, low-rank,
nullspace-aligned, minimal activation change, low selectivity, and increased roughness", and filtering (the gold
standard) the opposite on every dimension. Each column below is one of those dimensions, computed by a stated
formula from the analyses' CSV files (never from a plot), so a reader can check it by hand; docs/report.md lists
the same formulas. A column whose analysis did not run is absent (``None``: not computed); a ratio follows
``mechunlearn.numeric.ratio`` (0/0 undefined, x/0 infinite).

Rows: ``gold`` and every diagnosed unlearned model (``base -> model``), and ``base`` for the per-model columns
(knowledge depth: base is what "knows" looks like). ``signature_runs.csv`` has one row per model id;
``signature.csv`` one row per table label (a method, or ``<method>-<config key>`` in a grid): the mean over the
diagnosed seeds with a Student-t 95 % interval over seeds (``<column>/low``, ``<column>/high``, ``n_seeds``; one
seed: bounds undefined), as the methods table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mechunlearn.numeric import ratio
from mechunlearn.report.outputs import StudyOutputs

__all__ = ["SignatureColumn", "SIGNATURE_COLUMNS", "signature_runs", "signature_table", "signature_markdown",
           "LIPSCHITZ_CANDIDATES"]

BLOCK_GROUPS = ("attn", "mlp")
# lipschitzness' forget-text sensitivity, by preference: the Jacobian spectral norm (a local Lipschitz constant),
# the perturbation estimate of earlier versions, a random direction's gain
LIPSCHITZ_CANDIDATES = ("jacobian_spectral_norm_mean", "lipschitz_mean", "directional_gain_mean")


@dataclass(frozen=True)
class SignatureColumn:
    name: str           # CSV column
    title: str          # table header
    level: str          # seed 003's "Big Picture" level it answers
    analysis: str       # the analysis it reads
    formula: str        # what docs/report.md states
    brittle: str        # what the thesis predicts for a brittle (post-hoc) intervention
    scope: str          # "pair" (base -> model) or "model" (the model itself)
    compute: Callable[[StudyOutputs, str], float | None]


def _rows(frame: pd.DataFrame | None, model_id: str) -> pd.DataFrame | None:
    if frame is None or frame.empty or "model_id" not in frame.columns:
        return None
    rows = frame[frame["model_id"] == model_id]
    return rows if not rows.empty else None


def _block_matrices(outputs: StudyOutputs, model_id: str) -> pd.DataFrame | None:
    frame = outputs.pair_frame("weight_comparison", "per_matrix")
    rows = _rows(frame if frame is not None else outputs.pair_frame("weight_comparison"), model_id)
    return None if rows is None else rows[rows["group"].isin(BLOCK_GROUPS)]


def _magnitude(outputs: StudyOutputs, model_id: str) -> float | None:
    rows = _block_matrices(outputs, model_id)
    if rows is None or rows.empty:
        return None
    return ratio(math.sqrt(float((rows["dW_fro"] ** 2).sum())), math.sqrt(float((rows["W_fro"] ** 2).sum())))


def _location(outputs: StudyOutputs, model_id: str) -> float | None:
    rows = _block_matrices(outputs, model_id)
    if rows is None or set(rows["group"]) != set(BLOCK_GROUPS):
        return None

    def relative(group: str) -> float:
        part = rows[rows["group"] == group]
        return ratio(math.sqrt(float((part["dW_fro"] ** 2).sum())), math.sqrt(float((part["W_fro"] ** 2).sum())))
    return ratio(relative("mlp"), relative("attn"))


def _rank(outputs: StudyOutputs, model_id: str) -> float | None:
    rows = _block_matrices(outputs, model_id)
    if rows is None or rows.empty:
        return None
    values = rows["dW_stable_rank"].astype(float)
    values = values[~values.isna()]  # a zero update has no stable rank (0/0)
    return float(values.mean()) if len(values) else math.nan


def _null_space(outputs: StudyOutputs, model_id: str) -> float | None:
    rows = _rows(outputs.pair_frame("mlp_nullspace"), model_id)
    if rows is None:
        return None
    # the informative side of each MLP matrix (HF [out, in] layout): W_in is tall, so its LEFT null space has
    # d_mlp - r dimensions (column side); W_out is wide, so its null space is on the row side
    values = [row["null_space_fraction"] if row["component"] == "in" else row["row_null_fraction"]
              for _, row in rows.iterrows() if row["component"] in ("in", "out")]
    values = [float(value) for value in values if not pd.isna(value)]
    return float(np.mean(values)) if values else math.nan


def _activation_change(outputs: StudyOutputs, model_id: str) -> float | None:
    rows = _rows(outputs.pair_frame("activation_comparison"), model_id)
    if rows is None:
        return None
    forget = rows[rows["split"] == "forget"]
    values = [ratio(dh, norm) for dh, norm in zip(forget["mean_dh_L2"], forget["model_a_norm_L2"])]
    return float(np.mean(values)) if values else None


def _selectivity(analysis: str, forget_column: str, retain_column: str):
    def compute(outputs: StudyOutputs, model_id: str) -> float | None:
        rows = _rows(outputs.pair_frame(analysis, "selectivity"), model_id)
        if rows is None:
            return None
        return ratio(float(rows[forget_column].sum()), float(rows[retain_column].sum()))
    return compute


def _stability(outputs: StudyOutputs, model_id: str) -> float | None:
    rows = _rows(outputs.pair_frame("lipschitzness"), model_id)
    if rows is None:
        return None
    column = next((name for name in LIPSCHITZ_CANDIDATES if name in rows.columns), None)
    forget = rows[rows["split"] == "forget"].set_index("model")
    if column is None or not {"base", "other"} <= set(forget.index):
        return None
    return ratio(float(forget.loc["other", column]), float(forget.loc["base", column]))


def _lens_depth(analysis: str):
    def compute(outputs: StudyOutputs, model_id: str) -> float | None:
        rows = _rows(outputs.model_frame(analysis), model_id)
        if rows is None:
            return None
        forget = rows[rows["domain"] == "forget"]
        return float(forget["accuracy"].max()) if not forget.empty else None
    return compute


def _probe_depth(outputs: StudyOutputs, model_id: str) -> float | None:
    rows = _rows(outputs.model_frame("knowledge_probe"), model_id)
    if rows is None:
        return None
    if "category" in rows.columns:
        rows = rows[rows["category"] == "all"]
    return float(rows["accuracy"].max()) if not rows.empty else None


SIGNATURE_COLUMNS: tuple[SignatureColumn, ...] = (
    SignatureColumn(
        "magnitude", "magnitude ‖ΔW‖/‖W‖", "Magnitude", "weight_comparison",
        "sqrt(sum_i ||dW_i||_F^2) / sqrt(sum_i ||W_i||_F^2) over every attention and MLP matrix i of the blocks "
        "(weight_comparison/per_matrix.csv: dW_fro, W_fro, group in attn|mlp; embeddings left out)",
        "small", "pair", _magnitude),
    SignatureColumn(
        "location", "location MLP/attn", "Location", "weight_comparison",
        "(||dW_mlp||_F / ||W_mlp||_F) / (||dW_attn||_F / ||W_attn||_F), each group's root-sum-square over its "
        "matrices (per_matrix.csv); > 1: the update sits in the MLPs, < 1: in attention",
        "< 1 (attention-localized)", "pair", _location),
    SignatureColumn(
        "rank", "stable rank of ΔW", "Geometry", "weight_comparison",
        "mean over the attention and MLP matrices of the stable rank ||dW_i||_F^2 / ||dW_i||_2^2 "
        "(per_matrix.csv: dW_stable_rank; a zero update, 0/0, is left out)",
        "low", "pair", _rank),
    SignatureColumn(
        "null_space", "null-space share", "Geometry", "mlp_nullspace",
        "mean over MLP matrices of the share of ||dW||_F^2 outside the span of W on the matrix's informative side: "
        "W_in (tall) ||(I - P_col(W)) dW||^2 / ||dW||^2 (null_space_fraction), W_out (wide) "
        "||dW (I - P_row(W))||^2 / ||dW||^2 (row_null_fraction)",
        "high (nullspace-aligned)", "pair", _null_space),
    SignatureColumn(
        "activation_change", "activation change (forget)", "Function", "activation_comparison",
        "mean over residual layers l of E||h_model - h_base||_2 / E||h_base||_2 on forget-text tokens "
        "(activation_comparison.csv, split forget: mean_dh_L2 / model_a_norm_L2)",
        "small", "pair", _activation_change),
    SignatureColumn(
        "selectivity_covariance", "selectivity (covariance)", "Function", "activation_covariance",
        "sum_l W1(forget spectra)_l / sum_l W1(retain spectra)_l: the Wasserstein distance between base's and the "
        "model's covariance eigenvalue spectra on forget texts over that on retain texts "
        "(activation_covariance/selectivity.csv: wasserstein_forget, wasserstein_retain)",
        "low (~1)", "pair", _selectivity("activation_covariance", "wasserstein_forget", "wasserstein_retain")),
    SignatureColumn(
        "selectivity_row_space", "selectivity (row space)", "Precision", "row_space_projection",
        "sum_l share_forget_l / sum_l share_retain_l: the share of MLP input activations in the top-k row space of "
        "dW_in on forget texts over that on retain texts (row_space_projection/selectivity.csv)",
        "low (~1)", "pair", _selectivity("row_space_projection", "share_forget", "share_retain")),
    SignatureColumn(
        "stability", "roughness (Lipschitz ratio)", "Stability", "lipschitzness",
        "model / base of the local Lipschitz estimate on forget texts (lipschitzness.csv, split forget, first of "
        + ", ".join(LIPSCHITZ_CANDIDATES) + "); > 1: rougher than base",
        "> 1 (rougher)", "pair", _stability),
    SignatureColumn(
        "depth_logit_lens", "knowledge depth: logit lens", "Knowledge depth", "logit_lens",
        "max over layers of the forget-MCQ accuracy read through the logit lens (logit_lens.csv, domain forget); "
        "high with a low final accuracy: the knowledge is hidden, not erased",
        "high (knowledge still readable)", "model", _lens_depth("logit_lens")),
    SignatureColumn(
        "depth_tuned_lens", "knowledge depth: tuned lens", "Knowledge depth", "tuned_lens",
        "max over layers of the forget-MCQ accuracy read through the tuned lens (tuned_lens.csv, domain forget)",
        "high", "model", _lens_depth("tuned_lens")),
    SignatureColumn(
        "depth_knowledge_probe", "knowledge depth: knowledge probe", "Knowledge depth", "knowledge_probe",
        "max over layers of the knowledge probe's accuracy on all forget facts (knowledge_probe.csv, category all)",
        "high", "model", _probe_depth),
)


def signature_runs(outputs: StudyOutputs) -> pd.DataFrame:
    """One row per model id (base, gold, each diagnosed model): ``model_id``, ``label``, ``role``, ``seed`` and
    every signature column whose analysis ran."""
    compared = list(outputs.comparisons)
    model_ids = (["base"] if compared else []) + compared
    rows = []
    for model_id in model_ids:
        info = outputs.models.get(model_id)
        row = {"model_id": model_id, "label": info.label if info else model_id,
               "role": info.role if info else "unlearned", "seed": info.seed if info else None}
        for column in SIGNATURE_COLUMNS:
            if column.scope == "pair" and model_id == "base":
                continue
            value = column.compute(outputs, model_id)
            if value is not None:
                row[column.name] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    present = [column.name for column in SIGNATURE_COLUMNS if column.name in frame.columns]
    return frame.reindex(columns=["model_id", "label", "role", "seed", *present])


def signature_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per label: the mean over seeds with a t interval (``stats.seed_interval``), and gold's value."""
    from mechunlearn.stats import seed_interval

    columns = [column.name for column in SIGNATURE_COLUMNS if column.name in runs.columns]
    rows = []
    for label, group in runs.groupby("label", sort=False):
        row = {"model": label, "role": group["role"].iloc[0], "n_seeds": len(group)}
        for name in columns:
            values = group[name].astype(float)
            if values.isna().all():
                row[name], row[f"{name}/low"], row[f"{name}/high"] = math.nan, math.nan, math.nan
                continue
            interval = seed_interval(values.to_numpy())
            row[name], row[f"{name}/low"], row[f"{name}/high"] = interval.mean, interval.low, interval.high
        rows.append(row)
    table = pd.DataFrame(rows)
    gold = table[table["model"] == "gold"]
    for name in columns:
        table[f"{name}/gold"] = float(gold[name].iloc[0]) if not gold.empty else math.nan
    return table


def _cell(mean: float, low: float, high: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if math.isinf(mean):
        return "inf" if mean > 0 else "-inf"
    if math.isnan(low) or math.isnan(high):
        return f"{mean:.3g}"
    return f"{mean:.3g} [{low:.3g}, {high:.3g}]"


def signature_cells(table: pd.DataFrame) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Header and, per row, ``(value cell, gold cell)`` pairs, shared by the Markdown and HTML renderings."""
    columns = [column for column in SIGNATURE_COLUMNS if column.name in table.columns]
    header = ["model", "seeds", *[column.title for column in columns]]
    rows = []
    for record in table.to_dict("records"):
        cells = [(str(record["model"]), ""), (str(record["n_seeds"]), "")]
        for column in columns:
            value = _cell(record[column.name], record[f"{column.name}/low"], record[f"{column.name}/high"])
            gold = record[f"{column.name}/gold"]
            gold_text = "" if record["model"] == "gold" or value == "n/a" else f"gold {_cell(gold, math.nan, math.nan)}"
            cells.append((value, gold_text))
        rows.append(cells)
    return header, rows


def signature_markdown(table: pd.DataFrame) -> str:
    from mechunlearn.pipeline.steps.tables import markdown_table

    header, rows = signature_cells(table)
    body = [[value + (f" (gold {gold[5:]})" if gold else "") for value, gold in row] for row in rows]
    columns = [column for column in SIGNATURE_COLUMNS if column.name in table.columns]
    legend = "\n".join(f"- **{column.title}** ({column.level}; brittle: {column.brittle}): {column.formula}"
                       for column in columns)
    return ("Brittleness signature: mean over diagnosed seeds [95 % t interval over seeds], each cell next to the "
            "gold model's value. Columns:\n\n" + legend + "\n\n" + markdown_table(header, body))

"""Every publication figure, each a function ``(outputs) -> matplotlib Figure | None`` drawn from the study's
CSVs (``mechunlearn.report.outputs.StudyOutputs``); None when the study has no data for it (no attacks: no
relearning curves). Registered in ``FIGURES`` in the order a paper would show them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from mechunlearn.figures.style import LINESTYLE, finish, integer_layers, new_figure
from mechunlearn.views.palette import color_for, display_name

__all__ = ["FIGURES", "layer_locality", "stable_rank", "activation_norms", "lens_accuracy", "probe_accuracy",
           "covariance_selectivity", "relearning_curves", "native_switch", "whp_alpha_sweep_figure"]


def _lines(axis, frame: pd.DataFrame, column: str, *, split: str | None = None, x: str = "layer") -> None:
    """One line per model of ``frame`` (``model_id``), mean of ``column`` per ``x``; ``split`` sets the style."""
    for model_id, group in frame.groupby("model_id", sort=False):
        series = group.groupby(x, as_index=False)[column].mean().sort_values(x)
        if series[column].isna().all():
            continue
        axis.plot(series[x], series[column], color=color_for(model_id), linestyle=LINESTYLE.get(split, "-"),
                  marker="o", label=display_name(model_id) if split in (None, "forget") else "_" + str(model_id))


def _split_legend(axis) -> None:
    """Entries for the line styles, collected into the figure's one legend by ``finish``."""
    for split in ("forget", "retain"):
        axis.plot([], [], color="0.35", linestyle=LINESTYLE[split], label=f"{split} texts")


def layer_locality(outputs):
    """Relative weight change ‖ΔW‖_F/‖W‖_F per layer, attention vs MLP (seed 003 step 1's layer locality)."""
    frame = outputs.pair_frame("weight_comparison", "per_layer")
    if frame is None or frame.empty:
        return None
    frame = frame[frame["layer"] >= 0]
    figure, axes = new_figure(2, sharey=True)
    for axis, group in zip(axes, ("attn", "mlp")):
        _lines(axis, frame[frame["group"] == group], "dW_fro_layer_rel")
        axis.set_title({"attn": "attention", "mlp": "MLP"}[group])
        axis.set_yscale("log")
        integer_layers(axis)
    axes[0].set_ylabel(r"$\|\Delta W\|_F / \|W\|_F$")
    finish(figure, axes)
    return figure


def stable_rank(outputs):
    """Mean stable rank of ΔW per layer, attention vs MLP."""
    frame = outputs.pair_frame("weight_comparison", "per_layer")
    if frame is None or frame.empty:
        return None
    frame = frame[frame["layer"] >= 0]
    figure, axes = new_figure(2, sharey=True)
    for axis, group in zip(axes, ("attn", "mlp")):
        _lines(axis, frame[frame["group"] == group], "mean_dW_stable_rank")
        axis.set_title({"attn": "attention", "mlp": "MLP"}[group])
        integer_layers(axis)
    axes[0].set_ylabel(r"stable rank of $\Delta W$")
    finish(figure, axes)
    return figure


def activation_norms(outputs):
    """Activation change per layer: E‖h − h_base‖₂ / E‖h_base‖₂ and the norm ratio, forget vs retain."""
    frame = outputs.pair_frame("activation_comparison")
    if frame is None or frame.empty:
        return None
    frame = frame.assign(relative_dh=frame["mean_dh_L2"] / frame["model_a_norm_L2"],
                         norm_ratio=frame["model_b_norm_L2"] / frame["model_a_norm_L2"])
    figure, axes = new_figure(2)
    for split in ("forget", "retain"):
        rows = frame[frame["split"] == split]
        _lines(axes[0], rows, "relative_dh", split=split)
        _lines(axes[1], rows, "norm_ratio", split=split)
    axes[0].set_ylabel(r"$E\|h - h_{base}\| / E\|h_{base}\|$")
    axes[1].set_ylabel(r"$E\|h\| / E\|h_{base}\|$")
    axes[1].axhline(1.0, color=color_for("chance"), linestyle=":", linewidth=0.8)
    for axis in axes:
        integer_layers(axis)
    _split_legend(axes[1])
    finish(figure, axes)
    return figure


def _accuracy_panels(panels: Sequence[tuple[str, pd.DataFrame | None, dict]], ylabel: str):
    panels = [(title, frame, where) for title, frame, where in panels if frame is not None and not frame.empty]
    if not panels:
        return None
    figure, axes = new_figure(len(panels), sharey=True)
    for axis, (title, frame, where) in zip(axes, panels):
        for key, value in where.items():
            if key in frame.columns:
                frame = frame[frame[key] == value]
        _lines(axis, frame, "accuracy")
        if "chance" in frame.columns and frame["chance"].notna().any():
            axis.axhline(float(frame["chance"].mean()), color=color_for("chance"), linestyle=":", linewidth=0.8,
                         label="chance")
        axis.set_title(title)
        axis.set_ylim(0, 1.02)
        integer_layers(axis)
    axes[0].set_ylabel(ylabel)
    finish(figure, axes)
    return figure


def lens_accuracy(outputs):
    """Forget-MCQ accuracy read at every layer through the logit lens and the tuned lens (seed 003 step 6)."""
    return _accuracy_panels([("logit lens", outputs.model_frame("logit_lens"), {"domain": "forget"}),
                             ("tuned lens", outputs.model_frame("tuned_lens"), {"domain": "forget"})],
                            "forget MCQ accuracy")


def probe_accuracy(outputs):
    """Linear probes by layer: the topic probe (forget vs retain text, step 5) and the knowledge probe (facts)."""
    return _accuracy_panels([("topic probe (forget vs retain)", outputs.model_frame("linear_probes"), {}),
                             ("knowledge probe (forget facts)", outputs.model_frame("knowledge_probe"),
                              {"category": "all"})], "probe accuracy")


def covariance_selectivity(outputs):
    """Selectivity per layer: covariance spectra (W1 forget / W1 retain) and row-space projection shares."""
    panels = [(title, outputs.pair_frame(analysis, "selectivity"))
              for title, analysis in (("covariance spectra", "activation_covariance"),
                                      ("row space of $\\Delta W_{in}$", "row_space_projection"))]
    panels = [(title, frame) for title, frame in panels if frame is not None and not frame.empty]
    if not panels:
        return None
    figure, axes = new_figure(len(panels))
    for axis, (title, frame) in zip(axes, panels):
        _lines(axis, frame, "selectivity")
        axis.axhline(1.0, color=color_for("chance"), linestyle=":", linewidth=0.8)
        axis.set_title(title)
        integer_layers(axis)
    axes[0].set_ylabel("selectivity (forget / retain)")
    finish(figure, axes)
    return figure


def relearning_curves(outputs):
    """Held-out forget-unique accuracy against optimiser steps of the relearning attack, gold dashed."""
    panels = [(attack, outputs.attack_frame(attack, "headline_curve")) for attack in ("relearn", "retain_finetune")]
    panels = [(attack, frame) for attack, frame in panels if frame is not None and not frame.empty]
    if not panels:
        return None
    figure, axes = new_figure(len(panels), sharey=True)
    for axis, (attack, frame) in zip(axes, panels):
        rows = frame[frame["category"] == "unique"] if "category" in frame.columns else frame
        for model_id, group in rows.groupby("model_id", sort=False):
            group = group.sort_values("step")
            axis.plot(group["step"].clip(lower=0.5), group["accuracy"], color=color_for(model_id), marker="o",
                      linestyle="--" if model_id == "gold" else "-", label=display_name(model_id))
        axis.set_xscale("log")
        axis.set_xlabel("attack steps (0 shown at 0.5)")
        axis.set_title({"relearn": "relearning", "retain_finetune": "retain-only fine-tuning"}.get(attack, attack))
        axis.set_ylim(0, 1.02)
    axes[0].set_ylabel("forget-unique accuracy")
    finish(figure, axes)
    return figure


def native_switch(outputs):
    """Accuracy on unique / shared / inferred facts after switching a source off, next to gold."""
    from mechunlearn.report.figures import native_switch_frame

    frame = native_switch_frame(outputs.native_csvs())
    if frame is None or frame.empty:
        return None
    categories = [c for c in ("unique", "shared", "inferred") if c in set(frame["category"])] or \
        list(dict.fromkeys(frame["category"]))
    models = list(dict.fromkeys(frame["model"]))
    figure, axes = new_figure(1)
    axis = axes[0]
    width = 0.8 / max(1, len(models))
    for index, model in enumerate(models):
        rows = frame[frame["model"] == model].groupby("category")["accuracy"].mean().reindex(categories)
        positions = np.arange(len(categories)) + (index - (len(models) - 1) / 2) * width
        axis.bar(positions, rows.to_numpy(), width=width, color=color_for(model), label=display_name(str(model)))
    axis.set_xticks(np.arange(len(categories)), categories)
    axis.set_ylim(0, 1.02)
    axis.set_ylabel("exact cloze accuracy")
    finish(figure, axes)
    return figure


def whp_alpha_sweep_figure(frame: pd.DataFrame | None):
    """The generic-logit knob of WHP: p(true answer) and top-1 rate under v_generic as alpha grows."""
    if frame is None or frame.empty:
        return None
    from mechunlearn.stats import bootstrap_interval

    figure, axes = new_figure(2)
    for axis, column, ylabel in ((axes[0], "p_answer", "p(true answer)"), (axes[1], "answer_is_top", "top-1 rate")):
        grouped = [(alpha, bootstrap_interval(rows[column].to_numpy(dtype=float)))
                   for alpha, rows in frame.groupby("alpha", sort=True)]
        alphas = [alpha for alpha, _ in grouped]
        axis.plot(alphas, [i.mean for _, i in grouped], color=color_for("whp"), marker="o",
                  label=r"$v_{base} - \alpha\,\mathrm{ReLU}(v_{reinf} - v_{base})$")
        axis.fill_between(alphas, [i.low for _, i in grouped], [i.high for _, i in grouped], color=color_for("whp"),
                          alpha=0.25, linewidth=0)
        for reference, style in (("base", ":"), ("reinforced", "--")):
            reference_column = f"{reference}_{column}"
            if reference_column in frame.columns:
                axis.axhline(float(frame.drop_duplicates("prompt")[reference_column].mean()),
                             color=color_for("base") if reference == "base" else color_for("gold"), linestyle=style,
                             linewidth=0.9, label=f"{reference} model")
        axis.set_xscale("symlog", linthresh=1.0, linscale=0.6)
        axis.set_xlim(0, max(alphas) * 1.05)
        axis.set_xticks(alphas, [f"{alpha:g}" for alpha in alphas])
        axis.set_xlabel(r"$\alpha$")
        axis.set_ylabel(ylabel)
        axis.set_ylim(0, 1.02)
    finish(figure, axes, columns=3)
    return figure


FIGURES: dict[str, Callable] = {
    "layer_locality": layer_locality,
    "stable_rank": stable_rank,
    "activation_norms": activation_norms,
    "lens_accuracy": lens_accuracy,
    "probe_accuracy": probe_accuracy,
    "covariance_selectivity": covariance_selectivity,
    "relearning_curves": relearning_curves,
    "native_switch": native_switch,
}

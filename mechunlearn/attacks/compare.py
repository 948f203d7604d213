"""A model next to the gold standard under the same attack: paired differences over facts, curve metrics, figures.

Only the difference to gold means recovery: an attack that raises gold's accuracy on the forget target teaches,
it does not recover. ``vs_gold(facts, gold_facts)`` pairs the two per-fact tables on the same facts
(``mechunlearn.stats.paired_difference``: mean difference with a bootstrap interval and a sign-flip permutation
p-value). For the curve attacks (relearning, retain-only fine-tuning), ``curve_metrics`` gives:

* ``steps_to_half_gap``: the first measured step at which the curve reaches half of the base-gold gap,
  ``gold_before + 0.5 * (base_before - gold_before)`` (``inf`` when it never does within the budget; undefined
  when base does not know more than gold);
* ``area_vs_gold``: the area between the model's curve and gold's (trapezoid over steps) divided by the last
  step: the mean accuracy above gold's over the attack.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from mechunlearn.attacks.base import FORGET_CATEGORIES, AttackResult

__all__ = ["vs_gold", "with_gold", "curve_metrics", "before_after_figure", "curve_figure", "category_rows"]


def category_rows(facts: pd.DataFrame, category: str) -> pd.DataFrame:
    if category == "retain":
        return facts[facts["domain"] == "retain"]
    forget = facts[facts["domain"] == "forget"]
    return forget if category == "all" else forget[forget["category"] == category]


def vs_gold(facts: pd.DataFrame, gold_facts: pd.DataFrame, column: str = "after",
            categories: tuple[str, ...] = (*FORGET_CATEGORIES, "retain"), cache: dict | None = None
            ) -> dict[str, dict]:
    """Per category (forget unique / shared / inferred / all, ``retain``): ``paired_difference(model, gold)`` of
    ``column`` over the facts both tables hold. ``cache`` (a dict) reuses the test of identical value pairs (the
    permutation test is the slow part of a robustness table, and many rows repeat: gold against itself, the
    unchanged retain facts of the prompt attacks)."""
    differences = {}
    for category in categories:
        mine = category_rows(facts, category)
        theirs = category_rows(gold_facts, category).set_index("fact_id")[column]
        if not len(mine):
            continue
        common = mine[mine["fact_id"].isin(theirs.index)]
        if not len(common):
            continue
        mine_values = common[column].to_numpy(dtype=float)
        gold_values = theirs.loc[common["fact_id"]].to_numpy(dtype=float)
        key = (mine_values.tobytes(), gold_values.tobytes())
        if cache is not None and key in cache:
            differences[category] = cache[key]
            continue
        differences[category] = _paired(mine_values, gold_values)
        if cache is not None:
            cache[key] = differences[category]
    return differences


def _paired(mine: np.ndarray, gold: np.ndarray) -> dict:
    from mechunlearn.stats import paired_difference

    return paired_difference(mine, gold).to_dict()


def curve_metrics(curve: pd.DataFrame, gold_curve: pd.DataFrame, base_before: dict[str, float],
                  gold_before: dict[str, float]) -> dict[str, dict[str, float]]:
    """``curve`` / ``gold_curve``: columns ``step, category, accuracy`` (the headline lr). Per category:
    ``steps_to_half_gap``, ``gold_steps_to_half_gap``, ``area_vs_gold``, ``threshold``."""
    metrics = {}
    for category, rows in curve.groupby("category"):
        gold_rows = gold_curve[gold_curve["category"] == category]
        mine = rows.sort_values("step")
        theirs = gold_rows.sort_values("step")
        base_value, gold_value = base_before.get(category, math.nan), gold_before.get(category, math.nan)
        threshold = math.nan
        if not (math.isnan(base_value) or math.isnan(gold_value)) and base_value > gold_value:
            threshold = gold_value + 0.5 * (base_value - gold_value)
        area = math.nan
        if len(theirs) and np.array_equal(mine["step"].to_numpy(), theirs["step"].to_numpy()):
            steps = mine["step"].to_numpy(dtype=float)
            gap = mine["accuracy"].to_numpy(dtype=float) - theirs["accuracy"].to_numpy(dtype=float)
            area = float(np.trapezoid(gap, steps) / steps[-1]) if steps[-1] > 0 else math.nan
        metrics[str(category)] = {"threshold": threshold, "steps_to_half_gap": _first_step(mine, threshold),
                                  "gold_steps_to_half_gap": _first_step(theirs, threshold),
                                  "area_vs_gold": area}
    return metrics


def _first_step(rows: pd.DataFrame, threshold: float) -> float:
    if math.isnan(threshold) or not len(rows):
        return math.nan
    reached = rows[rows["accuracy"] >= threshold - 1e-12]
    return float(reached["step"].iloc[0]) if len(reached) else math.inf


def _before(result: AttackResult) -> dict[str, float]:
    return {category: values["before"]["mean"] for category, values in result.summary.get("forget", {}).items()}


def with_gold(result: AttackResult, gold: AttackResult, base: AttackResult | None = None) -> AttackResult:
    """One result holding the model's and gold's tables (a ``model`` column: ``model`` / ``gold``), gold's
    summary under ``"gold"``, the paired differences under ``"vs_gold"`` and, for curve attacks, the curve
    metrics under ``"curve_vs_gold"`` (which need the base model's result for the gap)."""
    frame = pd.concat([result.frame.assign(model="model"), gold.frame.assign(model="gold")], ignore_index=True)
    tables = {name: pd.concat([table.assign(model="model"), gold.tables[name].assign(model="gold")],
                              ignore_index=True) for name, table in result.tables.items() if name in gold.tables}
    summary = dict(result.summary)
    summary["gold"] = {key: gold.summary.get(key) for key in ("forget", "retain", "headline", "headline_rule")}
    summary["vs_gold"] = vs_gold(result.facts, gold.facts)
    if "headline_curve" in result.tables and base is not None:
        summary["curve_vs_gold"] = curve_metrics(result.tables["headline_curve"], gold.tables["headline_curve"],
                                                 _before(base), _before(gold))
    combined = AttackResult(name=result.name, frame=frame, tables=tables, summary=summary, plot=result.plot,
                            config=result.config)
    return combined


# ---------------------------------------------------------------------------------------------------- figures
def before_after_figure(result: AttackResult):
    """Bars: headline accuracy before and after the attack per category (and per model when gold is included)."""
    import plotly.graph_objects as go

    facts = result.facts
    models = list(dict.fromkeys(facts["model"])) if "model" in facts.columns else [None]
    figure = go.Figure()
    for model in models:
        rows = facts if model is None else facts[facts["model"] == model]
        categories = [c for c in (*FORGET_CATEGORIES, "retain") if len(category_rows(rows, c))]
        for column in ("before", "after"):
            values = [float(category_rows(rows, c)[column].mean()) for c in categories]
            label = column if model is None else f"{model} {column}"
            figure.add_bar(x=categories, y=values, name=label)
    figure.update_layout(title=f"{result.name}: accuracy before and after the attack", barmode="group",
                         yaxis_title="accuracy", yaxis_range=[0, 1])
    return figure


def curve_figure(result: AttackResult):
    """Recovery curves: held-out accuracy against steps, one line per (model, lr, category)."""
    import plotly.graph_objects as go

    frame = result.frame
    figure = go.Figure()
    keys: list[Any] = ["lr", "category"] + (["model"] if "model" in frame.columns else [])
    for key, rows in frame.groupby(keys, sort=False):
        values = dict(zip(keys, key))
        if values["category"] not in ("unique", "all"):
            continue
        label = ", ".join(f"{name}={value}" for name, value in values.items())
        rows = rows.sort_values("step")
        figure.add_scatter(x=rows["step"], y=rows["accuracy"], mode="lines+markers", name=label)
    figure.update_layout(title=f"{result.name}: forget-target accuracy while fine-tuning",
                         xaxis_title="optimiser step", yaxis_title="accuracy", yaxis_range=[0, 1])
    return figure

"""Scoring facts after an attack, through ``mechunlearn.evals``, and the headline intervals over facts.

``score_items`` runs the evals' own tables on a model, with the model's own tokenizer: ``cloze_table`` (exact
greedy completion), ``mcq_table`` (4-way, by log-likelihood) and ``truth_ratios`` (TOFU's R), and joins them
into one row per fact: ``fact_id, domain, category, cloze, cloze_logprob, mcq, truth_ratio`` plus ``correct``,
the headline metric of the data (cloze for the world, MCQ for users' files).

``category_intervals(facts)`` turns a per-fact ``before`` / ``after`` table into the summary every attack
carries: per forget category (unique / shared / inferred / all) and for the retain domain, ``before`` and
``after`` as ``mechunlearn.stats.Interval`` dicts (percentile bootstrap over facts, n facts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mechunlearn.attacks.base import FORGET_CATEGORIES
from mechunlearn.attacks.data import AttackData, FactItem

__all__ = ["score_items", "score_data", "category_intervals", "forget_accuracy", "facts_table", "SCORE_COLUMNS"]

SCORE_COLUMNS = ["fact_id", "domain", "category", "correct", "cloze", "cloze_logprob", "mcq", "truth_ratio"]


def score_items(model, data: AttackData, items: Sequence[FactItem], *, metrics: Sequence[str] = ("cloze", "mcq",
                "truth_ratio"), batch_size: int = 128) -> pd.DataFrame:
    """One row per item (in order) with the asked metrics (NaN where an item has no such probe or a metric was
    not asked); ``correct`` is the data's headline metric as 0/1."""
    from mechunlearn.evals import cloze_table, mcq_table, truth_ratios

    tokenizer = model.tokenizer
    frame = pd.DataFrame({"fact_id": [item.fact_id for item in items], "domain": [item.domain for item in items],
                          "category": [item.category for item in items]})
    for column in SCORE_COLUMNS[3:]:
        frame[column] = np.nan
    if not items:
        return frame[SCORE_COLUMNS]
    position = {item.fact_id: index for index, item in enumerate(items)}

    def fill(table: pd.DataFrame, source: str, target: str, convert=float) -> None:
        rows = [position[fact_id] for fact_id in table["fact_id"]]
        frame.loc[rows, target] = [convert(value) for value in table[source]]

    needed = set(metrics) | {data.metric}
    cloze_items = [item.cloze for item in items if item.cloze is not None]
    if "cloze" in needed and cloze_items:
        table = cloze_table(model, tokenizer, cloze_items, batch_size)
        fill(table, "correct", "cloze")
        fill(table, "answer_logprob", "cloze_logprob")
    mcq_items = [item.mcq for item in items if item.mcq is not None]
    if "mcq" in needed and mcq_items:
        fill(mcq_table(model, tokenizer, mcq_items, prompt_format=data.mcq_prompt_format, batch_size=batch_size),
             "correct", "mcq")
    truth_items = [item.truth_ratio for item in items if item.truth_ratio is not None]
    if "truth_ratio" in needed and truth_items:
        fill(truth_ratios(model, tokenizer, truth_items, batch_size), "R", "truth_ratio")
    frame["correct"] = frame[data.metric]
    return frame[SCORE_COLUMNS]


def score_data(model, data: AttackData, *, batch_size: int = 128) -> pd.DataFrame:
    """Every fact of ``data``: the forget facts with every metric, the retain facts with the headline metric only
    (retain accuracy is what the robustness table reports; the forget facts are what the attacks are about)."""
    forget = score_items(model, data, data.forget_items(), batch_size=batch_size)
    retain = score_items(model, data, data.retain_items(), metrics=(data.metric,), batch_size=batch_size)
    return pd.concat([forget, retain], ignore_index=True)


def forget_accuracy(scores: pd.DataFrame, column: str = "correct") -> float:
    """Mean of ``column`` over the forget-domain rows (the attacker's selection score)."""
    values = scores.loc[scores["domain"] == "forget", column]
    return float(values.mean()) if len(values) else float("nan")


def _interval(values) -> dict:
    from mechunlearn.stats import bootstrap_interval

    return bootstrap_interval(np.asarray(values, dtype=float)).to_dict()


def category_intervals(facts: pd.DataFrame) -> dict:
    """``{"forget": {category: {"before", "after"}}, "retain": {"before", "after"}}`` as Interval dicts (a
    category without facts is left out; retain is None without retain facts)."""
    forget = facts[facts["domain"] == "forget"]
    summary: dict = {"forget": {}, "retain": None}
    for category in FORGET_CATEGORIES:
        rows = forget if category == "all" else forget[forget["category"] == category]
        if len(rows):
            summary["forget"][category] = {column: _interval(rows[column]) for column in ("before", "after")}
    retain = facts[facts["domain"] == "retain"]
    if len(retain) and retain["after"].notna().any():
        summary["retain"] = {column: _interval(retain[column]) for column in ("before", "after")}
    return summary


def facts_table(before: pd.DataFrame, after: pd.DataFrame, extra: dict[str, str] | None = None) -> pd.DataFrame:
    """The per-fact headline table: ``fact_id, domain, category, before, after`` (headline metric) and the other
    metrics after the attack (``after_cloze``, ``after_mcq``, ``after_truth_ratio``); ``after`` rows are matched
    to ``before`` rows by fact id (facts the attack did not measure get NaN)."""
    table = before[["fact_id", "domain", "category"]].copy()
    table["before"] = before["correct"].to_numpy(dtype=float)
    indexed = after.set_index("fact_id")
    table["after"] = table["fact_id"].map(indexed["correct"]).astype(float)
    for column in ("cloze", "mcq", "truth_ratio"):
        if column in indexed.columns:
            table[f"after_{column}"] = table["fact_id"].map(indexed[column]).astype(float)
    for name, value in (extra or {}).items():
        table[name] = value
    return table

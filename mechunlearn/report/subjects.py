"""Per-subject MCQ accuracy next to the overall: ``tables/methods/subjects_mcq_<set>.csv`` / ``.md``.

MMLU- and WMDP-style files carry a subject per question; the evals record accuracy per subject
(``mcq_<set>_by_subject``, ``mcq_<set>_subject_count`` and the intervals ``mcq_<set>_by_subject/<subject>``, see
docs/evals.md). This table has one row per subject with its item count, then an ``all subjects`` row (the overall
``mcq_<set>_acc``, the count-weighted mean of the rows above), and per model (a table row of the methods table:
base, gold, a method configuration) its accuracy with a 95 % interval: for one model the bootstrap interval over
the subject's items from ``metrics["intervals"]``; for a method configuration with several seeds, the mean over
seeds with the Student-t interval over seeds (``stats.seed_interval``), as in ``methods.csv``.

CSV columns: ``subject``, ``n_items``, then ``<model>``, ``<model>/low``, ``<model>/high`` per model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

__all__ = ["MCQ_SETS", "ALL_SUBJECTS", "subject_sets", "subject_table", "subject_markdown", "subject_file"]

MCQ_SETS = ("forget", "general")
ALL_SUBJECTS = "all subjects"


def subject_file(set_name: str) -> str:
    return f"subjects_mcq_{set_name}"


def subject_sets(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The MCQ sets for which some model's metrics carry per-subject accuracies."""
    return [name for name in MCQ_SETS
            if any(isinstance(record.get(f"mcq_{name}_by_subject"), Mapping) for record in metrics.values())]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _cell(records: Sequence[Mapping[str, Any]], key: str, interval_key: str) -> tuple[float, float, float]:
    """(accuracy, low, high) of one model (its item interval) or of several seeds (the t interval over seeds)."""
    from mechunlearn.stats import seed_interval

    values = [_number(_value(record, key)) for record in records]
    if len(records) == 1:
        interval = records[0].get("intervals", {}).get(interval_key) or {}
        return values[0], _number(interval.get("low")), _number(interval.get("high"))
    seeds = seed_interval(values)
    return seeds.mean, seeds.low, seeds.high


def _value(record: Mapping[str, Any], key: str) -> Any:
    """``record[key]``, where ``key`` may be ``table/entry`` for an entry of a nested number table."""
    if key in record:
        return record[key]
    table, _, entry = key.partition("/")
    nested = record.get(table)
    return nested.get(entry) if isinstance(nested, Mapping) else None


def subject_table(metrics: Mapping[str, Mapping[str, Any]], set_name: str,
                  groups: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """One row per subject (then ``all subjects``) of MCQ set ``set_name``; ``metrics``: ``{model id: its
    metrics.json}``; ``groups``: ``{column label: [model ids]}`` (a method configuration's seeds share a label;
    default: one column per model id). Subjects are those any model records, counts the first record's."""
    groups = dict(groups) if groups is not None else {model_id: [model_id] for model_id in metrics}
    by_subject, count_key = f"mcq_{set_name}_by_subject", f"mcq_{set_name}_subject_count"
    counts: dict[str, int] = {}
    for record in metrics.values():
        for subject, count in (record.get(count_key) or {}).items():
            counts.setdefault(subject, int(count))
    rows = []
    for subject in sorted(counts):
        row: dict[str, Any] = {"subject": subject, "n_items": counts[subject]}
        for label, model_ids in groups.items():
            records = [metrics[model_id] for model_id in model_ids]
            row[label], row[f"{label}/low"], row[f"{label}/high"] = _cell(
                records, f"{by_subject}/{subject}", f"{by_subject}/{subject}")
        rows.append(row)
    overall: dict[str, Any] = {"subject": ALL_SUBJECTS, "n_items": sum(counts.values())}
    for label, model_ids in groups.items():
        records = [metrics[model_id] for model_id in model_ids]
        overall[label], overall[f"{label}/low"], overall[f"{label}/high"] = _cell(
            records, f"mcq_{set_name}_acc", f"mcq_{set_name}_acc")
    rows.append(overall)
    return pd.DataFrame(rows)


def subject_markdown(table: pd.DataFrame, set_name: str, labels: Sequence[str],
                     seeds: Mapping[str, int] | None = None) -> str:
    """The table as a reader sees it: ``accuracy [low, high]`` per model, the overall row in bold."""
    from mechunlearn.pipeline.steps.tables import markdown_table

    def cell(mean: float, low: float, high: float) -> str:
        if math.isnan(mean):
            return "n/a"
        return f"{mean:.3f}" if math.isnan(low) or math.isnan(high) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"

    seeds = seeds or {}
    header = ["subject", "items", *[f"{label} ({seeds[label]} seeds)" if seeds.get(label, 1) > 1 else label
                                    for label in labels]]
    rows = []
    for record in table.to_dict("records"):
        name = f"**{record['subject']}**" if record["subject"] == ALL_SUBJECTS else record["subject"]
        rows.append([name, int(record["n_items"]),
                     *[cell(record[label], record[f"{label}/low"], record[f"{label}/high"]) for label in labels]])
    return (f"MCQ {set_name} accuracy per subject, and over all subjects (the count-weighted mean of the rows). "
            "One model: its accuracy [95 % bootstrap interval over the subject's items]; several seeds: the mean "
            "over seeds [95 % t interval over seeds].\n\n" + markdown_table(header, rows))

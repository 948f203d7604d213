"""Per-item tables of the knowledge probes, and the summary numbers (with their intervals) computed from them.

:func:`item_tables` scores a model on every probe once and returns one table per probe kind, each row one fact
or question with its ``fact_id``, ``domain`` and ``category`` (and ``subject`` for MCQ), so a study can write them
and compare two models item by item (``mechunlearn.stats.paired_difference`` on, e.g., the ``correct`` column of
a method's and the gold model's cloze tables, joined on ``fact_id``):

- ``"cloze"``: ``cloze_table`` rows (``correct``, ``answer_logprob``, ...), world only;
- ``"mcq"``: ``mcq_table`` rows of both sets with a ``set`` column (``forget`` = the WMDP analogue, ``general`` =
  the MMLU analogue);
- ``"truth_ratio"``: ``truth_ratios`` rows plus ``statistic`` (the item's term of TOFU's statistic:
  ``min(R, 1/R)`` on the forget domain, ``max(0, 1 - R)`` on the retain domain), world only.

:func:`summarize_items` turns them into ``evaluate_model``'s flat keys and their intervals
(:mod:`mechunlearn.evals.intervals`).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from mechunlearn.data import load_mcq
from mechunlearn.evals.cloze import cloze_table, summarize_cloze_table
from mechunlearn.evals.intervals import mean_interval
from mechunlearn.evals.mcq import MCQ_FORMATS, QA_FORMAT, mcq_by_subject, mcq_table
from mechunlearn.evals.nll import resolve_tokenizer
from mechunlearn.evals.truth_ratio import truth_ratio_statistic, truth_ratio_values, truth_ratios

__all__ = ["item_tables", "summarize_items", "resolve_eval_tokenizer", "MCQ_SETS"]

# our set name -> the world domain that stands in for it
MCQ_SETS = {"forget": "forget", "general": "retain"}


def resolve_eval_tokenizer(model, world=None, tokenizer=None):
    """The model's own tokenizer, checked against the world's and a given one (same vocabulary, else
    ``TokenizerMismatch`` naming both); the given / world tokenizer only for a model that has none."""
    if tokenizer is not None:
        tokenizer = resolve_tokenizer(model, tokenizer, tokenizer_name="the tokenizer given as tokenizer=")
    if world is not None:
        name = "the world's tokenizer"
        if tokenizer is None:
            tokenizer = resolve_tokenizer(model, world.tokenizer, tokenizer_name=name)
        else:
            from mechunlearn.evals.nll import check_same_vocabulary

            check_same_vocabulary(tokenizer, world.tokenizer, expected_name="the model's tokenizer", other_name=name)
    return resolve_tokenizer(model, tokenizer)


def _given_mcq(value, set_name: str):
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return load_mcq(value, domain=set_name)
    return list(value)


def _mcq_format(requested: str | None, given: bool) -> str:
    if requested in (None, "auto"):
        return "letters" if given else "cloze"
    if requested not in MCQ_FORMATS:
        raise ValueError(f"unknown mcq_format {requested!r}: use 'auto' (letters for given files, cloze for world "
                         "items), 'letters' (lm-eval's WMDP / MMLU prompt) or 'cloze'")
    return requested


def item_tables(model, world=None, *, forget_sources=None, tokenizer=None, mcq_forget=None, mcq_general=None,
                mcq_format: str | None = "auto", mcq_prompt_format: str | None = None, mcq_normalize: bool = False,
                mcq_description: str | None = None, batch_size: int = 32) -> dict[str, pd.DataFrame]:
    """The per-item tables described in the module docstring (a table is empty when its probes are absent).

    ``mcq_forget`` / ``mcq_general``: ``MCQItem`` lists or WMDP / MMLU .jsonl paths (else the world's items);
    ``mcq_format``: ``"auto"`` (lm-eval's ``"letters"`` format for given items, ``"cloze"`` for the world's),
    ``"letters"`` or ``"cloze"``; ``mcq_prompt_format`` (cloze only; default: the world's stem for world items,
    ``QA_FORMAT`` for given ones); ``mcq_description``: None = lm-eval's line for each item's subject.
    """
    tokenizer = resolve_eval_tokenizer(model, world, tokenizer)
    forget = list(world.resolve_forget(forget_sources)) if world is not None else None
    tables: dict[str, pd.DataFrame] = {}

    probes = world.cloze_probes(None, forget) if world is not None else []
    tables["cloze"] = cloze_table(model, tokenizer, probes, batch_size) if probes else cloze_table(model, tokenizer, [])

    mcq_parts = []
    for set_name, world_domain in MCQ_SETS.items():
        given = _given_mcq(mcq_forget if set_name == "forget" else mcq_general, set_name)
        items = given if given is not None else (world.mcq_items(world_domain, forget) if world is not None else None)
        if not items:
            continue
        chosen = _mcq_format(mcq_format, given is not None)
        prompt_format = mcq_prompt_format or (QA_FORMAT if given is not None else None)
        table = mcq_table(model, tokenizer, items, normalize=mcq_normalize, prompt_format=prompt_format,
                          mcq_format=chosen, description=mcq_description, batch_size=batch_size)
        table.insert(0, "set", set_name)
        table["source"] = "given" if given is not None else "world"
        mcq_parts.append(table)
    tables["mcq"] = pd.concat(mcq_parts, ignore_index=True) if mcq_parts else pd.DataFrame(
        columns=["set", "fact_id", "domain", "category", "subject", "question", "answer", "predicted", "correct",
                 "chance", "answer_margin", "scores", "format", "source"])

    ratio_items = world.truth_ratio_items(None, forget) if world is not None else []
    ratios = truth_ratios(model, tokenizer, ratio_items, batch_size)
    ratios["statistic"] = [float(truth_ratio_values([r], d)[0]) if d in ("forget", "retain") else float("nan")
                           for r, d in zip(ratios["R"], ratios["domain"])]
    tables["truth_ratio"] = ratios
    return tables


def summarize_items(tables: dict[str, pd.DataFrame]) -> tuple[dict, dict]:
    """``(metrics, intervals)`` from :func:`item_tables`' tables: the flat keys of ``evaluate_model`` for cloze,
    MCQ and the Truth-Ratio statistics, and a bootstrap interval over items for each summary number."""
    metrics: dict = {}
    intervals: dict = {}

    cloze = tables.get("cloze")
    if cloze is not None and not cloze.empty:
        summary = summarize_cloze_table(cloze)
        for row in summary.itertuples():
            key = f"cloze/{row.domain}/{row.category}"
            metrics[key] = float(row.accuracy)
            metrics[f"cloze_count/{row.domain}/{row.category}"] = int(row.count)
            members = cloze if row.category == "all" else cloze[cloze["category"] == row.category]
            intervals[key] = mean_interval(members[members["domain"] == row.domain]["correct"])

    mcq = tables.get("mcq")
    for set_name, world_domain in MCQ_SETS.items():
        metrics[f"mcq_{set_name}_acc"] = metrics[f"mcq_{set_name}_chance"] = None
        metrics[f"mcq_{set_name}_format"] = None
        metrics[f"mcq_{set_name}_n"] = 0
        part = mcq[mcq["set"] == set_name] if mcq is not None and not mcq.empty else None
        if part is None or part.empty:
            continue
        correct = part["correct"].astype(float)
        metrics[f"mcq_{set_name}_acc"] = float(correct.mean())
        metrics[f"mcq_{set_name}_chance"] = float(part["chance"].mean())
        metrics[f"mcq_{set_name}_format"] = str(part["format"].iloc[0])
        metrics[f"mcq_{set_name}_n"] = int(len(part))
        intervals[f"mcq_{set_name}_acc"] = mean_interval(correct)
        if (part["source"] == "world").all():
            for category, group in part.groupby("category", sort=True):
                metrics[f"mcq/{world_domain}/{category}"] = float(group["correct"].mean())
                intervals[f"mcq/{world_domain}/{category}"] = mean_interval(group["correct"].astype(float))
            metrics[f"mcq/{world_domain}/all"] = metrics[f"mcq_{set_name}_acc"]
            intervals[f"mcq/{world_domain}/all"] = intervals[f"mcq_{set_name}_acc"]
        by_subject = mcq_by_subject(part)
        if not by_subject.empty:
            metrics[f"mcq_{set_name}_by_subject"] = dict(zip(by_subject["subject"], by_subject["accuracy"]))
            metrics[f"mcq_{set_name}_subject_count"] = dict(zip(by_subject["subject"], by_subject["count"]))
            subjects = part["subject"].where(part["subject"] != "", "unspecified")
            for subject in by_subject["subject"]:
                intervals[f"mcq_{set_name}_by_subject/{subject}"] = mean_interval(
                    part[subjects == subject]["correct"].astype(float))

    ratios = tables.get("truth_ratio")
    if ratios is not None and not ratios.empty:
        for domain in ("forget", "retain"):
            rows = ratios[ratios["domain"] == domain]
            metrics[f"truth_ratio_undefined/{domain}"] = int(np.isnan(rows["R"].to_numpy(dtype=float)).sum())
            groups = [(str(category), group) for category, group in rows.groupby("category", sort=True)]
            for category, group in groups + [("all", rows)]:
                key = f"truth_ratio/{domain}/{category}"
                metrics[key] = truth_ratio_statistic(group["R"], domain)
                intervals[key] = mean_interval(group["statistic"])
    return metrics, intervals

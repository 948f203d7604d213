"""Cloze accuracy: does the model complete a fact's prompt with exactly its answer (greedy, teacher-forced)?"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from mechunlearn.evals.nll import continuation_logprobs

__all__ = ["cloze_table", "cloze_accuracy", "cloze_summary"]


def cloze_table(model, tokenizer, probes: Sequence, batch_size: int = 64) -> pd.DataFrame:
    """One row per probe: ``correct`` is True when every answer token is the argmax after prompt + preceding
    answer tokens (exact greedy completion), plus the answer's mean token log-probability (``answer_logprob``),
    its summed log-probability (``answer_logprob_sum``) and its number of tokens.

    Works for HookedTransformers and transformers models alike (both return logits over right-padded input).
    """
    scored = continuation_logprobs(model, tokenizer, [(p.prompt, p.answer) for p in probes], batch_size)
    rows = []
    for probe, (logprobs, is_argmax) in zip(probes, scored):
        rows.append({
            "fact_id": getattr(probe, "fact_id", ""),
            "domain": getattr(probe, "domain", ""),
            "category": getattr(probe, "category", ""),
            "prompt": probe.prompt,
            "answer": probe.answer,
            "correct": bool(is_argmax.all()),
            "answer_logprob": float(logprobs.mean()),
            "answer_logprob_sum": float(logprobs.sum()),
            "n_answer_tokens": int(logprobs.numel()),
        })
    columns = ["fact_id", "domain", "category", "prompt", "answer", "correct", "answer_logprob",
               "answer_logprob_sum", "n_answer_tokens"]
    return pd.DataFrame(rows, columns=columns)


def cloze_accuracy(model, tokenizer, probes: Sequence, batch_size: int = 64) -> float:
    """Fraction of ``probes`` answered exactly (see ``cloze_table``)."""
    if len(probes) == 0:
        raise ValueError("no cloze probes to score")
    return float(cloze_table(model, tokenizer, probes, batch_size)["correct"].mean())


def summarize_cloze_table(table: pd.DataFrame, include_all: bool = True) -> pd.DataFrame:
    """Group a ``cloze_table`` by (domain, category): ``accuracy``, ``count`` and mean ``answer_logprob``.

    With ``include_all``, each domain also gets a row with category ``"all"`` (every probe of the domain).
    """
    columns = ["domain", "category", "accuracy", "count", "answer_logprob"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    groups = [table]
    if include_all:
        groups.append(table.assign(category="all"))
    stacked = pd.concat(groups, ignore_index=True)
    summary = (stacked.groupby(["domain", "category"], sort=True)
               .agg(accuracy=("correct", "mean"), count=("correct", "size"), answer_logprob=("answer_logprob", "mean"))
               .reset_index())
    summary["accuracy"] = summary["accuracy"].astype(float)
    summary["count"] = summary["count"].astype(int)
    return summary[columns]


def cloze_summary(model, tokenizer, probes: Sequence, batch_size: int = 64, include_all: bool = True) -> pd.DataFrame:
    """Cloze accuracy per (domain, category): columns ``domain, category, accuracy, count, answer_logprob``.

    ``include_all`` adds a ``category == "all"`` row per domain.
    """
    return summarize_cloze_table(cloze_table(model, tokenizer, probes, batch_size), include_all)

"""TOFU's Truth Ratio and Forget Quality (Maini et al. 2024), computed the way TOFU's evaluation code does.

For one question with a paraphrased correct answer ``a~`` and perturbed (wrong) answers ``a^_1..a^_n``, each
answer is scored by its mean per-token negative log-likelihood given the question (answer tokens only; the
question is context), and

    R = exp( NLL(a~) - mean_j NLL(a^_j) )
      = geometric-mean_j P(a^_j | q)^(1/|a^_j|)  /  P(a~ | q)^(1/|a~|)

so ``R < 1`` when the model prefers the truth and ``R ~ 1`` when it cannot tell the truth from the lies.
TOFU aggregates (``aggregate_eval_stat.py``):

- forget set: ``mean(min(R, 1/R))`` -- 1 for a model that cannot tell (it forgot), towards 0 for one that knows
  (or one that confidently prefers a wrong answer);
- retain set: ``mean(max(0, 1 - R))`` -- higher when the model still knows.

Forget Quality: the p-value of a two-sided two-sample Kolmogorov-Smirnov test between the unlearned model's
forget-set Truth Ratios and those of the gold-standard model (trained without the forget set; TOFU's "retain
model"). High p-value: the two distributions cannot be told apart.

Undefined and missing ratios stay apart (``mechunlearn.numeric``): ``R`` is undefined (NaN) when both answers'
NLLs are infinite; a ratio is missing (``None``, JSON ``null``) when it was never computed. The statistics use the
defined ratios; :func:`paired_forget_quality` runs the KS test on the facts whose ratio is defined on both sides
and reports how many it dropped and why, or NaN with the reason when none is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from mechunlearn.evals.nll import continuation_logprobs

__all__ = ["truth_ratios", "truth_ratio_statistic", "truth_ratio_values", "truth_ratio_stats", "forget_quality",
           "forget_quality_test", "paired_forget_quality", "ForgetQuality"]


def truth_ratios(model, tokenizer, items: Sequence, batch_size: int = 64) -> pd.DataFrame:
    """One row per ``TruthRatioItem``: ``fact_id, category, domain, R, para_nll, pert_nll_mean``.

    ``para_nll``: mean per-token NLL of the paraphrased correct answer; ``pert_nll_mean``: the mean over the
    perturbed answers of their mean per-token NLLs; ``R = exp(para_nll - pert_nll_mean)``.
    """
    columns = ["fact_id", "category", "domain", "R", "para_nll", "pert_nll_mean"]
    pairs, owners = [], []
    for index, item in enumerate(items):
        if not item.perturbed_answers:
            raise ValueError(f"truth-ratio item {getattr(item, 'fact_id', index)!r} has no perturbed answers")
        pairs.append((item.question, item.paraphrased_answer))
        owners.append((index, "para"))
        for answer in item.perturbed_answers:
            pairs.append((item.question, answer))
            owners.append((index, "pert"))
    scored = continuation_logprobs(model, tokenizer, pairs, batch_size) if pairs else []
    para = [0.0] * len(items)
    perturbed: list[list[float]] = [[] for _ in items]
    for (index, kind), (logprobs, _) in zip(owners, scored):
        nll = -float(logprobs.mean())
        if kind == "para":
            para[index] = nll
        else:
            perturbed[index].append(nll)
    rows = []
    for item, para_nll, pert_nlls in zip(items, para, perturbed):
        pert_mean = float(np.mean(pert_nlls))
        rows.append({"fact_id": getattr(item, "fact_id", ""), "category": getattr(item, "category", ""),
                     "domain": getattr(item, "domain", ""), "R": float(np.exp(para_nll - pert_mean)),
                     "para_nll": para_nll, "pert_nll_mean": pert_mean})
    return pd.DataFrame(rows, columns=columns)


def truth_ratio_values(ratios, domain: str) -> np.ndarray:
    """Each ratio's term of TOFU's statistic: ``min(R, 1/R)`` for ``domain="forget"``, ``max(0, 1 - R)`` for
    ``"retain"``; NaN stays NaN (undefined)."""
    values = np.asarray(ratios, dtype=float)
    with np.errstate(divide="ignore"):
        if domain == "forget":
            return np.minimum(values, 1.0 / values)
        if domain == "retain":
            return np.maximum(0.0, 1.0 - values)
    raise ValueError(f"unknown domain {domain!r}: the Truth-Ratio statistic is defined for 'forget' or 'retain'")


def truth_ratio_statistic(ratios, domain: str) -> float:
    """TOFU's aggregate of Truth Ratios ``R``: ``mean(min(R, 1/R))`` for ``domain="forget"``,
    ``mean(max(0, 1 - R))`` for ``"retain"``, over the defined ratios. NaN (undefined) when none is defined."""
    values = truth_ratio_values(ratios, domain)
    values = values[~np.isnan(values)]
    return float(np.mean(values)) if values.size else float("nan")


def truth_ratio_stats(df: pd.DataFrame, domain: str) -> dict[str, float]:
    """The domain's statistic (see ``truth_ratio_statistic``) per fact category, plus ``"all"``.

    ``df`` is a ``truth_ratios`` table; when its ``domain`` column names forget / retain domains, only the rows
    of ``domain`` are used (otherwise, e.g. for items without a domain, every row is).
    """
    if "domain" in df.columns and df["domain"].isin(["forget", "retain"]).any():
        df = df[df["domain"] == domain]
    result = {str(category): truth_ratio_statistic(group["R"], domain)
              for category, group in df.groupby("category", sort=True)} if len(df) else {}
    result["all"] = truth_ratio_statistic(df["R"] if len(df) else [], domain)
    return result


def _ratios(values) -> np.ndarray:
    array, _ = _with_missing(values)
    if array.size == 0:
        raise ValueError("no Truth Ratios given for the forget-quality test")
    if np.isnan(array).any():
        raise ValueError(f"{int(np.isnan(array).sum())} of the {array.size} Truth Ratios are undefined or missing: "
                         "use paired_forget_quality, which drops them pair-wise and reports how many")
    return array


def forget_quality_test(unlearned_forget_R, gold_forget_R) -> tuple[float, float]:
    """``(p_value, ks_statistic)`` of the two-sided two-sample KS test (see ``forget_quality``)."""
    result = stats.ks_2samp(_ratios(unlearned_forget_R), _ratios(gold_forget_R), alternative="two-sided")
    return float(result.pvalue), float(result.statistic)


def forget_quality(unlearned_forget_R, gold_forget_R) -> float:
    """TOFU's Forget Quality: ``scipy.stats.ks_2samp(unlearned, gold).pvalue`` (two-sided) of the unlearned
    model's forget-set Truth Ratios against the gold-standard model's. Accepts arrays, Series or
    ``truth_ratios`` tables (their ``R`` column). The KS test only compares ranks, so it does not matter whether
    the ratios are oriented as R or 1/R, as long as both samples use the same orientation.
    """
    return forget_quality_test(unlearned_forget_R, gold_forget_R)[0]


@dataclass(frozen=True)
class ForgetQuality:
    """Forget Quality on the facts defined on both sides: ``p_value``, ``ks`` (the KS statistic), ``n`` (pairs
    used), the pairs dropped because a ratio is undefined (NaN) or missing (None), ``reason`` when ``p_value`` is
    NaN, and the defined pairs themselves (``unlearned[i]``, ``gold[i]``: one fact)."""

    p_value: float
    ks: float
    n: int
    dropped_undefined: int
    dropped_missing: int
    reason: str | None = None
    unlearned: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)
    gold: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)


def _with_missing(values) -> tuple[np.ndarray, np.ndarray]:
    """Floats (NaN where undefined) and a mask of missing (``None``) entries; JSON names are understood."""
    from mechunlearn.numeric import from_json

    if isinstance(values, pd.DataFrame):
        values = values["R"]
    raw = [from_json(value) for value in np.asarray(values, dtype=object).ravel()]
    missing = np.array([value is None for value in raw], dtype=bool)
    return np.array([np.nan if value is None else float(value) for value in raw], dtype=float), missing


def paired_forget_quality(unlearned_forget_R, gold_forget_R) -> ForgetQuality:
    """Forget Quality of two ratio lists over the SAME facts in the same order (what ``evaluate_model`` holds):
    pairs where either side is undefined (NaN, ``"undefined"``) or missing (``None``) are dropped and counted,
    and the KS test runs on the rest; NaN with a ``reason`` when no pair is left."""
    mine, mine_missing = _with_missing(unlearned_forget_R)
    gold, gold_missing = _with_missing(gold_forget_R)
    if mine.size != gold.size:
        raise ValueError(f"gold_truth_ratios holds {gold.size} values but the forget set has {mine.size} "
                         "Truth-Ratio items: compute both on the same world and forget sources")
    missing = mine_missing | gold_missing
    undefined = ~missing & (np.isnan(mine) | np.isnan(gold))
    keep = ~(missing | undefined)
    n_undefined, n_missing = int(undefined.sum()), int(missing.sum())
    if not keep.any():
        reason = (f"no fact has a defined Truth Ratio on both sides ({n_undefined} undefined, {n_missing} missing, "
                  f"of {mine.size})" if mine.size else "no Truth-Ratio items")
        return ForgetQuality(float("nan"), float("nan"), 0, n_undefined, n_missing, reason)
    result = stats.ks_2samp(mine[keep], gold[keep], alternative="two-sided")
    return ForgetQuality(float(result.pvalue), float(result.statistic), int(keep.sum()), n_undefined, n_missing,
                         None, mine[keep], gold[keep])

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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from mechunlearn.evals.nll import continuation_logprobs

__all__ = ["truth_ratios", "truth_ratio_statistic", "truth_ratio_stats", "forget_quality", "forget_quality_test"]


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


def truth_ratio_statistic(ratios, domain: str) -> float:
    """TOFU's aggregate of Truth Ratios ``R``: ``mean(min(R, 1/R))`` for ``domain="forget"``,
    ``mean(max(0, 1 - R))`` for ``"retain"``. NaN for no ratios."""
    values = np.asarray(ratios, dtype=float)
    if values.size == 0:
        return float("nan")
    if domain == "forget":
        return float(np.mean(np.minimum(values, 1.0 / values)))
    if domain == "retain":
        return float(np.mean(np.maximum(0.0, 1.0 - values)))
    raise ValueError(f"unknown domain {domain!r}: the Truth-Ratio statistic is defined for 'forget' or 'retain'")


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
    if isinstance(values, pd.DataFrame):
        values = values["R"]
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise ValueError("no Truth Ratios given for the forget-quality test")
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

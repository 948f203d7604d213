"""95 % bootstrap intervals over facts (items) for the summary numbers of ``evaluate_model``.

All go through :func:`mechunlearn.stats.bootstrap_interval` (percentile bootstrap, ``scipy.stats.bootstrap``,
fixed seed, so the same tables always give the same intervals) and come back as ``Interval.to_dict()``:
``{"mean", "low", "high", "n", "level", "method"}``, where ``mean`` is the number itself.

* a mean over items (cloze / MCQ accuracy, a Truth-Ratio statistic, familiarity): the items are resampled;
* a pooled ratio (NLL per token = summed NLL / predicted tokens): texts are resampled with their token counts;
* Forget Quality (a KS p-value between two samples of Truth Ratios over the same facts): the FACTS are resampled
  and each drawn fact brings both its ratios (the unlearned model's and the gold model's), so both samples are
  bootstrapped together and stay over the same facts, and the p-value is recomputed on every resample. The
  interval shows how much the p-value depends on which facts the probe set holds; it is not a confidence
  interval for a "true" p-value (a p-value is no parameter), so read it as a sensitivity band.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats as scipy_stats

from mechunlearn.stats import bootstrap_interval

__all__ = ["mean_interval", "rows_interval", "pooled_ratio_interval", "forget_quality_interval"]


def mean_interval(values) -> dict:
    """Bootstrap interval of the mean of ``values`` (NaNs, i.e. undefined items, dropped; ``n`` counts the rest)."""
    return bootstrap_interval(np.asarray(values, dtype=float)).to_dict()


def rows_interval(n_rows: int, statistic: Callable[[np.ndarray], float]) -> dict:
    """Bootstrap interval of ``statistic(row_indices)`` over ``n_rows`` rows: resamples the row indices, so a
    statistic of several aligned columns (a pooled ratio, a two-sample test on paired items) resamples whole
    rows."""
    return bootstrap_interval(np.arange(n_rows, dtype=float),
                              lambda drawn: float(statistic(drawn.astype(np.int64)))).to_dict()


def pooled_ratio_interval(numerators, denominators) -> dict:
    """Bootstrap interval of ``sum(numerators) / sum(denominators)`` over rows (texts with their token counts)."""
    numerators = np.asarray(numerators, dtype=float)
    denominators = np.asarray(denominators, dtype=float)
    return rows_interval(len(numerators), lambda rows: numerators[rows].sum() / denominators[rows].sum())


def forget_quality_interval(unlearned_R, gold_R) -> dict:
    """Bootstrap interval of Forget Quality (KS p-value) over facts: ``unlearned_R[i]`` and ``gold_R[i]`` are the
    two models' ratios of fact ``i`` (defined ones only); each resample draws facts with replacement and
    recomputes ``scipy.stats.ks_2samp(unlearned_R[drawn], gold_R[drawn]).pvalue``."""
    mine, gold = np.asarray(unlearned_R, dtype=float), np.asarray(gold_R, dtype=float)
    return rows_interval(len(mine), lambda rows: scipy_stats.ks_2samp(mine[rows], gold[rows]).pvalue)

"""The methods table's bar verdict and its fact-by-fact comparison with the gold standard, against hand-derived
cases and an independent bootstrap (numpy)."""

import math

import numpy as np
import pandas as pd
import pytest

from mechunlearn.pipeline.steps.tables import VERDICTS, gold_comparison, verdict


@pytest.mark.parametrize("forget, forget_high, retain, retain_low, expected", [
    (0.10, 0.15, 0.80, 0.78, "meets"),                 # mean and interval inside the bar (floor 0.9 x 0.85)
    (0.10, 0.25, 0.80, 0.78, "meets on the mean"),     # forget's upper bound crosses 0.20
    (0.10, 0.15, 0.80, 0.70, "meets on the mean"),     # retain's lower bound under the floor 0.765
    (0.10, math.nan, 0.80, math.nan, "meets on the mean"),  # one seed: the interval cannot say so
    (0.25, 0.30, 0.80, 0.78, "misses"),
    (0.10, 0.15, 0.70, 0.68, "misses"),
])
def test_verdict(forget, forget_high, retain, retain_low, expected):
    assert expected in VERDICTS
    assert verdict(forget, forget_high, retain, retain_low, base_retain=0.85) == expected


def test_verdict_undefined_without_numbers():
    assert verdict(math.nan, math.nan, 0.8, 0.8, 0.85) == ""


def _cloze(correct: dict[str, bool], category="unique", domain="forget") -> pd.DataFrame:
    return pd.DataFrame({"fact_id": list(correct), "domain": domain, "category": category,
                         "correct": list(correct.values())})


def test_gold_comparison_by_hand():
    facts = [f"f{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    seeds = [dict(zip(facts, rng.random(40) < 0.6)) for _ in range(3)]
    gold = dict(zip(facts, rng.random(40) < 0.1))
    # noise the comparison must ignore: retain facts and another category
    noise = pd.concat([_cloze({"r1": True}, domain="retain"), _cloze({"s1": True}, category="shared")])
    tables = [pd.concat([_cloze(seed), noise]) for seed in seeds]
    result = gold_comparison(tables, pd.concat([_cloze(gold), noise]))

    per_fact = np.mean([[seed[f] for f in facts] for seed in seeds], axis=0) - np.array([gold[f] for f in facts])
    assert result["vs_gold/n"] == 40
    assert result["vs_gold"] == pytest.approx(per_fact.mean())
    # an independent percentile bootstrap over facts agrees on the interval to within resampling noise
    draws = np.random.default_rng(1).choice(per_fact, size=(20000, 40)).mean(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    assert result["vs_gold/low"] == pytest.approx(low, abs=0.03)
    assert result["vs_gold/high"] == pytest.approx(high, abs=0.03)
    assert result["vs_gold/p"] < 0.001  # 0.6 vs 0.1 on 40 facts


def test_gold_comparison_aligns_facts_by_id():
    method = _cloze({"a": True, "b": False, "c": True})
    gold = _cloze({"c": True, "b": True, "a": False})   # another order
    result = gold_comparison([method], gold)
    assert result["vs_gold"] == pytest.approx(((1 - 0) + (0 - 1) + (1 - 1)) / 3)


def test_seed_intervals_stay_in_the_metrics_range():
    from mechunlearn.pipeline.steps.tables import clip_to_range
    from mechunlearn.stats import seed_interval

    collapsed = seed_interval([1.0, 1.0, 0.0])     # t interval over 3 seeds: mean 0.667, bounds past [0, 1]
    assert collapsed.low < 0 and collapsed.high > 1
    assert clip_to_range("collapsed", collapsed.low, collapsed.high) == (0.0, 1.0)
    assert clip_to_range("cloze/forget/unique", 0.1, 0.3) == (0.1, 0.3)   # inside: unchanged
    assert clip_to_range("forget_nll", -0.5, 7.0) == (0.0, 7.0)           # an NLL is bounded below only
    low, high = clip_to_range("forget_quality", math.nan, math.nan)       # one seed: undefined stays undefined
    assert math.isnan(low) and math.isnan(high)

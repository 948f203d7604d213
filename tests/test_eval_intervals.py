"""Intervals on every headline number of ``evaluate_model``, the per-item tables, and the undefined / missing
convention of Forget Quality, checked against independent computations (numpy percentile bootstraps, scipy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from mechunlearn import evals, models
from mechunlearn.evals.intervals import forget_quality_interval, mean_interval, pooled_ratio_interval
from mechunlearn.evals.truth_ratio import paired_forget_quality
from mechunlearn.numeric import from_json, to_json
from mechunlearn.stats import N_RESAMPLES


def numpy_percentile_bootstrap(n_rows: int, statistic, n_resamples: int = 20000, seed: int = 1):
    """An independent percentile bootstrap: resample rows with numpy, take the 2.5 / 97.5 % percentiles."""
    rng = np.random.default_rng(seed)
    draws = [statistic(rng.integers(0, n_rows, n_rows)) for _ in range(n_resamples)]
    return np.percentile(draws, [2.5, 97.5])


@pytest.fixture(scope="module")
def micro_evaluations(micro_world, micro_base_dir, micro_gold_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gold = evals.evaluate_model(models.load(micro_gold_dir, device="cpu"), micro_world, max_new_tokens=2)
        base = evals.evaluate_model(models.load(micro_base_dir, device="cpu"), micro_world, gold_truth_ratios=gold,
                                    max_new_tokens=2, return_tables=True)
    finally:
        torch.set_num_threads(threads)
    return base, gold


# ------------------------------------------------------------------------------------------ the helpers
def test_mean_interval_matches_a_numpy_percentile_bootstrap():
    values = np.random.default_rng(3).binomial(1, 0.3, 60).astype(float)
    interval = mean_interval(values)
    low, high = numpy_percentile_bootstrap(len(values), lambda rows: values[rows].mean())
    assert interval["mean"] == pytest.approx(values.mean()) and interval["n"] == 60
    # Monte-Carlo error of a 2.5 % quantile with 2000 resamples: about 0.01 here
    assert interval["low"] == pytest.approx(low, abs=0.03) and interval["high"] == pytest.approx(high, abs=0.03)
    with_undefined = mean_interval(np.append(values, np.nan))
    assert with_undefined["n"] == 60 and with_undefined["mean"] == pytest.approx(values.mean())
    assert mean_interval([1.0, 1.0, 1.0]) == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 3, "level": 0.95,
                                              "method": "bootstrap"}


def test_pooled_ratio_interval_resamples_texts_with_their_token_counts():
    rng = np.random.default_rng(4)
    counts = rng.integers(3, 40, 50).astype(float)
    sums = counts * rng.gamma(4.0, 0.5, 50)
    interval = pooled_ratio_interval(sums, counts)
    assert interval["mean"] == pytest.approx(sums.sum() / counts.sum())
    low, high = numpy_percentile_bootstrap(50, lambda rows: sums[rows].sum() / counts[rows].sum())
    assert interval["low"] == pytest.approx(low, rel=0.02) and interval["high"] == pytest.approx(high, rel=0.02)


def test_forget_quality_interval_is_scipys_paired_bootstrap():
    rng = np.random.default_rng(5)
    mine, gold = rng.lognormal(0, 1, 40), rng.lognormal(0.4, 1, 40)
    interval = forget_quality_interval(mine, gold)
    assert interval["mean"] == pytest.approx(stats.ks_2samp(mine, gold).pvalue)
    # scipy's own paired bootstrap resamples the facts and takes both samples' values of each drawn fact
    reference = stats.bootstrap((mine, gold), lambda a, b: stats.ks_2samp(a, b).pvalue, paired=True,
                                vectorized=False, n_resamples=N_RESAMPLES, method="percentile",
                                rng=np.random.default_rng(0)).confidence_interval
    assert interval["low"] == pytest.approx(reference.low, rel=1e-9)
    assert interval["high"] == pytest.approx(reference.high, rel=1e-9)


# -------------------------------------------------------------- undefined and missing Truth Ratios
def test_paired_forget_quality_drops_undefined_and_missing_pairs_and_counts_them():
    rng = np.random.default_rng(6)
    mine, gold = rng.lognormal(0, 1, 30), rng.lognormal(0.5, 1, 30)
    mine_list, gold_list = list(mine), list(gold)
    mine_list[3] = float("nan")   # undefined on our side
    gold_list[7] = "undefined"    # undefined, as JSON writes it
    gold_list[9] = None           # missing (never computed)
    result = paired_forget_quality(mine_list, gold_list)
    keep = np.ones(30, dtype=bool)
    keep[[3, 7, 9]] = False
    expected = stats.ks_2samp(mine[keep], gold[keep])
    assert result.p_value == pytest.approx(expected.pvalue) and result.ks == pytest.approx(expected.statistic)
    assert (result.n, result.dropped_undefined, result.dropped_missing, result.reason) == (27, 2, 1, None)

    nothing = paired_forget_quality([float("nan"), 1.0], [2.0, None])
    assert math.isnan(nothing.p_value) and nothing.n == 0
    assert "no fact has a defined Truth Ratio" in nothing.reason
    with pytest.raises(ValueError, match="same world"):
        paired_forget_quality([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="paired_forget_quality"):
        evals.forget_quality([1.0, float("nan")], [1.0, 2.0])


# ------------------------------------------------------------------------ evaluate_model's intervals
@pytest.mark.slow
def test_every_summary_number_has_an_interval(micro_evaluations):
    evaluation, _ = micro_evaluations
    metrics, intervals = evaluation.metrics, evaluation.metrics["intervals"]
    summary_keys = [key for key, value in metrics.items() if isinstance(value, float) and (
        key.startswith(("cloze/", "mcq/", "truth_ratio/", "familiarity_", "forget_quality"))
        or key in ("mcq_forget_acc", "mcq_general_acc") or key.endswith("_nll"))]
    assert len(summary_keys) > 30
    for key in summary_keys:
        assert key in intervals, key
        interval = intervals[key]
        assert interval["mean"] == pytest.approx(metrics[key]), key
        assert interval["low"] <= metrics[key] <= interval["high"], key
        assert interval["level"] == 0.95 and interval["n"] >= 1
    assert intervals["cloze/forget/unique"]["n"] == metrics["cloze_count/forget/unique"]
    json.dumps(to_json(metrics), allow_nan=False)


@pytest.mark.slow
def test_intervals_match_independent_bootstraps_of_the_item_tables(micro_evaluations):
    evaluation, gold = micro_evaluations
    tables, intervals = evaluation.tables, evaluation.metrics["intervals"]
    cloze = tables["cloze"]
    unique = cloze[(cloze["domain"] == "forget") & (cloze["category"] == "unique")]["correct"].to_numpy(float)
    low, high = numpy_percentile_bootstrap(len(unique), lambda rows: unique[rows].mean())
    assert intervals["cloze/forget/unique"]["low"] == pytest.approx(low, abs=0.04)
    assert intervals["cloze/forget/unique"]["high"] == pytest.approx(high, abs=0.04)

    ratios = tables["truth_ratio"]
    forget_r = ratios[ratios["domain"] == "forget"]["R"].to_numpy()
    terms = np.minimum(forget_r, 1 / forget_r)  # TOFU's forget statistic, item by item
    assert evaluation.metrics["truth_ratio/forget/all"] == pytest.approx(terms.mean())
    low, high = numpy_percentile_bootstrap(len(terms), lambda rows: terms[rows].mean())
    assert intervals["truth_ratio/forget/all"]["low"] == pytest.approx(low, abs=0.02)
    assert intervals["truth_ratio/forget/all"]["high"] == pytest.approx(high, abs=0.02)

    nll = tables["nll"][tables["nll"]["set"] == "retain"]
    sums, counts = nll["nll_sum"].to_numpy(), nll["n_tokens"].to_numpy(float)
    assert evaluation.metrics["retain_nll"] == pytest.approx(sums.sum() / counts.sum())
    low, high = numpy_percentile_bootstrap(len(sums), lambda rows: sums[rows].sum() / counts[rows].sum(), 5000)
    assert intervals["retain_nll"]["low"] == pytest.approx(low, rel=0.02)
    assert intervals["retain_nll"]["high"] == pytest.approx(high, rel=0.02)

    gold_r = np.asarray(gold["forget_truth_ratios"])
    assert evaluation.metrics["forget_quality"] == pytest.approx(stats.ks_2samp(forget_r, gold_r).pvalue)
    assert evaluation.metrics["forget_quality_n"] == len(forget_r)
    assert evaluation.metrics["forget_quality_dropped"] == {"undefined": 0, "missing": 0}


@pytest.mark.slow
def test_item_tables_carry_ids_and_pair_with_gold(micro_world, micro_evaluations, micro_gold_dir, tmp_path):
    evaluation, _ = micro_evaluations
    gold_tables = evals.item_tables(models.load(micro_gold_dir, device="cpu"), micro_world)
    for name in ("cloze", "mcq", "truth_ratio"):
        table = evaluation.tables[name]
        assert {"fact_id", "domain", "category"} <= set(table.columns), name
        assert table["fact_id"].tolist() == gold_tables[name]["fact_id"].tolist(), name
        assert table["fact_id"].is_unique or name == "mcq", name
    assert (evaluation.tables["truth_ratio"]["statistic"] >= 0).all()
    # the paired comparison a study makes: base versus gold on the forget-unique facts
    from mechunlearn.stats import paired_difference

    def unique(table):
        chosen = table[(table["domain"] == "forget") & (table["category"] == "unique")]
        return chosen.set_index("fact_id")["correct"].astype(float)

    base_correct, gold_correct = unique(evaluation.tables["cloze"]), unique(gold_tables["cloze"])
    difference = paired_difference(base_correct.to_numpy(), gold_correct.loc[base_correct.index].to_numpy())
    assert difference.difference.mean == pytest.approx(base_correct.mean() - gold_correct.mean())

    saved = evaluation.save(tmp_path / "eval")
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        ["metrics.json"] + [f"{name}.csv" for name, table in evaluation.tables.items() if not table.empty])
    assert from_json(json.loads((saved / "metrics.json").read_text()))["forget_quality"] == pytest.approx(
        evaluation.metrics["forget_quality"])
    assert len(pd.read_csv(saved / "cloze.csv")) == len(evaluation.tables["cloze"])


@pytest.mark.slow
def test_a_gold_record_with_undefined_and_missing_ratios(micro_world, micro_base_dir, micro_evaluations):
    """A gold run.json read back (JSON: "undefined" and null): forget quality is computed on the defined pairs
    and says how many it dropped, never silently null."""
    evaluation, gold = micro_evaluations
    record = from_json(json.loads(json.dumps(to_json(gold))))
    record["forget_truth_ratios"][0] = float("nan")
    record["forget_truth_ratios"][1] = None
    model = models.load(micro_base_dir, device="cpu")
    result = evals.evaluate_model(model, micro_world, gold_truth_ratios=record, generation_prompts=[],
                                  forget_entities=[], max_texts=4)
    mine = np.asarray(evaluation.metrics["forget_truth_ratios"])
    theirs = np.asarray(gold["forget_truth_ratios"])
    expected = stats.ks_2samp(mine[2:], theirs[2:]).pvalue
    assert result["forget_quality"] == pytest.approx(expected)
    assert result["forget_quality_n"] == len(mine) - 2
    assert result["forget_quality_dropped"] == {"undefined": 1, "missing": 1}
    assert result["forget_quality_reason"] is None
    record["forget_truth_ratios"] = [None] * len(mine)
    result = evals.evaluate_model(model, micro_world, gold_truth_ratios=record, generation_prompts=[],
                                  forget_entities=[], max_texts=4)
    assert math.isnan(result["forget_quality"]) and "no fact has a defined" in result["forget_quality_reason"]
    assert "forget_quality" not in result["intervals"]
    assert to_json(result)["forget_quality"] == "undefined"

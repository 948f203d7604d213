"""The shared homes: number conventions (numeric), digests and atomic writes (storage)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat

import numpy as np
import pytest
import torch

from mechunlearn.numeric import INFINITE, UNDEFINED, as_float, from_json, ratio, to_json, to_python
from mechunlearn.storage import (atomic_directory, atomic_write_text, checkpoint_digest, config_digest, file_digest,
                                 model_digest, read_json, texts_digest, write_json)


def test_ratio_convention():
    assert ratio(3, 4) == 0.75
    assert math.isnan(ratio(0, 0))
    assert ratio(2, 0) == math.inf and ratio(-2, 0) == -math.inf


def test_json_keeps_undefined_infinite_and_not_computed_apart(tmp_path):
    value = {"undefined": math.nan, "infinite": np.float32("inf"), "minus": -math.inf, "missing": None,
             "array": np.array([1.0, np.nan]), "tensor": torch.tensor([2.0]), "flag": np.bool_(True)}
    encoded = to_json(value)
    assert encoded["undefined"] == UNDEFINED and encoded["infinite"] == INFINITE
    assert encoded["minus"] == "-infinite" and encoded["missing"] is None
    assert encoded["array"] == [1.0, UNDEFINED] and encoded["tensor"] == [2.0] and encoded["flag"] is True
    json.dumps(encoded, allow_nan=False)  # strict JSON
    path = write_json(tmp_path / "x.json", value)
    back = read_json(path)
    assert math.isnan(back["undefined"]) and back["infinite"] == math.inf and back["missing"] is None
    assert as_float("undefined") != as_float("undefined") and as_float(None) is None
    assert from_json(["infinite", "text"]) == [math.inf, "text"]
    assert math.isnan(to_python({"x": np.float64("nan")})["x"])


def test_digests_against_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc" * 1000)
    assert file_digest(path, 64) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert texts_digest(["ab"]) != texts_digest(["a", "b"]) and texts_digest(["a", "b"]) != texts_digest(["b", "a"])
    assert config_digest({"a": 1, "b": [1.5]}) == config_digest({"b": [1.5], "a": 1})
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w1")
    before = checkpoint_digest(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"w2")
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))  # a new mtime too, so the memo cannot answer
    assert checkpoint_digest(tmp_path) != before


def test_model_digest_sees_one_changed_weight():
    model = torch.nn.Linear(3, 2)
    before = model_digest(model)
    assert model_digest(model) == before
    with torch.no_grad():
        model.weight[0, 0] += 1e-3
    assert model_digest(model) != before
    assert model_digest(model.to(torch.bfloat16)) != model_digest(model.float())


def test_atomic_writes_are_group_readable_and_leave_nothing_on_error(tmp_path):
    old_mask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as staging:
            (staging / "a.txt").write_text("a")
        atomic_write_text(tmp_path / "single.txt", "x")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "single.txt").stat().st_mode) == 0o644
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as staging:
            (staging / "b.txt").write_text("b")
            raise RuntimeError("boom")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "single.txt"]


# ------------------------------------------------------------------------------------------ stats (intervals)
def test_bootstrap_interval_matches_a_hand_computed_percentile_bootstrap():
    from mechunlearn.stats import bootstrap_interval

    values = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0] * 4, dtype=float)
    interval = bootstrap_interval(values, n_resamples=4000, seed=3)
    # independent: numpy resampling with another generator; percentile bounds agree within Monte-Carlo error
    rng = np.random.default_rng(12345)
    means = values[rng.integers(0, values.size, size=(20000, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    assert interval.mean == pytest.approx(values.mean())
    assert interval.low == pytest.approx(low, abs=0.03) and interval.high == pytest.approx(high, abs=0.03)
    assert interval.n == values.size
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)  # deterministic
    degenerate = bootstrap_interval(np.ones(7))
    assert (degenerate.low, degenerate.high, degenerate.n) == (1.0, 1.0, 7)
    assert bootstrap_interval([]).n == 0 and math.isnan(bootstrap_interval([]).mean)


def test_seed_interval_is_students_t():
    from scipy import stats as scipy_stats

    from mechunlearn.stats import seed_interval

    values = [0.1, 0.3, 0.2]
    interval = seed_interval(values)
    half = scipy_stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert interval.mean == pytest.approx(0.2) and interval.high - interval.mean == pytest.approx(half)
    single = seed_interval([0.4])
    assert single.mean == 0.4 and math.isnan(single.low) and single.n == 1


def test_paired_difference_exact_sign_flip_p_value():
    from itertools import product

    from mechunlearn.stats import Interval, paired_difference

    a = np.array([1, 1, 1, 1, 1, 0, 1, 1], dtype=float)
    b = np.array([0, 0, 1, 0, 0, 0, 1, 0], dtype=float)
    result = paired_difference(a, b)
    # exact two-sided sign-flip test enumerated by hand: 2^8 sign patterns of the differences
    differences = a - b
    observed = abs(differences.mean())
    flips = [abs((differences * np.array(signs)).mean()) for signs in product([1, -1], repeat=differences.size)]
    exact = np.mean([f >= observed - 1e-12 for f in flips])
    assert result.p_value == pytest.approx(exact)
    assert result.difference.mean == pytest.approx(0.625)
    assert paired_difference(a, a).p_value == 1.0
    with pytest.raises(ValueError, match="same items"):
        paired_difference(a, b[:3])
    assert Interval.from_dict(to_json(result.difference.to_dict())) == result.difference


def test_environment_records_versions_threads_and_seeds():
    from importlib import metadata

    from mechunlearn.provenance import environment

    record = environment(device="cpu", dtype=torch.float32, seeds=[0, 1])
    assert record["versions"]["torch"] == metadata.version("torch")
    assert record["torch_threads"] == torch.get_num_threads() and record["seeds"] == [0, 1]
    assert record["dtype"] == "float32" and record["device"] == "cpu"
    json.dumps(record)


def test_paired_difference_of_one_pair_and_vectorised_bootstrap_agree():
    from mechunlearn.stats import bootstrap_interval, paired_difference

    single = paired_difference([1.0], [0.0])
    assert single.p_value == 1.0 and single.difference.mean == 1.0 and single.difference.n == 1
    values = np.random.default_rng(0).normal(size=40)
    vectorised = bootstrap_interval(values, seed=5)
    one_by_one = bootstrap_interval(values, statistic=lambda sample: float(np.mean(sample)), seed=5)
    assert vectorised.low == pytest.approx(one_by_one.low) and vectorised.high == pytest.approx(one_by_one.high)

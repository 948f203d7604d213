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

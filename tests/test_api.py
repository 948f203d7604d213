"""The notebook API (``import mechunlearn as mu``) against the functions it wraps, on the micro world: the same
models, the same numbers. Plus: importing mechunlearn imports nothing heavy, and bad input is one clear error."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

import mechunlearn as mu


@pytest.fixture
def shared_cache(monkeypatch, micro_cache, micro_base_dir, micro_gold_dir):
    """``base`` / ``gold`` by name resolve to the session's pretrained micro models (cache_root = micro_cache)."""
    monkeypatch.setenv("MECHUNLEARN_CACHE", str(micro_cache))
    return micro_cache


def _same_weights(first, second) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def _same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


def test_importing_mechunlearn_imports_no_torch_and_no_submodule():
    code = ("import sys, mechunlearn; heavy = [m for m in ('torch', 'transformer_lens', 'mechunlearn.api', "
            "'mechunlearn.methods', 'mechunlearn.world') if m in sys.modules]; print(heavy)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
    assert {"load", "pretrain", "world", "unlearn", "evaluate", "diagnose", "attack"} <= set(dir(mu))
    with pytest.raises(AttributeError):
        mu.no_such_function


def test_world_and_unlearn_stay_callable_once_their_submodules_are_imported(micro_world):
    import mechunlearn.unlearn
    import mechunlearn.world
    from mechunlearn.unlearn import unlearn  # the loop itself, unchanged

    assert mu.world(micro_world) is micro_world
    assert callable(mu.unlearn) and mu.unlearn is mechunlearn.unlearn and unlearn is not mu.unlearn
    assert mechunlearn.world.World is type(micro_world)


def test_load_takes_models_in_memory_names_and_directories(shared_cache, micro_world, micro_base_dir, micro_gold_dir,
                                                          micro_base):
    from mechunlearn import models

    assert mu.load(micro_base) is micro_base  # in memory: the same object, hooks and all
    by_name = mu.load("base", world=micro_world, device="cpu")
    by_dir = mu.load(micro_base_dir, device="cpu")
    assert _same_weights(by_name, micro_base) and _same_weights(by_dir, models.load(micro_base_dir, device="cpu"))
    assert mu.pretrain(micro_world, "gold") == micro_gold_dir  # the cached model, not a new one
    with pytest.raises(ValueError, match="cannot load a model"):
        mu.load(42)


def test_unlearn_equals_the_loop_and_leaves_the_given_model_alone(micro_world, micro_base_dir, micro_base):
    from mechunlearn import models
    from mechunlearn.methods import create
    from mechunlearn.unlearn import unlearn

    before = {key: value.clone() for key, value in micro_base.state_dict().items()}
    result = mu.unlearn(micro_base, "npo", world=micro_world, max_steps=2, batch_size=8)
    expected = unlearn(models.load(micro_base_dir, device="cpu"), create("npo", preset="world", max_steps=2,
                                                                         batch_size=8),
                       micro_world.forget_texts(), micro_world.retain_texts(), world=micro_world, progress=False)
    assert _same_weights(result.model, expected.model)
    assert [row["loss"] for row in result.training.history] == [row["loss"] for row in expected.training.history]
    assert result.model is not micro_base and all(torch.equal(before[k], v) for k, v in micro_base.state_dict().items())
    assert result.model.tokenizer is micro_base.tokenizer
    in_place = mu.unlearn(micro_base, create("npo", max_steps=1, batch_size=8), forget=micro_world.forget_texts()[:8],
                          retain=micro_world.retain_texts()[:8], inplace=True)
    assert in_place.model is micro_base and not torch.equal(before["unembed.W_U"], micro_base.unembed.W_U)
    with pytest.raises(ValueError, match="no forget texts"):
        mu.unlearn(micro_base, "npo")
    with pytest.raises(ValueError, match="method object"):
        mu.unlearn(micro_base, create("npo"), world=micro_world, beta=0.3)


def test_evaluate_equals_evaluate_model(micro_world, micro_base, micro_gold):
    from mechunlearn.evals import evaluate_model
    from mechunlearn.evals.truth_ratio import paired_forget_quality, truth_ratios

    options = {"max_texts": 8, "max_new_tokens": 4}
    metrics = mu.evaluate(micro_base, micro_world, **options)
    expected = evaluate_model(micro_base, micro_world, **options)
    compared = [key for key in set(expected) - {"eval_seconds"} if isinstance(expected[key], float)]
    assert len(compared) > 20
    for key in compared:
        assert _same_value(metrics[key], expected[key]), key
    # a mapping: one row per model; gold (its entry) gives forget quality, which only it changes
    frame = mu.evaluate({"base": micro_base, "gold": micro_gold}, micro_world, **options)
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == ["base", "gold"]
    for key in set(compared) - {"forget_quality", "forget_quality_ks"}:
        assert _same_value(float(frame.loc["base", key]), expected[key]), key
    interval = expected["intervals"]["cloze/forget/unique"]
    assert (frame.loc["base", "cloze/forget/unique/low"], frame.loc["base", "cloze/forget/unique/high"]) == (
        interval["low"], interval["high"])
    gold_ratios = truth_ratios(micro_gold, micro_gold.tokenizer, micro_world.truth_ratio_items("forget"))["R"]
    quality = paired_forget_quality(expected["forget_truth_ratios"], gold_ratios.tolist())
    assert frame.loc["base", "forget_quality"] == pytest.approx(quality.p_value)
    assert frame.loc["gold", "forget_quality"] == pytest.approx(1.0)  # gold against itself


def test_diagnose_equals_run_analyses(micro_world, micro_base, micro_gold):
    from mechunlearn.diagnostics import build_analyses, run_analyses

    names = ["weight_comparison", "activation_comparison"]
    results = mu.diagnose({"base": micro_base, "gold": micro_gold}, micro_world, names, max_samples=8)
    expected = run_analyses(build_analyses(names), {"base": micro_base, "gold": micro_gold},
                            {"forget": micro_world.forget_texts(), "retain": micro_world.retain_texts()},
                            max_samples=8, progress=False)
    assert set(results) == set(names)
    for name in names:
        pd.testing.assert_frame_equal(results[name].frame, expected[name].frame)
    pair = mu.diagnose((micro_base, micro_gold), micro_world, ["weight_comparison"])
    pd.testing.assert_frame_equal(pair["weight_comparison"].frame, expected["weight_comparison"].frame)
    with pytest.raises(ValueError, match="forget and retain texts"):
        mu.diagnose((micro_base, micro_gold), None, ["activation_comparison"])


def test_attack_equals_the_attack_run(micro_world, micro_base, micro_gold):
    from mechunlearn.attacks import AttackData, create_attack

    budget = {"steps": 2, "max_facts": 2, "suffix_tokens": 3, "top_k": 8, "batch_size": 8}
    result = mu.attack(micro_base, "gcg", world=micro_world, gold=micro_gold, **budget)
    expected = create_attack("gcg", **budget).run(micro_base, AttackData.from_world(micro_world),
                                                  reference={"gold": micro_gold})
    pd.testing.assert_frame_equal(result.frame, expected.frame)
    assert result.summary["attack"] == "gcg" and "_repr_html_" in dir(result)
    with pytest.raises(ValueError, match="needs its facts"):
        mu.attack(micro_base, "gcg")

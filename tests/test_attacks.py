"""Attack building blocks against independent computations: relearning folds (texts never state a held-out
fact), RTN quantization (numpy reference, distinct values), direction ablation (projection removed, orthogonal
part kept), curve metrics (hand-derived), the registry and bad input."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn.attacks import AttackData, AttackError, AttackResult, create_attack, get_attack, register_attack
from mechunlearn.attacks.ablation import ablate_direction, outlier_token_ids
from mechunlearn.attacks.compare import curve_metrics
from mechunlearn.attacks.data import split_folds
from mechunlearn.attacks.finetune import fold_texts
from mechunlearn.attacks.quantize import rtn_quantize
from mechunlearn.attacks.table import (markdown_table, model_summary, robustness_table, summary_markdown,
                                       write_robustness_table)
from mechunlearn.world.render import TEMPLATES, render


@pytest.fixture(scope="module")
def attack_data(micro_world):
    return AttackData.from_world(micro_world)


# ----------------------------------------------------------------------------------------------- relearning folds
def test_relearning_folds_never_train_on_a_heldout_fact(micro_world, attack_data):
    folds = fold_texts(attack_data, k_folds=5, seed=0)
    forget_ids = {fact.fact_id for fact in micro_world.facts_of("forget")}
    heldout_ids = [item.fact_id for _, heldout in folds for item in heldout]
    assert sorted(heldout_ids) == sorted(forget_ids)  # every forget fact held out exactly once
    for texts, heldout in folds:
        joined = "\n".join(texts)
        lines = joined.splitlines()
        heldout_set = {item.fact_id for item in heldout}
        for item in heldout:
            fact = micro_world.fact(item.fact_id)
            templates = TEMPLATES[fact.relation]
            renderings = [render(template, fact) for template in (*templates.train, templates.heldout)]
            renderings.append(item.prompt + item.answer)
            for rendering in renderings:  # no phrasing of a held-out fact, in any template
                assert rendering.rstrip(".") not in joined, (item.fact_id, rendering)
            names = [re.compile(rf"(?<!\w){re.escape(name)}(?!\w)") for name in (fact.subject, fact.object)]
            assert not [line for line in lines if all(name.search(line) for name in names)], item.fact_id
        for fact in micro_world.facts_of("forget"):  # the known folds' stated facts are all there
            if fact.fact_id not in heldout_set and fact.sources:
                assert render(TEMPLATES[fact.relation].train[0], fact) in lines


def test_folds_keep_groups_together_and_refuse_too_many(attack_data):
    items = attack_data.forget_items()
    folds = split_folds(items, 4, seed=1)
    fold_of = {item.fact_id: index for index, fold in enumerate(folds) for item in fold}
    for item in items:
        assert all(fold_of[other.fact_id] == fold_of[item.fact_id] for other in items if other.group == item.group)
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= max(sum(1 for o in items if o.group == i.group) for i in items)
    groups = len({item.group for item in items})
    with pytest.raises(AttackError, match=f"k_folds={groups + 1} is larger"):
        split_folds(items, groups + 1)
    with pytest.raises(AttackError, match="larger than the number"):
        create_attack("relearn", k_folds=groups + 1).runs(attack_data)


def test_derived_facts_share_a_group_with_their_forget_premises(micro_world, attack_data):
    group = {item.fact_id: item.group for item in attack_data.items}
    checked = 0
    for fact in micro_world.facts_of("forget"):
        for premise in fact.premises:
            if micro_world.domain_of(micro_world.fact(premise)) == "forget":
                assert group[premise] == group[fact.fact_id]
                checked += 1
    assert checked > 0


# ------------------------------------------------------------------------------------------------- quantization
def _numpy_rtn(weight: np.ndarray, bits: int, group: int | None) -> np.ndarray:
    out = np.empty_like(weight)
    size = weight.shape[1] if group is None else group
    for row in range(weight.shape[0]):
        for start in range(0, weight.shape[1], size):
            block = weight[row, start:start + size].astype(np.float64)
            low, high = block.min(), block.max()
            scale = (high - low) / (2 ** bits - 1)
            out[row, start:start + size] = block if scale == 0 else low + np.clip(np.round((block - low) / scale), 0,
                                                                                  2 ** bits - 1) * scale
    return out


@pytest.mark.parametrize("bits,group", [(8, None), (4, None), (3, 16), (2, 5)])
def test_rtn_matches_numpy_and_has_at_most_2_to_the_bits_values(bits, group):
    torch.manual_seed(bits)
    weight = torch.randn(6, 40)
    weight[2] = 0.5  # a constant row stays exact
    quantized = rtn_quantize(weight, bits, group).numpy()
    np.testing.assert_allclose(quantized, _numpy_rtn(weight.numpy(), bits, group), atol=1e-5)
    size = 40 if group is None else group
    for row in range(6):
        for start in range(0, 40, size):
            assert len(np.unique(quantized[row, start:start + size])) <= 2 ** bits
    np.testing.assert_array_equal(quantized[2], 0.5)


def test_quantization_8_bits_is_close_and_2_bits_is_not(micro_base, micro_world):
    from mechunlearn.attacks.base import working_copy
    from mechunlearn.attacks.quantize import quantize_model
    from mechunlearn.batching import tokenize

    batch = tokenize(micro_base.tokenizer, micro_world.forget_texts()[:8], 64)
    real = batch.mask
    with torch.no_grad():
        reference = micro_base(batch.tokens)
        centred = reference[real] - reference[real].mean(-1, keepdim=True)
        errors, agreement = {}, {}
        for bits in (8, 2):
            quantized = working_copy(micro_base)
            quantize_model(quantized, bits)
            logits = quantized(batch.tokens)
            # relative RMS error of the logits on real tokens (a max-abs bound is dominated by one outlier logit)
            errors[bits] = float((logits - reference)[real].norm() / centred.norm())
            agreement[bits] = float((logits.argmax(-1) == reference.argmax(-1))[real].float().mean())
            changed = [name for name, p in quantized.named_parameters() if not torch.equal(p, micro_base.get_parameter(name))]
            assert changed and all(re.search(r"\.(W_Q|W_K|W_V|W_O|W_in|W_out)$", name) for name in changed)
    assert errors[8] < 0.02 and agreement[8] >= 0.99
    assert errors[2] > 0.2 and agreement[2] < agreement[8]


@pytest.mark.parametrize("bits", [1, 9, 0])
def test_bits_outside_2_to_8(bits):
    with pytest.raises(AttackError, match="outside 2..8"):
        create_attack("quantize", bits=str(bits))
    with pytest.raises(AttackError, match="2..8"):
        rtn_quantize(torch.zeros(2, 2), bits)


# ---------------------------------------------------------------------------------------------- direction ablation
def test_ablation_removes_exactly_the_direction():
    generator = np.random.default_rng(0)
    activation = generator.normal(size=(3, 5, 16))
    direction = generator.normal(size=16) * 7.0
    ablated = ablate_direction(torch.tensor(activation), torch.tensor(direction)).numpy()
    unit = direction / np.linalg.norm(direction)
    np.testing.assert_allclose(ablated @ unit, 0.0, atol=1e-10)
    orthogonal = activation - np.outer((activation @ unit).ravel(), unit).reshape(activation.shape)
    np.testing.assert_allclose(ablated, orthogonal, atol=1e-10)  # nothing orthogonal to it changes
    basis = np.linalg.svd(np.eye(16) - np.outer(unit, unit))[0][:, :15]  # orthonormal complement of unit
    np.testing.assert_allclose(ablated @ basis, activation @ basis, atol=1e-10)


def test_ablation_hook_on_a_model(micro_base, micro_world):
    from functools import partial

    from mechunlearn.batching import tokenize

    tokens = tokenize(micro_base.tokenizer, micro_world.forget_texts()[:4], 32).tokens
    direction = torch.randn(micro_base.cfg.d_model)
    name = "blocks.0.hook_resid_post"
    with torch.no_grad():
        _, clean = micro_base.run_with_cache(tokens, names_filter=[name])
        with micro_base.hooks(fwd_hooks=[(name, partial(ablate_direction, direction=direction))]):
            _, cache = micro_base.run_with_cache(tokens, names_filter=[name])
    unit = direction / direction.norm()
    assert float((cache[name] @ unit).abs().max()) < 1e-4
    expected = clean[name] - (clean[name] @ unit)[..., None] * unit
    torch.testing.assert_close(cache[name], expected, atol=1e-5, rtol=1e-5)
    assert not any(point.fwd_hooks for point in micro_base.hook_dict.values())


def test_outliers_are_the_far_tokens():
    activations = torch.zeros(50, 4)
    activations[:, 0] = torch.linspace(0, 1, 50)
    activations[7] = 40.0
    ids = torch.arange(100, 150)
    assert outlier_token_ids(activations, ids, 3.0) == {107}


# -------------------------------------------------------------------------------------------- curves and results
def test_curve_metrics_hand_derived():
    steps = [0, 1, 2, 5, 10]
    curve = pd.DataFrame({"step": steps, "category": "unique", "accuracy": [0.1, 0.2, 0.5, 0.6, 0.9]})
    gold = pd.DataFrame({"step": steps, "category": "unique", "accuracy": [0.1, 0.1, 0.2, 0.2, 0.3]})
    metrics = curve_metrics(curve, gold, {"unique": 0.9}, {"unique": 0.1})["unique"]
    assert metrics["threshold"] == pytest.approx(0.5)
    assert metrics["steps_to_half_gap"] == 2 and math.isinf(metrics["gold_steps_to_half_gap"])
    gap = np.array([0.0, 0.1, 0.3, 0.4, 0.6])
    area = sum((gap[i] + gap[i + 1]) / 2 * (steps[i + 1] - steps[i]) for i in range(4)) / 10
    assert metrics["area_vs_gold"] == pytest.approx(area)
    no_gap = curve_metrics(curve, gold, {"unique": 0.1}, {"unique": 0.1})["unique"]
    assert math.isnan(no_gap["steps_to_half_gap"])


def _result(name, after, before=None, domain=None):
    n = len(after)
    facts = pd.DataFrame({"fact_id": [f"f{i}" for i in range(n)], "domain": domain or ["forget"] * n,
                          "category": ["unique", "shared"] * (n // 2), "before": before or [0.0] * n,
                          "after": after})
    return AttackResult(name=name, frame=facts.copy(), tables={"facts": facts}, summary={"headline": "h"})


def test_robustness_table_against_direct_computation(tmp_path):
    gold_after = [0, 0, 1, 0, 0, 0, 1, 0]
    model_after = [1, 1, 1, 0, 1, 0, 1, 1]
    results = {"quantize": {"gold": _result("quantize", gold_after), "m": _result("quantize", model_after)}}
    table = robustness_table(results, gold="gold", base=None)
    row = table[(table["model"] == "m") & (table["attack"] == "quantize")].iloc[0]
    unique = [model_after[i] for i in range(0, 8, 2)]
    assert row["unique"] == pytest.approx(np.mean(unique)) and row["unique_n"] == 4
    assert row["all_vs_gold"] == pytest.approx(np.mean(np.subtract(model_after, gold_after)))
    assert row["unique_low"] <= row["unique"] <= row["unique_high"]
    assert set(table["attack"]) == {"none", "quantize"}
    markdown = markdown_table(table)
    assert markdown.count("\n") == len(table) + 2 and "| m | quantize | h |" in markdown


def _table_row(model, attack, unique, vs_gold=None, at10=None, steps=None, headline=""):
    row = {"model": model, "attack": attack, "headline": headline, "unique": unique, "unique_low": unique - 0.1,
           "unique_high": unique + 0.1}
    if vs_gold is not None:
        row.update(unique_vs_gold=vs_gold, unique_vs_gold_low=vs_gold - 0.05, unique_vs_gold_high=vs_gold + 0.05,
                   unique_vs_gold_p=0.01)
    if at10 is not None:
        row.update(unique_at_step10=at10, unique_steps_to_half_gap=steps)
    return row


def test_model_summary_picks_the_attack_that_beats_gold_most(tmp_path):
    table = pd.DataFrame([
        _table_row("gold", "none", 0.1, 0.0), _table_row("m", "none", 0.2, 0.1), _table_row("r", "none", 0.3, 0.2),
        _table_row("gold", "relearn", 0.1, 0.0, at10=0.1, steps=math.inf, headline="lr=0.001, step 100"),
        _table_row("m", "relearn", 0.6, 0.5, at10=0.3, steps=20.0, headline="lr=0.001, step 100"),
        _table_row("r", "relearn", 0.9, 0.8, at10=0.9, steps=5.0, headline="lr=0.001, step 100"),
        # GCG makes m answer more than relearning does, but it makes gold answer too: smaller lead over gold
        _table_row("gold", "gcg", 0.7, 0.0), _table_row("m", "gcg", 0.9, 0.2), _table_row("r", "gcg", 0.8, 0.1),
        _table_row("m", "quantize", 0.2, 0.1, headline="channel-4bit"),
        _table_row("w", "none", 0.1, 0.0), _table_row("w", "gcg", 0.75, 0.03)])    # w's best lead reaches 0
    summary = model_summary(table).set_index("model")
    assert summary.loc["m", "strongest_attack"] == "relearn" and summary.loc["m", "strongest_variant"] == "lr=0.001"
    assert summary.loc["m", "strongest_unique_vs_gold"] == pytest.approx(0.5)
    assert not summary.loc["m", "back_within_10"] and summary.loc["r", "back_within_10"]
    assert not summary.loc["gold", "back_within_10"]           # never recovers: infinite steps
    assert pd.isna(summary.loc["gold", "strongest_attack"])    # the reference is not ranked against itself
    assert summary.loc["r", "unique_before"] == pytest.approx(0.3)
    markdown = summary_markdown(summary.reset_index())
    assert "| r | 0.30 [0.20, 0.40] | 0.90 | 5 | yes | relearn (lr=0.001) | +0.80 [+0.75, +0.85] (p 0.01) |" in markdown
    assert "| gold | 0.10 [0.00, 0.20] | 0.10 | never | no | – | – |" in markdown
    assert "| w | 0.10 [0.00, 0.20] | – | – | – | none beats gold (best: gcg) | +0.03 [-0.02, +0.08] (p 0.01) |" \
        in markdown
    write_robustness_table(table, tmp_path)
    assert "Per model" in (tmp_path / "robustness.md").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "robustness_summary.csv")[["model", "strongest_attack"]],
                                  summary.reset_index()[["model", "strongest_attack"]])


def _curve_result(name, before, curves):
    """A relearning-like result: facts (unique only) with ``before``, and per-lr curves ``{lr: {step: acc}}``."""
    result = _result(name, [before] * 4, before=[before] * 4)
    frame = pd.DataFrame([{"lr": lr, "step": step, "category": "unique", "accuracy": accuracy, "n": 2}
                          for lr, curve in curves.items() for step, accuracy in curve.items()])
    headline_lr = max(curves, key=lambda lr: curves[lr][max(curves[lr])])       # best at the last step
    result.frame = frame
    result.tables["headline_curve"] = frame[frame["lr"] == headline_lr].drop(columns="lr").reset_index(drop=True)
    return result


def test_relearning_summary_takes_the_best_lr_for_a_ten_step_budget():
    steps = (0, 5, 10, 100)
    results = {"relearn": {
        "base": _curve_result("relearn", 1.0, {1e-4: dict.fromkeys(steps, 1.0)}),
        "gold": _curve_result("relearn", 0.0, {1e-4: dict.fromkeys(steps, 0.0)}),
        # the slow lr wins at step 100 (the headline), the fast one is at 0.8 by step 5
        "m": _curve_result("relearn", 0.0, {1e-4: {0: 0.0, 5: 0.1, 10: 0.2, 100: 0.95},
                                            1e-3: {0: 0.0, 5: 0.8, 10: 0.8, 100: 0.9}})}}
    table = robustness_table(results, gold="gold", base="base")
    row = table[(table["model"] == "m") & (table["attack"] == "relearn")].iloc[0]
    assert row["unique_at_step10"] == pytest.approx(0.2) and row["unique_steps_to_half_gap"] == 100  # headline lr
    assert row["unique_best_at_step10"] == pytest.approx(0.8) and row["unique_best_lr_at_step10"] == 1e-3
    assert row["unique_best_steps_to_half_gap"] == 5
    summary = model_summary(table).set_index("model")
    assert summary.loc["m", "relearn_at_step10"] == pytest.approx(0.8) and summary.loc["m", "back_within_10"]
    assert "| m | 0.00 [0.00, 0.00] | 0.80 (0.001) | 5 | yes |" in summary_markdown(summary.reset_index())


def test_result_save_and_load_round_trip(tmp_path):
    result = _result("toy_attack", [1, 0, 1, 1])  # not registered: its figure is the table view
    result.summary["interval"] = {"mean": float("nan"), "low": float("inf")}
    result.config = {"bits": [8, 4]}
    result.save(tmp_path / "r")
    loaded = AttackResult.load(tmp_path / "r")
    pd.testing.assert_frame_equal(loaded.facts, result.facts)
    assert loaded.config == {"bits": [8, 4]} and math.isnan(loaded.summary["interval"]["mean"])
    assert (tmp_path / "r" / "toy_attack.html").is_file() and loaded.figure() is not None
    with pytest.raises(AttackError, match="attack.json"):
        AttackResult.load(tmp_path)


# ---------------------------------------------------------------------------------------------- registry, input
def test_unknown_attack_lists_the_known():
    with pytest.raises(AttackError, match="known attacks: relearn, retain_finetune, gcg, soft_prompt, quantize, "
                                          "direction_ablation"):
        get_attack("telepathy")


def test_registry_refuses_duplicates():
    from mechunlearn.attacks import Attack

    class Relearn(Attack):
        name = "relearn"

    with pytest.raises(AttackError, match="already registered"):
        register_attack(Relearn)


@pytest.mark.parametrize("name,settings,message", [
    ("relearn", {"eval_steps": "0"}, "budget of 0"),
    ("retain_finetune", {"eval_steps": "0,0"}, "budget of 0"),
    ("relearn", {"lrs": "0"}, "positive learning rates"),
    ("relearn", {"k_folds": "1"}, "k_folds must be >= 2"),
    ("gcg", {"steps": "0"}, "steps must be > 0"),
    ("gcg", {"top_k": "0"}, "top_k must be > 0"),
    ("soft_prompt", {"iterations": "0"}, "iterations must be > 0"),
    ("quantize", {"backend": "gptq"}, "backend"),
    ("direction_ablation", {"single_layers": "false", "all_layers": "false"}, "no layer set"),
    ("gcg", {"colour": "red"}, "unknown setting 'colour'"),
    ("gcg", {"steps": "many"}, "cannot read 'many'"),
])
def test_bad_budgets(name, settings, message):
    with pytest.raises(AttackError, match=message):
        create_attack(name, **settings)


def test_config_strings_are_typed():
    attack = create_attack("relearn", lrs="1e-4,3e-4", eval_steps="0,5", k_folds="3")
    assert attack.config.lrs == (1e-4, 3e-4) and attack.config.eval_steps == (0, 5) and attack.config.k_folds == 3
    assert create_attack("gcg", max_facts="none").config.max_facts is None

"""Attacks on the micro world's models: the model given stays bitwise unchanged with no hook added or removed
(permanent hooks travel with the copy), GCG solves a planted easy target with a loss that never increases
(checked against a plain forward pass), the comparison with gold, incompatible gold models, the command line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn.attacks import (AttackData, AttackError, available_attacks, create_attack, hook_census, run_attacks,
                                 working_copy)

# Budgets small enough for a test, the same for every model of a test.
TINY = {
    "relearn": {"lrs": "1e-3", "eval_steps": "0,2", "k_folds": 2},
    "retain_finetune": {"lrs": "1e-3", "eval_steps": "0,2"},
    "gcg": {"steps": 3, "max_facts": 4, "suffix_tokens": 4, "top_k": 16, "batch_size": 16},
    "soft_prompt": {"iterations": 3, "universal_iterations": 2, "max_facts": 4, "n_tokens": 4},
    "quantize": {"bits": "4", "schemes": "channel"},
    "direction_ablation": {"single_layers": "false", "max_texts": 16},
}


@pytest.fixture(scope="module")
def attack_data(micro_world):
    return AttackData.from_world(micro_world)


def _sink_hook(activation, hook):
    """A stand-in for the native model's sink mask: a fixed mask on the MLP hidden units (part of the model)."""
    mask = torch.ones(activation.shape[-1])
    mask[::3] = 0.0
    return activation * mask


def _state(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("name", list(TINY))
def test_attack_leaves_the_model_unchanged_and_keeps_its_hooks(name, micro_base, micro_gold, attack_data):
    micro_base.add_perma_hook("blocks.0.mlp.hook_post", _sink_hook)
    weights, hooks = _state(micro_base), hook_census(micro_base)
    gold_weights, gold_hooks = _state(micro_gold), hook_census(micro_gold)
    assert hooks  # the permanent hook is there to be kept
    result = create_attack(name, **TINY[name]).run(micro_base, attack_data,
                                                   reference={"gold": micro_gold, "base": micro_gold})
    for model, before, census in ((micro_base, weights, hooks), (micro_gold, gold_weights, gold_hooks)):
        after = model.state_dict()
        assert all(torch.equal(before[key], after[key]) for key in before), name
        assert hook_census(model) == census, name
        assert all(not parameter.requires_grad or parameter.grad is None for parameter in model.parameters())
    facts = result.facts
    assert set(facts["model"]) == {"model", "gold"}
    assert facts["before"].isin([0.0, 1.0]).all()
    forget = facts[(facts["model"] == "model") & (facts["domain"] == "forget")]
    assert forget["after"].notna().any()
    assert result.summary["forget"]["all"]["after"]["n"] == int(forget["after"].notna().sum())
    assert "all" in result.summary["vs_gold"]
    assert result.figure() is not None


def test_working_copy_keeps_permanent_hooks_apart(micro_base, micro_world):
    from mechunlearn.batching import tokenize

    micro_base.add_perma_hook("blocks.0.mlp.hook_post", _sink_hook)
    tokens = tokenize(micro_base.tokenizer, micro_world.forget_texts()[:2], 24).tokens
    copy = working_copy(micro_base)
    with torch.no_grad():
        torch.testing.assert_close(copy(tokens), micro_base(tokens), rtol=0, atol=0)
        copy.reset_hooks(including_permanent=True)  # removing the copy's hooks leaves the original's in place
        assert hook_census(micro_base) and not hook_census(copy)
        assert not torch.equal(copy(tokens), micro_base(tokens))


def test_step_zero_of_the_curve_is_the_models_own_cloze(micro_gold, micro_world, attack_data):
    from mechunlearn.evals import cloze_table

    result = create_attack("relearn", lrs="1e-3", eval_steps="0,1,3", k_folds=2).attack(micro_gold, attack_data)
    curve = result.tables["curve"]
    assert sorted(curve["step"].unique()) == [0, 1, 3]
    own = cloze_table(micro_gold, micro_gold.tokenizer, micro_world.cloze_probes("forget"))
    start = curve[curve["step"] == 0].set_index("fact_id")["correct"]
    assert start.to_dict() == own.set_index("fact_id")["correct"].astype(float).to_dict()
    at_last = curve[curve["step"] == 3]
    assert len(at_last) == len(own)  # every forget fact measured once, in its held-out fold
    facts = result.facts[result.facts["domain"] == "forget"].set_index("fact_id")["after"]
    assert facts.to_dict() == at_last.set_index("fact_id")["correct"].to_dict()


def test_gcg_solves_a_planted_target_and_its_loss_never_increases(micro_gold, micro_world, attack_data):
    from mechunlearn.attacks.gcg import GCG, GCGConfig

    config = GCGConfig(steps=12, suffix_tokens=4, top_k=32, batch_size=32, max_facts=None)
    # planted easy target: a colour (few to choose from) that gold gets wrong, also after the initial "!!!!" suffix
    candidates = [item for item in attack_data.forget_items() if micro_world.fact(item.fact_id).relation == "colour"]
    start = GCG(GCGConfig(steps=1, suffix_tokens=4, top_k=1, batch_size=1, max_facts=None)).attack(
        micro_gold, AttackData(items=candidates, forget_texts=[], retain_texts=[]))
    unsolved = set(start.frame[start.frame["solved_at_step"] != 0]["fact_id"])
    wrong_before = set(start.facts[~start.facts["before"].astype(bool)]["fact_id"])
    target = next(item for item in candidates if item.fact_id in unsolved & wrong_before)
    data = AttackData(items=[target, *attack_data.retain_items()[:3]], forget_texts=[], retain_texts=[])
    result = GCG(config).attack(micro_gold, data)
    row = result.frame.iloc[0]
    assert not result.facts.set_index("fact_id").loc[target.fact_id, "before"]
    assert row["success"] and result.summary["success_rate"] == 1.0
    losses = result.tables["losses"].sort_values("step")["loss"].to_numpy()
    assert np.all(np.diff(losses) <= 1e-6) and losses[-1] < losses[0]
    answer_ids = micro_gold.tokenizer(target.answer, add_special_tokens=False)["input_ids"]
    suffix_ids = [int(token) for token in row["suffix_ids"].split()]
    assert not set(suffix_ids) & set(answer_ids)  # the suffix never spells the answer out
    prompt_ids = micro_gold.tokenizer(target.prompt, add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([prompt_ids + suffix_ids + answer_ids])
    with torch.no_grad():  # an independent forward pass: the full logits, log-softmax
        logprobs = torch.log_softmax(micro_gold(tokens)[0].double(), -1)
    start = len(prompt_ids) + len(suffix_ids)
    answer = [float(logprobs[start - 1 + i, token]) for i, token in enumerate(answer_ids)]
    assert row["target_logprob_after"] == pytest.approx(np.mean(answer), abs=1e-4)
    assert all(int(logprobs[start - 1 + i].argmax()) == token for i, token in enumerate(answer_ids))


def test_soft_prompt_lens_last_layer_is_the_model_output(micro_gold, attack_data):
    result = create_attack("soft_prompt", **TINY["soft_prompt"], universal="false").attack(micro_gold, attack_data)
    lens = result.tables["lens"]
    last = lens[lens["layer"] == micro_gold.cfg.n_layers - 1].set_index("fact_id")["success"]
    final = result.frame.set_index("fact_id")["success_final"]
    assert last.to_dict() == final.to_dict()


def test_gold_of_another_architecture_or_tokenizer(micro_base, micro_base_dir, micro_gold, toy_model, attack_data):
    from mechunlearn import models

    attack = create_attack("quantize", bits="8", schemes="channel")
    with pytest.raises(AttackError, match="another architecture"):
        attack.run(micro_base, attack_data, reference=toy_model)
    from conftest import TOY_FORGET, TOY_RETAIN, make_tokenizer

    other_tokenizer = make_tokenizer(TOY_FORGET + TOY_RETAIN, vocab_size=300)
    retokenized = models.load(micro_base_dir, device="cpu", tokenizer=other_tokenizer)
    with pytest.raises(AttackError, match="another tokenizer"):
        attack.run(micro_base, attack_data, reference={"gold": micro_gold, "base": retokenized})


def test_run_attacks_writes_keyed_results_and_reuses_them(tmp_path, micro_base_dir, micro_gold_dir, attack_data):
    models = {"base": micro_base_dir, "gold": micro_gold_dir}
    configs = {"quantize": TINY["quantize"]}
    results = run_attacks(models, attack_data, ["quantize"], configs=configs, out=tmp_path)
    target = tmp_path / "attacks" / "quantize" / "base"
    assert (target / "attack.json").is_file() and (target / "facts.csv").is_file()
    stamp = (target / "summary.json").stat().st_mtime_ns
    again = run_attacks(models, attack_data, ["quantize"], configs=configs, out=tmp_path)
    assert (target / "summary.json").stat().st_mtime_ns == stamp  # same key: read back, not recomputed
    pd.testing.assert_frame_equal(again["quantize"]["base"].facts, results["quantize"]["base"].facts)
    with pytest.raises(AttackError, match="gold model id"):
        run_attacks({"base": micro_base_dir}, attack_data, ["quantize"])


def test_cli_attack(tmp_path, micro_world, micro_base_dir, micro_gold_dir, capsys):
    from mechunlearn.cli import main

    assert main(["attack", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in available_attacks())
    world = str(micro_world.tokenizer_dir.parent)
    common = ["--world", world, "--out", str(tmp_path), "--device", "cpu", "--quiet"]
    assert main(["attack", "quantize", "--model", str(micro_base_dir), "--gold", str(micro_gold_dir), "--bits", "8",
                 "--schemes", "channel", *common]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["headline"] == "channel-8bit" and "unique" in printed["vs_gold"]
    assert main(["attack", "all", "--models", f"u={micro_base_dir}", "--gold", str(micro_gold_dir), "--base",
                 str(micro_base_dir), "--attacks", "quantize", "--set", "quantize.bits=8",
                 "--set", "quantize.schemes=channel", *common]) == 0
    assert (tmp_path / "tables" / "robustness.md").read_text().count("| u | quantize |") == 1
    table = pd.read_csv(tmp_path / "tables" / "robustness.csv")
    assert set(table["model"]) == {"u", micro_gold_dir.name}  # --base given as u's directory is u, not a third model
    capsys.readouterr()
    assert main(["attack", "telepathy", "--model", str(micro_base_dir), *common]) == 2
    assert "known attacks" in capsys.readouterr().err
    assert main(["attack", "quantize", "--model", str(micro_base_dir), "--bits", "9", *common]) == 2
    assert "outside 2..8" in capsys.readouterr().err


def test_table_reads_results_run_with_a_gold_reference(micro_base, micro_gold, attack_data):
    from mechunlearn.attacks import robustness_table

    attack = create_attack("quantize", **TINY["quantize"])
    combined = attack.run(micro_base, attack_data, reference=micro_gold)
    separate = {"m": attack.attack(micro_base, attack_data), "gold": attack.attack(micro_gold, attack_data)}
    first = robustness_table({"quantize": {"m": combined, "gold": separate["gold"]}}, base=None)
    second = robustness_table({"quantize": separate}, base=None)
    pd.testing.assert_frame_equal(first, second)
    assert combined.summary["vs_gold"]["all"]["difference"]["mean"] == pytest.approx(
        first[(first["model"] == "m") & (first["attack"] == "quantize")]["all_vs_gold"].iloc[0])

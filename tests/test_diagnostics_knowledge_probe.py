"""The knowledge probe against an independent computation: subject states from unpadded ``run_with_cache`` passes
(the subject's position found by tokenizing the prompt's prefix), probes fitted with scikit-learn directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechunlearn.diagnostics import run_analyses
from mechunlearn.diagnostics.knowledge_facts import KnowledgeFact, facts_from_world, subject_positions
from mechunlearn.diagnostics.knowledge_probe import KnowledgeProbe, probe_relations


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def independent_states(model, facts):
    """``{layer: [n, d]}`` from one unpadded pass per full prompt; position = tokens of the prefix up to the
    subject's end, minus one."""
    hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    rows = {layer: [] for layer in range(len(hooks))}
    for fact in facts:
        end = fact.prompt.rfind(fact.subject) + len(fact.subject)
        position = len(model.tokenizer(fact.prompt[:end], add_special_tokens=False)["input_ids"]) - 1
        tokens = torch.tensor([model.tokenizer(fact.prompt, add_special_tokens=False)["input_ids"]])
        _, cache = model.run_with_cache(tokens, names_filter=hooks)
        for layer, hook in enumerate(hooks):
            rows[layer].append(cache[hook][0, position].double().numpy())
    return {layer: np.stack(value) for layer, value in rows.items()}


def test_facts_and_subject_positions(micro_world, micro_base):
    facts = facts_from_world(micro_world)
    assert len(facts) == len(micro_world.facts)
    assert {fact.domain for fact in facts} == {"forget", "retain"}
    fact = micro_world.fact(facts[0].fact_id)
    assert (facts[0].subject, facts[0].relation, facts[0].answer) == (fact.subject, fact.relation, fact.object)
    ids, positions = subject_positions(micro_base.tokenizer, facts)
    for fact, token_ids, position in zip(facts, ids, positions):
        decoded_to_subject = micro_base.tokenizer.decode(token_ids[: position + 1])
        assert decoded_to_subject.rstrip().endswith(fact.subject), (fact.prompt, decoded_to_subject)
    with pytest.raises(ValueError, match="does not contain its subject"):
        subject_positions(micro_base.tokenizer, [KnowledgeFact("x", "r", "Zed", "a", "Nobody here", "retain")])


def test_relations_keep_only_decodable_forget_facts():
    def fact(index, relation, answer, domain):
        return KnowledgeFact(f"f{index}", relation, f"S{index}", answer, f"S{index} is", domain)

    facts = [fact(0, "r", "A", "retain"), fact(1, "r", "B", "retain"), fact(2, "r", "A", "retain"),
             fact(3, "r", "A", "forget"), fact(4, "r", "C", "forget"),  # C: no retain fact names it
             fact(5, "q", "A", "retain"), fact(6, "q", "A", "forget")]  # q: one retain answer only
    splits, excluded = probe_relations(facts)
    assert [split.relation for split in splits] == ["r"]
    assert [f.fact_id for f in splits[0].test] == ["f3"] and splits[0].classes == ["A", "B"]
    assert splits[0].majority == "A"
    assert excluded == {"no_retain_answers": 1, "answer_not_in_retain": 1}


def test_accuracy_matches_sklearn_on_independent_states(micro_world, micro_base, micro_gold):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    models = {"base": micro_base, "gold": micro_gold}
    result = run_analyses([KnowledgeProbe(world=micro_world)], models)["knowledge_probe"]
    splits, _ = probe_relations(facts_from_world(micro_world))
    per_fact = result.tables["per_fact"]
    for name, model in models.items():
        for split in splits:
            train = independent_states(model, split.train)
            test = independent_states(model, split.test)
            for layer in train:
                probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=0))
                predicted = probe.fit(train[layer], [f.answer for f in split.train]).predict(test[layer])
                ours = per_fact[(per_fact["model"] == name) & (per_fact["layer"] == layer)
                                & (per_fact["relation"] == split.relation)]
                assert list(ours["predicted"]) == list(predicted), (name, layer, split.relation)
        frame = result.frame[(result.frame["model"] == name) & (result.frame["category"] == "all")]
        facts_of = per_fact[per_fact["model"] == name]
        expected = facts_of.groupby("layer")["correct"].mean()
        np.testing.assert_allclose(frame.set_index("layer")["accuracy"], expected, rtol=1e-12)
        assert (frame["low"] <= frame["accuracy"]).all() and (frame["accuracy"] <= frame["high"]).all()
    # chance: mean over the evaluated facts of 1 / (answer classes of its relation)
    chance = np.mean([1 / len(split.classes) for split in splits for _ in split.test])
    assert result.frame.loc[result.frame["category"] == "all", "chance"].iloc[0] == pytest.approx(chance)
    assert set(result.frame["layer"]) == set(range(micro_base.cfg.n_layers + 1))
    assert result.summary["models"]["gold"]["all"]["n_facts"] == sum(len(split.test) for split in splits)
    figure = result.figure()
    names = {trace.name for trace in figure.data if trace.showlegend is not False}
    assert {"base", "gold", "chance"} <= names


def test_bad_options_are_refused(micro_world):
    with pytest.raises(ValueError, match="exactly one of world= .* or facts="):
        KnowledgeProbe()
    with pytest.raises(ValueError, match="nothing can be decoded"):
        KnowledgeProbe(facts=[KnowledgeFact("f0", "r", "S", "A", "S is", "forget")])

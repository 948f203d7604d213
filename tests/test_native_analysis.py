"""mechunlearn.native.analysis: the attribution scores and the sink bookkeeping against hand computations, and the
switch-vs-gold / entity tables on a one-epoch micro native model (shape and labels, not quality)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest

from mechunlearn.native import analysis, switch


@pytest.fixture(scope="module")
def micro_native(micro_world, tmp_path_factory):
    from mechunlearn.reference import RECIPES, pretrain

    recipe = RECIPES["micro"]
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=1))
    directory = pretrain(micro_world, "native", recipe=recipe, cache_dir=tmp_path_factory.mktemp("native-cache"),
                         progress=False)
    return switch(directory, device="cpu")


def test_attribution_scores_match_a_hand_count():
    table = pd.DataFrame({
        "fact_id": ["f1", "f2", "f3", "f4", "f5"], "source": ["s"] * 5,
        "correct_on": [True, True, True, True, False], "lost": [True, True, False, False, True],
        "states": [True, False, True, True, True], "n_stating": [1, 0, 2, 1, 1]})
    row = analysis.attribution_scores(table).iloc[0]
    # known facts f1..f4; predicted lost f1, f2; truth f1, f3, f4
    assert (row["lost"], row["states"], row["hits"]) == (2, 3, 1)
    assert row["precision"] == pytest.approx(0.5) and row["recall"] == pytest.approx(1 / 3)
    assert row["recall_unique"] == pytest.approx(0.5) and row["recall_shared"] == pytest.approx(0.0)


def test_target_sinks_and_random_units_follow_the_mask_table(micro_native):
    info = micro_native.native_info
    sink = info.sink
    table = sink.table().numpy()[:, sink.n_backbone:] > 0
    index = sink.sources.index("saga_0")
    expected_all = np.nonzero(table[index])[0] + sink.n_backbone
    others = np.delete(table, index, axis=0).any(0)
    expected_exclusive = np.nonzero(table[index] & ~others)[0] + sink.n_backbone
    assert analysis.target_sinks(info, ["saga_0"], exclusive=False) == expected_all.tolist()
    assert analysis.target_sinks(info, ["saga_0"], exclusive=True) == expected_exclusive.tolist()
    units = analysis.random_sink_units(info, 7, seed=1)
    assert units == analysis.random_sink_units(info, 7, seed=1) and len(set(units)) == 7
    assert min(units) >= sink.n_backbone and max(units) < sink.d_mlp


def test_switch_vs_gold_and_entity_tables_have_every_model_and_category(micro_native, micro_world):
    frame = analysis.switch_vs_gold(micro_native, micro_world, {"saga_0": ["saga_0"]}, control_seeds=(0,))
    assert set(frame["model"]) == {"native-on", "native-oracle-on", "native-off-oracle", "native-all", "native-off-nearest", "native-off-backbone",
                                   "native-off-none", "native-off-centroid", "random-nearest", "random-centroid",
                                   "random-none"}
    forget = frame[(frame["model"] == "native-on") & (frame["domain"] == "forget")]
    counts = {c: len(micro_world.facts_of("forget", ["saga_0"], category=c)) for c in forget["category"]}
    assert dict(zip(forget["category"], forget["n"])) == counts
    assert frame["accuracy"].between(0, 1).all()
    assert micro_native.native_switch["off"] == []  # left with everything on
    entity = micro_world.facts[0].subject
    table = analysis.entity_request(micro_native, micro_world, entity, routes=("backbone",),
                                    others={"other": switch(copy.deepcopy(micro_native), route="backbone")})
    assert set(table["model"]) == {"native-on", "native-off-backbone", "other"}
    assert table.groupby("model")["n"].sum().nunique() == 1  # every fact in exactly one group
    # another model is scored on the same groups: an all-backbone copy equals the backbone switch, group by group
    by_model = table.set_index(["model", "group"])["accuracy"]
    assert by_model["other"].to_dict() == by_model["native-off-backbone"].to_dict()
    assert set(analysis.entity_sources(micro_world, entity)) == set(table["sources_off"].iloc[0].split(","))
    with pytest.raises(ValueError, match="mentioned by no source"):
        analysis.entity_request(micro_native, micro_world, "Nobody-Anywhere")


def test_oracle_routing_scores_each_fact_with_its_stating_sources_mask(micro_native, micro_world):
    oracle = analysis.oracle_scores(micro_native, micro_world)
    own = analysis.fact_scores(switch(micro_native, source="saga_0"), micro_world)
    backbone = analysis.fact_scores(switch(micro_native, route="backbone"), micro_world)
    switch(micro_native)
    for fact in micro_world.facts:
        expected = own if fact.sources[:1] == ("saga_0",) else backbone if not fact.sources else None
        if expected is not None:
            assert oracle.at[fact.fact_id, "answer_logprob_sum"] == pytest.approx(
                expected.at[fact.fact_id, "answer_logprob_sum"], abs=1e-4)
    off = analysis.oracle_scores(micro_native, micro_world, off=["saga_0"])
    unique = [f.fact_id for f in micro_world.facts if f.sources == ("saga_0",)]
    assert list(off.loc[unique, "answer_logprob_sum"]) == pytest.approx(
        list(backbone.loc[unique, "answer_logprob_sum"]), abs=1e-4)


def test_routing_accuracy_counts_every_stated_fact_per_route(micro_native, micro_world):
    table = analysis.routing_accuracy(micro_native, micro_world)
    stated = sum(1 for fact in micro_world.facts if fact.sources)
    assert set(table["route"]) == {"nearest", "centroid"}
    assert list(table[table["category"] == "all"]["n"]) == [stated, stated]
    # the micro world's names are source-specific: the token router finds the stating source almost always
    assert float(table[(table["route"] == "nearest") & (table["category"] == "all")]["accuracy"].iloc[0]) > 0.8
    assert micro_native.native_switch["route"] == "nearest" and micro_native.native_switch["off"] == []


def test_relearning_curve_intervals_use_the_attackers_lr_and_forget_facts_only():
    from types import SimpleNamespace

    from mechunlearn.native.robustness import _curve_with_intervals

    curve = pd.DataFrame({
        "fact_id": ["a", "b", "c", "a", "b", "c", "r"], "domain": ["forget"] * 6 + ["retain"],
        "category": ["unique", "unique", "shared"] * 2 + ["unique"], "correct": [1, 0, 1, 1, 1, 1, 1],
        "step": [5] * 7, "lr": [1e-3] * 3 + [3e-4] * 3 + [1e-3]})
    result = SimpleNamespace(tables={"curve": curve}, summary={"best_lr": 1e-3})
    table = _curve_with_intervals(result).set_index("category")
    assert table.loc["unique", "accuracy"] == pytest.approx(0.5) and table.loc["unique", "n"] == 2
    assert table.loc["all", "accuracy"] == pytest.approx(2 / 3) and table.loc["all", "n"] == 3
    assert table.loc["unique", "low"] <= 0.5 <= table.loc["unique", "high"]

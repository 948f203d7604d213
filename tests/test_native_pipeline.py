"""The native steps of a study: ``models.native = true`` plans the native model, its switched ids (evaluated like
any model) and the native tables; a switched ``ModelRef`` loads the switched HookedTransformer."""

from __future__ import annotations

import dataclasses

from mechunlearn.pipeline import ModelRef, parse_study
from mechunlearn.pipeline.run import plan_study


def test_a_native_study_plans_the_native_model_its_switches_and_tables(micro_world, tmp_path):
    world_dir = micro_world.save(tmp_path / "world")
    study = parse_study({"study": {"name": "native", "out": str(tmp_path / "out"), "cache": str(tmp_path / "c")},
                         "data": {"world": str(world_dir)}, "models": {"native": True, "gold_sources": ["saga_1"]}})
    plan = plan_study(study, yes=True)
    ids = set(plan.steps)
    switched = {f"models/native-off-{label}-{route}" for label in ("saga_0", "saga_1")
                for route in ("nearest", "backbone", "none")}
    assert {"models/native", "native", *switched} <= ids
    assert {f"evals/{s.removeprefix('models/')}" for s in switched} <= ids  # evaluated like any model
    table = plan.steps["native"]
    assert table.inputs["gold"] == "models/gold" and table.inputs["gold-saga_1"] == "models/gold-saga_1"
    assert plan.steps["models/native-off-saga_1-none"].config == {"off": ["saga_1"], "route": "none",
                                                                  "role": "native"}


def test_a_switched_model_ref_loads_the_switched_model(micro_world, tmp_path):
    from mechunlearn.reference import RECIPES, pretrain

    recipe = RECIPES["micro"]
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=1))
    directory = pretrain(micro_world, "native", recipe=recipe, cache_dir=tmp_path, progress=False)
    model = ModelRef("native-off-saga_0-backbone", "native", directory, key="",
                     switch={"off": ["saga_0"], "route": "backbone"}).load(device="cpu")
    assert model.native_switch == {"off": ["saga_0"], "route": "backbone", "source": None, "zero_units": None}
    assert type(model.blocks[0].mlp.hook_post).__name__ == "SinkMaskPoint"

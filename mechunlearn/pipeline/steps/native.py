"""The natively unlearnable model in a study (``models.native = true``; docs/native.md, docs/study.md).

* ``native_model`` (order 25): ``models/native``: ``pretrain(world, "native")`` hard-linked like a reference
  model; its ``ModelRef`` carries ``switch = {"off": [], "route": "nearest"}`` (everything on).
* ``native_switch`` (order 26): one cheap step per switched id ``models/native-off-<target>-<route>``, a pointer
  to ``models/native/model`` with the switch in its ``ModelRef``, for the study's forget target (its sources
  joined by ``+``) and every ``models.gold_sources`` entry, under each route. Evals and attacks plan over them
  like any model (``ModelRef.load`` applies the switch).
* ``native`` (order 60): ``native/``: ``switch.csv`` (per target x model x domain x category, with the random
  control, base and the gold standards the study has), ``attribution.csv`` (per source: precision / recall),
  ``cross_source.csv`` (the entity request), ``capability.csv``, ``routing.csv`` and ``tables.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechunlearn.pipeline.models import ModelRef
from mechunlearn.pipeline.steps.base import Plan, Step, StepKind
from mechunlearn.pipeline.steps.models import link_tree

__all__ = ["NativeModelStep", "NativeSwitchStep", "NativeTableStep", "switch_targets"]


def switch_targets(study, plan: Plan) -> dict[str, list[str]]:
    """Label -> sources for every switched id: the forget target, then each per-source gold standard's source."""
    world, forget = plan.facts["world"], list(plan.facts["forget_sources"])
    resolved = list(world.resolve_forget(forget or None))
    targets = {"+".join(resolved): resolved}
    for source in study.models.gold_sources:
        targets.setdefault(source, [source])
    return targets


class NativeModelStep(StepKind):
    name, stage, order = "native_model", "native", 25
    provides = ("native",)

    def plan(self, study, plan: Plan):
        from mechunlearn.reference import reference_dir

        if not study.models.native or "world" not in plan.facts:
            return
        entry = reference_dir(plan.facts["world"], "native", cache_dir=study.cache_dir).name
        yield Step(self.name, "models/native", {"which": "native", "role": "native", "reference": entry},
                   inputs={"data": "data"}, model_id="native")

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return (folder / "model" / "native.json").is_file()

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.reference import pretrain

        source = pretrain(context.data().world, "native", cache_dir=context.cache_dir, progress=context.progress)
        link_tree(source, staging / "model")
        reference = ModelRef("native", "native", staging / "model", key="", switch={"off": [], "route": "nearest"})
        return {"model": reference.to_record(staging), "cache": str(source)}


class NativeSwitchStep(StepKind):
    name, stage, order = "native_switch", "native", 26
    loads_models = False

    def plan(self, study, plan: Plan):
        from mechunlearn.native import ROUTES

        if "models/native" not in plan.steps:
            return
        for label, sources in switch_targets(study, plan).items():
            for route in ROUTES:
                model_id = f"native-off-{label}-{route}"
                yield Step(self.name, f"models/{model_id}", {"off": sources, "route": route, "role": "native"},
                           inputs={"native": "models/native"}, model_id=model_id)

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        native = context.model("native")
        reference = ModelRef(step.model_id, "native", Path(native.path).absolute(), key="",
                             switch={"off": list(step.config["off"]), "route": step.config["route"]})
        return {"model": reference.to_record(staging)}


class NativeTableStep(StepKind):
    name, stage, order = "native", "native", 60

    def plan(self, study, plan: Plan):
        if "models/native" not in plan.steps:
            return
        inputs = {"native": "models/native", "data": "data"}
        for model_id in ("base", "gold"):
            if f"models/{model_id}" in plan.steps:
                inputs[model_id] = f"models/{model_id}"
        for source in study.models.gold_sources:
            inputs[f"gold-{source}"] = f"models/gold-{source}"
        targets = switch_targets(study, plan)
        yield Step(self.name, "native", {"targets": targets, "dtype": study.study.dtype,
                                         "control_seeds": [0, 1, 2]}, inputs=inputs)

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return (folder / "switch.csv").is_file()

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.native import analysis
        from mechunlearn.native.report import _busiest_entity, format_tables

        world = context.data().world
        load = lambda name: context.model(name).load(context.device, step.config["dtype"])  # noqa: E731
        native = load("native")
        base = load("base") if "base" in context.inputs else None
        targets = step.config["targets"]
        golds = {}
        for label, sources in targets.items():
            name = "gold" if list(sources) == list(world.resolve_forget(context.data().forget_sources or None)) \
                else f"gold-{label}"
            if name in context.inputs:
                golds[label] = load(name)
        tables = {"capability": analysis.capability({**({"base": base} if base is not None else {}),
                                                     "native (nearest, all on)": native}, world),
                  "routing": analysis.routing_accuracy(native, world),
                  "switch_vs_gold": analysis.switch_vs_gold(native, world, targets, base=base, golds=golds,
                                                            control_seeds=step.config["control_seeds"])}
        attribution = analysis.attribution(native, world)
        tables["attribution_scores"] = analysis.attribution_scores(attribution)
        tables["entity"] = analysis.entity_request(native, world, _busiest_entity(world))
        names = {"switch_vs_gold": "switch", "attribution_scores": "attribution", "entity": "cross_source"}
        for name, frame in tables.items():
            if name == "switch_vs_gold":
                frame = frame.rename(columns={"target": "source"})
            frame.to_csv(staging / f"{names.get(name, name)}.csv", index=False)
        (staging / "tables.md").write_text(format_tables(tables, {
            "created": "study", "world": world.content_hash[:12], "native_dir": "models/native", "wall_s": 0}))
        return {"tables": sorted(p.name for p in staging.glob("*.csv")),
                "targets": json.loads(json.dumps(targets))}

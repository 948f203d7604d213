"""``attack`` steps (every attack on every model, gold included) and the robustness table built from them.

* ``attack`` (stage attacks, order 50): one step per (attack, model id): ``attacks/<attack>/<model id>/`` holds
  ``AttackResult``'s files (``<attack>.csv``, one CSV per table, ``summary.json``, ``attack.json``) next to
  ``step.json``. Models: base, gold, the unlearned models that ``[attacks] methods`` / ``seeds`` select (all by
  default) and the native model's ids (their ``ModelRef`` applies the switch on load, so nothing here knows what
  they are); never the per-source gold standards ``gold-<source>``, which are references of the native study.
  Each model is attacked alone, with the study's one budget per attack: the gold model's own step is the
  reference every other model is compared with in the table (attacking gold again inside every step would do the
  same work once per model). An attack that reads the base model (``Attack.needs_base``: direction ablation)
  takes ``models/base`` as an input. The key holds the attack's full config (defaults filled in), so
  ``lrs = 1e-3`` and ``lrs = [0.001]`` are one step.
* ``robustness_table`` (stage tables, order 81): ``attacks.robustness_table`` over every attack step's saved
  result (``AttackResult.load``), written by ``write_robustness_table`` as ``tables/robustness/robustness.csv``
  (every column) and ``robustness.md`` (the headline columns).

The per-result HTML of ``mechunlearn attack`` is not written here: it embeds plotly.js (4.6 MB) once per model
and attack; the report draws the relearning curves and shows the table, and ``figures/`` has the curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechunlearn.pipeline.steps.base import Plan, Step, StepKind

__all__ = ["AttackStep", "RobustnessTableStep", "attacked_models", "attack_data"]

RESULT_FILES = ("attack.json", "summary.json")


def attacked_models(study, plan: Plan) -> list[Step]:
    """The model steps a study attacks, in plan order (base and gold first, as planned)."""
    scope = study.attack_scope
    chosen = []
    for step in plan.model_steps():
        if step.model_id.startswith("gold-"):
            continue
        if step.kind == "unlearned" and ((scope.methods and step.config["method"] not in scope.methods)
                                         or (scope.seeds and step.config["seed"] not in scope.seeds)):
            continue
        chosen.append(step)
    return chosen


def attack_data(data):
    """The ``AttackData`` of a study's data (:class:`~mechunlearn.pipeline.steps.data.StudyData`)."""
    from mechunlearn.attacks import AttackData

    if data.world_dir is not None:
        return AttackData.from_world(data.world, data.forget_sources)
    files = data.files
    return AttackData.from_files(forget_mcq=files["mcq_forget"], general_mcq=files.get("mcq_general"),
                                 forget_texts=files.get("forget"), retain_texts=files.get("retain"))


class AttackStep(StepKind):
    name, stage, order = "attack", "attacks", 50
    provides = ("attacks",)

    def plan(self, study, plan: Plan):
        from mechunlearn.attacks import get_attack
        from mechunlearn.pipeline.config import resolved_attack_config

        if not study.attacks:
            return
        models = attacked_models(study, plan)
        for attack, overrides in study.attacks.items():
            config = {"attack": attack, "config": resolved_attack_config(attack, overrides),
                      "dtype": study.study.dtype}
            needs_base = get_attack(attack).needs_base and "models/base" in plan.steps
            for model in models:
                inputs = {"model": model.id, "data": "data"}
                if needs_base:
                    inputs["base"] = "models/base"
                yield Step(self.name, f"attacks/{attack}/{model.model_id}", dict(config), inputs=inputs,
                           model_id=model.model_id)

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return all((folder / name).is_file() for name in RESULT_FILES)

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.attacks import create_attack
        from mechunlearn.pipeline.steps.evals import placement_of

        config = step.config
        data = attack_data(context.data())
        reference = context.model("model")
        model = reference.load(context.device, config["dtype"])
        data.check_model(model)
        base = context.model("base").load(context.device, config["dtype"]) if "base" in context.inputs else None
        attack = create_attack(config["attack"], **config["config"])
        result = attack.attack(model, data, base=base, progress=context.progress)
        result.summary["model_id"] = step.model_id
        result.write_files(staging, html=False)  # step.json is written next to them, in the same atomic move
        context.provenance["placement"] = placement_of(model)
        context.provenance["seeds"] = attack.config.seed
        return {"attack": config["attack"], "model": reference.id, "role": reference.role,
                "headline": result.summary.get("headline", ""), "tables": list(result.tables)}


class RobustnessTableStep(StepKind):
    name, stage, order = "robustness_table", "tables", 81
    version = "3"                # 2: the per-model summary under the table; 3: best lr per budget, "none beats gold"
    loads_models = False

    def plan(self, study, plan: Plan):
        attacks = plan.by_kind("attack")
        if not attacks:
            return
        model_ids = {step.model_id for step in attacks}
        config = {"gold": "gold", "base": "base" if "base" in model_ids else None}
        yield Step(self.name, "tables/robustness", config, inputs={step.id: step.id for step in attacks})

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return (folder / "robustness.csv").is_file() and (folder / "robustness.md").is_file()

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.attacks import AttackResult, robustness_table, write_robustness_table

        results: dict[str, dict[str, Any]] = {}
        for entry in context.inputs.values():  # plan order: attack by attack, models as planned
            record = entry.record
            results.setdefault(record["config"]["attack"], {})[record["model_id"]] = AttackResult.load(entry.folder)
        table = robustness_table(results, gold=step.config["gold"], base=step.config["base"])
        write_robustness_table(table, staging)
        return {"tables": ["robustness.csv", "robustness.md"], "attacks": list(results),
                "models": list(next(iter(results.values())))}

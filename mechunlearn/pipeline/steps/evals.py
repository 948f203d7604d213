"""``evals`` steps: ``evaluate_model`` on every model, ``evals/<model id>/metrics.json`` and its per-item tables
(``cloze.csv`` per fact, ``mcq.csv`` per question, ``truth_ratio.csv`` per item, ...: ``Evaluation.write``), which
the methods table reads to compare a method with the gold standard fact by fact.

Forget quality compares a model's forget Truth Ratios with the gold standard's, and collapse detection reads the
base model's retain NLL, so an unlearned model's evals take ``evals/gold`` and ``evals/base`` as inputs (base's
take gold's): each model is scored once, and the numbers it is compared with are the ones in the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechunlearn.pipeline.steps.base import Plan, Step, StepKind
from mechunlearn.storage import read_json

__all__ = ["EvalsStep", "placement_of"]


def placement_of(model) -> dict[str, Any]:
    """Where a loaded HookedTransformer's blocks live: ``{"n_devices", "blocks": {device: [layer, ...]}}``."""
    blocks: dict[str, list[int]] = {}
    for index, block in enumerate(model.blocks):
        device = str(next(block.parameters()).device)
        blocks.setdefault(device, []).append(index)
    return {"n_devices": int(getattr(model.cfg, "n_devices", 1) or 1), "blocks": blocks}


class EvalsStep(StepKind):
    name, stage, order = "evals", "evals", 40
    version = "2"  # 2: per-item tables next to metrics.json

    def plan(self, study, plan: Plan):
        models = {step.model_id: step for step in plan.model_steps() if not step.model_id.startswith("gold-")}
        config = {"dtype": study.study.dtype, "max_texts": study.evals.max_texts,
                  "batch_size": study.evals.batch_size}
        # gold first, then base: the others read their metrics
        order = [model_id for model_id in ("gold", "base") if model_id in models]
        order += [model_id for model_id in models if model_id not in ("gold", "base")]
        for model_id in order:
            inputs = {"model": models[model_id].id, "data": "data"}
            if model_id != "gold" and "gold" in models:
                inputs["gold_evals"] = "evals/gold"
            if model_id not in ("gold", "base") and "base" in models:
                inputs["base_evals"] = "evals/base"
            yield Step(self.name, f"evals/{model_id}", dict(config), inputs=inputs, model_id=model_id)

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return (folder / "metrics.json").is_file()

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.evals import evaluate_model

        reference = context.model("model")
        model = reference.load(device=context.device, dtype=step.config["dtype"])
        comparisons: dict[str, Any] = {}
        if "gold_evals" in context.inputs:
            gold = read_json(context.inputs["gold_evals"].folder / "metrics.json")
            comparisons["gold_truth_ratios"] = gold.get("forget_truth_ratios")
        if "base_evals" in context.inputs:
            base = read_json(context.inputs["base_evals"].folder / "metrics.json")
            comparisons["reference_retain_nll"] = base.get("retain_nll")
        evaluation = evaluate_model(model, **context.data().eval_arguments(), **comparisons,
                                    max_texts=step.config["max_texts"] or None, batch_size=step.config["batch_size"],
                                    return_tables=True)
        evaluation.write(staging)
        context.provenance["placement"] = placement_of(model)
        from mechunlearn.tracking import track_evals  # off unless [tracking] asks; its failures only warn

        track_evals(context.settings.get("tracking"), step, reference, staging / "metrics.json")
        return {"metrics": "metrics.json", "model": reference.id, "role": reference.role}

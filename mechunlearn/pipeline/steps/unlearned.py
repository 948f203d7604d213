"""``unlearned`` steps: one per method configuration and seed, ``models/unlearned/<method>/<config key>/s<seed>/``.

Each runs ``mechunlearn.unlearn.run`` (the methods' own bookkeeping: ``run.json`` with the loss history and its
provenance) on the study's base model and data, and keeps its ``model/`` and ``run.json``. The key hashes the
method's full resolved hyper-parameters with the seed, the keyed dtype, and the base model's and data's keys:
a changed hyper-parameter gives a new config key, a new model id, and reruns exactly what depends on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mechunlearn.pipeline.grid import expand_methods
from mechunlearn.pipeline.models import ModelRef
from mechunlearn.pipeline.steps.base import Plan, Step, StepKind

__all__ = ["UnlearnedStep", "layer_placement"]


def layer_placement(checkpoint_dir: Path, device: str) -> dict[str, Any]:
    """Where the layers of a model loaded by ``models.load`` live: every block on one device (``models.load``
    places the whole model on ``device``; TransformerLens' multi-device ``n_devices`` is not used)."""
    from mechunlearn.models import resolve_device

    config = json.loads((Path(checkpoint_dir) / "config.json").read_text())
    resolved = str(resolve_device(device))
    return {"n_devices": 1, "blocks": {resolved: list(range(int(config["num_hidden_layers"])))}}


class UnlearnedStep(StepKind):
    name, stage, order = "unlearned", "unlearned", 30

    def plan(self, study, plan: Plan):
        variants = plan.facts.get("variants")
        if variants is None:
            variants = plan.facts["variants"] = expand_methods(study, allow_large=plan.facts.get("yes", False))
        for variant in variants:
            for seed in variant.seeds:
                config = {"method": variant.method, "config_key": variant.config_key, "seed": seed,
                          "hyper": {**variant.config, "seed": seed}, "dtype": study.study.dtype}
                yield Step(self.name, f"models/unlearned/{variant.method}/{variant.config_key}/s{seed}", config,
                           inputs={"base": "models/base", "data": "data"}, model_id=variant.model_id(seed))

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return (folder / "model" / "config.json").is_file() and (folder / "run.json").is_file()

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.methods import get_method
        from mechunlearn.unlearn import run

        name = step.config["method"]
        method_class = get_method(name)
        method = method_class(method_class.Config.from_overrides(step.config["hyper"], method=name))
        data = context.data()
        forget_texts, retain_texts = data.texts()
        base = context.model("base")
        context.provenance.update(seeds=[step.config["seed"]], placement=layer_placement(base.path, context.device))
        run_dir = run(method, base.path, staging / ".run", forget_texts, retain_texts, world=data.world,
                      device=context.device, dtype=step.config["dtype"], progress=context.progress)
        shutil.move(str(run_dir / "model"), str(staging / "model"))
        shutil.move(str(run_dir / "run.json"), str(staging / "run.json"))
        shutil.rmtree(staging / ".run")
        record = json.loads((staging / "run.json").read_text())
        history = record.get("loss_history") or []
        reference = ModelRef(step.model_id, "unlearned", staging / "model", key="", method=name,
                             seed=step.config["seed"], config=step.config["hyper"])
        return {"model": reference.to_record(staging), "run": "run.json", "steps": record.get("steps"),
                "final_loss": history[-1].get("loss") if history and isinstance(history[-1], dict) else None,
                "train_wall_s": record.get("wall_time_s")}

"""``diagnostics`` steps: ``diagnose(base, other)`` per compared model, ``diagnostics/base__to__<id>/``.

One step per comparison (base -> gold, base -> each unlearned model the study diagnoses). Its folder holds
``step.json``, diagnose's ``manifest.json`` and pair analyses (``weight_comparison/``...) at the top, and the
per-model analyses under ``base/`` and ``<id>/`` (``linear_probes/``, ``logit_lens/``...): diagnose's layout
with the comparison folder's contents lifted one level. Keeping the base's per-model results inside each comparison makes
every step self-contained (atomic, independent, so they run in parallel under Ray) at the price of computing the
base's per-model analyses once per comparison; they are the cheap ones (probes, lenses on tiny models).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mechunlearn.pipeline.steps.base import Plan, Step, StepKind
from mechunlearn.pipeline.steps.unlearned import layer_placement

__all__ = ["DiagnosticsStep"]


class DiagnosticsStep(StepKind):
    name, stage, order = "diagnostics", "diagnostics", 70

    def plan(self, study, plan: Plan):
        analyses = study.analyses
        if not analyses.names or "models/base" not in plan.steps:
            return
        config = {"analyses": list(analyses.names), "max_samples": analyses.max_samples,
                  "options": analyses.options, "batch_size": analyses.batch_size, "max_length": analyses.max_length,
                  "dtype": study.study.dtype}
        others = []
        if analyses.gold and "models/gold" in plan.steps:
            others.append(plan.steps["models/gold"])
        for step in plan.by_kind("unlearned"):
            if analyses.methods and step.config["method"] not in analyses.methods:
                continue
            if analyses.seeds and step.config["seed"] not in analyses.seeds:
                continue
            others.append(step)
        for other in others:
            yield Step(self.name, f"diagnostics/base__to__{other.model_id}", dict(config),
                       inputs={"base": "models/base", "other": other.id, "data": "data"}, model_id=other.model_id)

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return (folder / "manifest.json").is_file()

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.diagnostics.study import diagnose

        base, other = context.model("base"), context.model("other")
        config = step.config
        context.provenance["placement"] = layer_placement(base.path, context.device)
        written = diagnose(base.path, other.path, out=staging, analyses=config["analyses"],
                           **context.data().diagnose_arguments(), max_samples=config["max_samples"],
                           device=context.device, dtype=config["dtype"], progress=context.progress, base_name="base",
                           other_name=other.id, options=config["options"], batch_size=config["batch_size"],
                           max_length=config["max_length"])
        comparison = staging / f"base__to__{other.id}"
        for entry in list(comparison.iterdir()):  # names of analyses and manifest.json: never "base" or a model id
            shutil.move(str(entry), str(staging / entry.name))
        comparison.rmdir()
        lifted = [Path(str(path).replace(str(comparison), str(staging), 1)) for path in written]
        return {"comparison": f"base__to__{other.id}", "manifest": "manifest.json",
                "written": sorted(str(path.relative_to(staging)) for path in lifted)}

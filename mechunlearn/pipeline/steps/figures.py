"""``figures``: the publication figures of the study (``mechunlearn.figures``), ``figures/*.pdf|svg|png``.

Stage figures, order 100, after the report; inputs: every evals, attacks, native, diagnostics and tables step,
so the step's key is the keys of everything it draws. With a whp method in the study it also computes the WHP
alpha sweep (``figures/whp_alpha_sweep.csv``) from the first whp configuration's first seed: the run's
reinforced model is retrained from the base model with the run's hyper-parameters (the run keeps only its
unlearned model), which is why this step loads models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechunlearn.pipeline.steps.base import Plan, Step, StepKind
from mechunlearn.pipeline.steps.report import report_inputs

__all__ = ["FiguresStep"]


class FiguresStep(StepKind):
    name, stage, order = "figures", "figures", 100
    loads_models = True   # only with a whp run: its reinforced model, for the alpha sweep

    def plan(self, study, plan: Plan):
        from mechunlearn.figures.style import FORMATS
        from mechunlearn.figures.whp import ALPHAS, N_PROMPTS

        inputs = report_inputs(plan)
        if not inputs:
            return
        whp = next((step for step in plan.by_kind("unlearned") if step.config["method"] == "whp"), None)
        config: dict[str, Any] = {"formats": list(FORMATS), "whp": None}
        if whp is not None and "models/base" in plan.steps:
            config["whp"] = {"run": whp.id, "hyper": whp.config["hyper"], "alphas": list(ALPHAS),
                             "n_prompts": N_PROMPTS, "dtype": study.study.dtype}
            inputs.update({"whp": whp.id, "models/base": "models/base", "data": "data"})
        yield Step(self.name, "figures", config, inputs=inputs)

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return (folder / "index.json").is_file()

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.figures import make_figures
        from mechunlearn.report.outputs import StudyOutputs

        config = step.config
        sweep = None
        if config["whp"] is not None:
            sweep = self._whp_sweep(config["whp"], context)
        index = make_figures(StudyOutputs.from_inputs(context.out, context.inputs), staging,
                             formats=config["formats"], whp_sweep=sweep)
        return {"index": "index.json", "figures": sorted(index["figures"]), "skipped": index["skipped"]}

    @staticmethod
    def _whp_sweep(whp: dict[str, Any], context):
        from mechunlearn.figures.whp import alpha_sweep, prompts_of, reinforced_model

        data = context.data()
        base = context.model("models/base").load(context.device, whp["dtype"])
        reinforced, method = reinforced_model(base, whp["hyper"], data.texts()[0], world=data.world,
                                              progress=context.progress)
        # the method's own dictionary lookup (world or anchored_terms_file), so the sweep translates as the run did
        anchored = method._anchored_terms()
        return alpha_sweep(base, reinforced, prompts_of(data, whp["n_prompts"], base.tokenizer), anchored,
                           whp["alphas"])

"""The study's last tables and its report: ``tables/signature/`` and ``report/index.html``.

* ``signature_table`` (stage tables, order 85): the brittleness signature (``mechunlearn.report.signature``)
  from every diagnostics step: ``signature.csv`` / ``.md`` (one row per table label, mean over the diagnosed seeds
  with a t interval, gold's value beside each column) and ``signature_runs.csv`` / ``.md`` (one row per model id).
* ``report`` (stage report, order 90): one self-contained HTML file (``mechunlearn.report.build``) from every
  evals, attacks, native, diagnostics and tables step, plus the circuitsvis views, which run the models: base
  against gold and against the first diagnosed seed of each method configuration, on the first forget texts.

Both are keyed by the keys of all their inputs, so any change upstream rebuilds them, and nothing else does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechunlearn.pipeline.steps.base import Plan, Step, StepKind, get_step_kind
from mechunlearn.storage import atomic_write_text

__all__ = ["SignatureTableStep", "ReportStep", "VIEW_TEXTS", "VIEW_MAX_LENGTH", "VIEW_HEADS", "report_inputs"]

VIEW_TEXTS = 3          # forget texts shown per model in the views
VIEW_MAX_LENGTH = 48    # tokens per text (the views must stay readable)
VIEW_HEADS = 3          # attention heads shown per model: those whose pattern changed most
REPORTED_STAGES = ("evals", "attacks", "native", "diagnostics", "tables")


def report_inputs(plan: Plan) -> dict[str, str]:
    """Every step the report and the figures read: evals, attacks, native, diagnostics and tables (by id)."""
    return {step.id: step.id for step in plan
            if get_step_kind(step.kind).stage in REPORTED_STAGES and step.kind not in ("report", "figures")}


def _table_labels(plan: Plan) -> dict[str, str]:
    """``{model id: table label}`` of the unlearned models (``<method>`` or ``<method>-<config key>``)."""
    labels = {(variant.method, variant.config_key): variant.label for variant in plan.facts.get("variants", [])}
    return {step.model_id: labels.get((step.config["method"], step.config["config_key"]), step.config["method"])
            for step in plan.by_kind("unlearned")}


class SignatureTableStep(StepKind):
    name, stage, order = "signature_table", "tables", 85
    loads_models = False

    def plan(self, study, plan: Plan):
        diagnostics = plan.by_kind("diagnostics")
        if not diagnostics:
            return
        inputs = {step.id: step.id for step in diagnostics}
        diagnosed = {step.model_id for step in diagnostics}
        labels = {model_id: label for model_id, label in _table_labels(plan).items() if model_id in diagnosed}
        yield Step(self.name, "tables/signature", {"labels": labels}, inputs=inputs)

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return all((folder / name).is_file() for name in ("signature.csv", "signature.md", "signature_runs.csv"))

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.pipeline.steps.tables import markdown_table
        from mechunlearn.report.outputs import StudyOutputs
        from mechunlearn.report.signature import signature_markdown, signature_runs, signature_table

        outputs = StudyOutputs.from_inputs(context.out, context.inputs)
        for model_id, label in step.config["labels"].items():  # the plan's labels win (a grid: <method>-<key>)
            if model_id in outputs.models:
                outputs.models[model_id].label = label
        runs = signature_runs(outputs)
        table = signature_table(runs)
        atomic_write_text(staging / "signature_runs.csv", runs.to_csv(index=False))
        atomic_write_text(staging / "signature.csv", table.to_csv(index=False))
        atomic_write_text(staging / "signature.md", signature_markdown(table))
        columns = [c for c in runs.columns if c not in ("model_id", "label", "role", "seed")]
        atomic_write_text(staging / "signature_runs.md", "One row per diagnosed model.\n\n" + markdown_table(
            ["model", *columns], [[record["model_id"], *[record[c] for c in columns]]
                                  for record in runs.to_dict("records")]))
        return {"tables": ["signature.csv", "signature.md", "signature_runs.csv", "signature_runs.md"],
                "columns": columns}


class ReportStep(StepKind):
    name, stage, order = "report", "report", 90
    loads_models = True   # the circuitsvis views run base and the viewed models (a few short texts)

    def plan(self, study, plan: Plan):
        inputs = report_inputs(plan)
        if not inputs:
            return
        viewed: dict[str, str] = {}
        if "models/base" in plan.steps and "data" in plan.steps:
            seen_configs = set()
            for step in plan.by_kind("diagnostics"):
                other = plan.steps[step.inputs["other"]]
                config = (other.config.get("method"), other.config.get("config_key")) if other.kind == "unlearned" \
                    else (other.model_id, None)
                if config not in seen_configs:  # the first diagnosed seed of each configuration
                    seen_configs.add(config)
                    viewed[other.model_id] = other.id
            inputs.update({"data": "data", "models/base": "models/base", **{v: v for v in viewed.values()}})
        config = {"title": study.report.title, "dtype": study.study.dtype, "viewed": viewed,
                  "views": {"texts": VIEW_TEXTS, "max_length": VIEW_MAX_LENGTH, "heads": VIEW_HEADS}}
        yield Step(self.name, "report", config, inputs=inputs)

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return (folder / "index.html").is_file()

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        import pandas as pd

        from mechunlearn.report.build import compute_views, write_report
        from mechunlearn.report.outputs import StudyOutputs

        config = step.config
        outputs = StudyOutputs.from_inputs(context.out, context.inputs)
        signature = None
        if "tables/signature" in context.inputs:
            signature = pd.read_csv(context.inputs["tables/signature"].folder / "signature.csv")
        views = []
        if config["viewed"]:
            options = config["views"]
            forget_texts = [text for text in context.data().texts()[0] if text.strip()][: options["texts"]]
            base = context.model("models/base").load(context.device, config["dtype"])
            for model_id, step_id in config["viewed"].items():  # one viewed model in memory at a time
                model = context.model(step_id).load(context.device, config["dtype"])
                views += compute_views(base, {model_id: model}, forget_texts, max_length=options["max_length"],
                                       n_heads=options["heads"])
                del model
        written = write_report(outputs, staging, config["title"], signature=signature, views=views)
        return {"report": "index.html", "written": written["written"], "bytes": written["bytes"]}

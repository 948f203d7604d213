"""The methods table, written by code from the evals: ``tables/methods/``.

* ``methods.csv`` / ``methods.md``: one row per model (base, gold) and per method configuration, its metrics as
  the mean over seeds with a Student-t 95 % interval over seeds (``stats.seed_interval``: ``<metric>``,
  ``<metric>/low``, ``<metric>/high``, ``n_seeds``; one seed or one model: bounds undefined);
* ``runs.csv`` / ``runs.md``: one row per configuration and seed (the sweep table), with its hyper-parameters;
* ``subjects_mcq_<set>.csv`` / ``.md``, when the MCQ items carry subjects: accuracy per subject and over all
  subjects, per model (:mod:`mechunlearn.report.subjects`).

``methods.csv`` also says how each method configuration compares with the gold standard on the world's forget
facts, fact by fact (``vs_gold``: the mean over facts of (the method's correctness averaged over its seeds) minus
(gold's), its bootstrap interval over facts and a paired permutation p-value, ``vs_gold/n`` facts; from the evals
steps' ``cloze.csv``), and gives the **verdict** of the bar (``BAR``: forget-unique cloze <= 0.20 with retain cloze
>= 90 % of base's): ``meets`` when the seed-mean meets it and the interval over seeds says so (forget's upper
bound <= 0.20, retain's lower bound >= 90 % of base), ``meets on the mean`` when only the mean does, ``misses``
otherwise (world data only; empty on the user's data).

Both are ranked by one stated rule (``RULE``): configurations keeping the retain metric at >= 90 % of the base
model's come first, by their forget metric (lower is better), then the others, by the same metric. The forget
metric is exact cloze accuracy on the forget target's unique facts (``cloze/forget/unique``) when the data is a
world, else forget-MCQ accuracy; the retain metric is cloze accuracy on retain facts (``cloze/retain/all``), else
general-MCQ accuracy. Timings stay in ``step.json`` / ``manifest.json``, so the tables of two runs of one study
are equal whenever their numbers are.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mechunlearn.pipeline.steps.base import Plan, Step, StepKind
from mechunlearn.storage import atomic_write_text, read_json

__all__ = ["MethodsTableStep", "TABLE_METRICS", "HEADLINE", "RULE", "BAR", "VERDICTS", "markdown_table",
           "ranking_metrics", "verdict", "gold_comparison", "clip_to_range"]

TABLE_METRICS = ("cloze/forget/unique", "cloze/forget/shared", "cloze/forget/inferred", "cloze/retain/all",
                 "mcq_forget_acc", "mcq_general_acc", "truth_ratio/forget/unique", "forget_quality",
                 "familiarity_completion", "forget_nll", "retain_nll", "collapsed")
HEADLINE = ("cloze/forget/unique", "cloze/retain/all", "mcq_forget_acc", "mcq_general_acc",
            "truth_ratio/forget/unique", "forget_quality", "familiarity_completion", "collapsed")
RETAIN_SHARE = 0.9
FORGET_BAR = 0.20
BAR = f"forget-unique cloze <= {FORGET_BAR:g} with retain cloze >= {RETAIN_SHARE:g} x base's"
VERDICTS = ("meets", "meets on the mean", "misses")
RULE = (f"configurations whose retain metric is >= {RETAIN_SHARE:g} x the base model's come first, ranked by the "
        "forget metric (lower is better); then the others, by the same metric")


def ranking_metrics(base_metrics: dict[str, Any]) -> tuple[str, str]:
    """(forget metric, retain metric) of the ranking rule: cloze on a world, MCQ on the user's data."""
    def present(key: str) -> bool:
        return _number(base_metrics.get(key)) is not None
    forget = "cloze/forget/unique" if present("cloze/forget/unique") else "mcq_forget_acc"
    retain = "cloze/retain/all" if present("cloze/retain/all") else "mcq_general_acc"
    return forget, retain


def verdict(forget: float, forget_high: float, retain: float, retain_low: float, base_retain: float) -> str:
    """The bar's verdict for one configuration from its seed-mean and seed interval (nan bounds = one seed: the
    interval cannot say so, so at best ``meets on the mean``)."""
    if any(value is None or math.isnan(value) for value in (forget, retain, base_retain)):
        return ""
    floor = RETAIN_SHARE * base_retain
    if not (forget <= FORGET_BAR and retain >= floor):
        return VERDICTS[2]
    if forget_high <= FORGET_BAR and retain_low >= floor:  # nan compares False
        return VERDICTS[0]
    return VERDICTS[1]


def gold_comparison(method_tables: list["Any"], gold_table: "Any", category: str = "unique") -> dict[str, float]:
    """Fact-by-fact comparison of a method configuration (its seeds' ``cloze.csv``) with gold's on the forget
    target's ``category`` facts: ``vs_gold`` = mean over facts of (seed-averaged correctness - gold's), its
    bootstrap interval over facts, the paired permutation p-value and the number of facts."""
    from mechunlearn.stats import paired_difference

    def forget_facts(table):
        rows = table[(table["domain"] == "forget") & (table["category"] == category)]
        return rows.set_index("fact_id")["correct"].astype(float)

    method = sum(forget_facts(table) for table in method_tables) / len(method_tables)
    gold = forget_facts(gold_table)
    method, gold = method.align(gold, join="inner")
    result = paired_difference(method.to_numpy(), gold.to_numpy())
    return {"vs_gold": result.difference.mean, "vs_gold/low": result.difference.low,
            "vs_gold/high": result.difference.high, "vs_gold/p": result.p_value, "vs_gold/n": result.difference.n}


# metrics that live in [0, 1] (accuracies, shares, p-values, TOFU's statistic, the collapsed fraction): a Student-t
# interval over 3 seeds can reach past the range (ga's collapsed fraction 0.667 gave [-0.77, 2.10]); its bounds
# are clipped to what the metric can take. The NLLs are only bounded below.
UNIT_RANGE = tuple(key for key in TABLE_METRICS if not key.endswith("_nll"))


def clip_to_range(key: str, low: float, high: float) -> tuple[float, float]:
    """The seed interval's bounds clipped to the metric's range ([0, 1], or [0, inf) for an NLL); nan stays."""
    upper = 1.0 if key in UNIT_RANGE else math.inf
    clip = lambda value: value if math.isnan(value) else min(max(value, 0.0), upper)  # noqa: E731
    return clip(low), clip(high)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and not math.isnan(value):
        return float(value)
    return None


def _format(mean: float, low: float, high: float) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table; written here because pandas' ``to_markdown`` needs ``tabulate``, a
    dependency for ten lines."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.4g}"
        return str(value).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _gold_cell(record: dict[str, Any]) -> str:
    value = record.get("vs_gold")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    p_value = record["vs_gold/p"]
    p_text = "n/a" if math.isnan(p_value) else (f"{p_value:.3f}" if p_value >= 0.001 else "<0.001")
    return (f"{value:+.3f} [{record['vs_gold/low']:+.3f}, {record['vs_gold/high']:+.3f}] "
            f"(p {p_text}, n {int(record['vs_gold/n'])})")


class MethodsTableStep(StepKind):
    name, stage, order = "methods_table", "tables", 80
    loads_models = False
    version = "4"  # 2: vs_gold and the verdict; 3: per-subject MCQ tables; 4: bounded intervals clipped

    def plan(self, study, plan: Plan):
        evals = plan.by_kind("evals")
        if not evals:
            return
        labels = {(variant.method, variant.config_key): variant for variant in plan.facts.get("variants", [])}
        models = []
        for step in evals:
            source = plan.steps[step.inputs["model"]]
            entry = {"id": step.model_id, "role": source.config.get("role", "unlearned"), "label": step.model_id}
            if source.kind == "unlearned":
                variant = labels[(source.config["method"], source.config["config_key"])]
                entry.update(method=variant.method, config_key=variant.config_key, seed=source.config["seed"],
                             label=variant.label, hyper=variant.hyper)
            models.append(entry)
        config = {"models": models, "metrics": list(TABLE_METRICS), "headline": list(HEADLINE), "rule": RULE,
                  "retain_share": RETAIN_SHARE}
        yield Step(self.name, "tables/methods", config, inputs={step.model_id: step.id for step in evals})

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return all((folder / name).is_file() for name in ("methods.csv", "methods.md", "runs.csv", "runs.md"))

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        import pandas as pd

        from mechunlearn.stats import seed_interval

        config = step.config
        metrics = {entry["id"]: read_json(context.inputs[entry["id"]].folder / "metrics.json")
                   for entry in config["models"]}
        base = metrics.get("base", {})
        forget_key, retain_key = ranking_metrics(base)
        base_retain = _number(base.get(retain_key))

        # one group per table row: a reference model, or a method configuration (its seeds)
        groups: dict[str, list[dict[str, Any]]] = {}
        for entry in config["models"]:
            groups.setdefault(entry["label"], []).append(entry)
        rows = []
        for label, entries in groups.items():
            first = entries[0]
            row: dict[str, Any] = {"model": label, "role": first["role"], "method": first.get("method", ""),
                                   "config_key": first.get("config_key", ""), "n_seeds": len(entries),
                                   "config": ", ".join(f"{k}={v}" for k, v in first.get("hyper", {}).items())}
            for key in config["metrics"]:
                values = [_number(metrics[entry["id"]].get(key)) for entry in entries]
                interval = seed_interval([math.nan if value is None else value for value in values])
                row[key], row[f"{key}/low"], row[f"{key}/high"] = interval.mean, *clip_to_range(
                    key, interval.low, interval.high)
            rows.append(row)
        table = pd.DataFrame(rows)
        self._compare_with_gold(table, groups, context, forget_key == "cloze/forget/unique")
        table["verdict"] = [
            verdict(row[forget_key], row[f"{forget_key}/high"], row[retain_key], row[f"{retain_key}/low"],
                    math.nan if base_retain is None else base_retain)
            if row["role"] == "unlearned" and forget_key == "cloze/forget/unique" else ""
            for row in table.to_dict("records")]
        unlearned = table["role"] == "unlearned"
        meets = (table[retain_key] >= RETAIN_SHARE * base_retain) if base_retain is not None else unlearned
        table["meets_retain"] = meets & unlearned
        # a callable, not a Series: assigning a Series to an empty frame would adopt the Series' rows
        order = table[unlearned].assign(_miss=lambda frame: ~frame["meets_retain"]).sort_values(
            ["_miss", forget_key, "model"], na_position="last", kind="stable").index
        table["rank"] = pd.array([pd.NA] * len(table), dtype="Int64")
        table.loc[order, "rank"] = range(1, len(order) + 1)
        table = pd.concat([table[~unlearned], table.loc[order]]).reset_index(drop=True)
        front = ["model", "role", "method", "config_key", "config", "n_seeds", "rank", "verdict", "meets_retain"]
        table = table[front + [c for c in table.columns if c not in front]]

        runs = self._runs(config, metrics, table)
        atomic_write_text(staging / "methods.csv", table.to_csv(index=False))
        atomic_write_text(staging / "runs.csv", runs.to_csv(index=False))
        atomic_write_text(staging / "methods.md", self._methods_markdown(table, forget_key, retain_key))
        atomic_write_text(staging / "runs.md", self._runs_markdown(runs, config))
        written = ["methods.csv", "methods.md", "runs.csv", "runs.md", *self._subjects(groups, metrics, staging)]
        return {"tables": written, "rule": RULE,
                "forget_metric": forget_key, "retain_metric": retain_key, "base_retain": base_retain}

    @staticmethod
    def _subjects(groups: dict[str, list[dict[str, Any]]], metrics: dict[str, dict], staging: Path) -> list[str]:
        """``subjects_mcq_<set>.csv`` / ``.md`` when the MCQ items carry subjects (mechunlearn.report.subjects)."""
        from mechunlearn.report.subjects import subject_file, subject_markdown, subject_sets, subject_table

        columns = {label: [entry["id"] for entry in entries] for label, entries in groups.items()}
        written = []
        for set_name in subject_sets(metrics):
            table, name = subject_table(metrics, set_name, columns), subject_file(set_name)
            atomic_write_text(staging / f"{name}.csv", table.to_csv(index=False))
            atomic_write_text(staging / f"{name}.md", subject_markdown(
                table, set_name, list(columns), {label: len(ids) for label, ids in columns.items()}))
            written += [f"{name}.csv", f"{name}.md"]
        return written

    @staticmethod
    def _compare_with_gold(table, groups: dict[str, list[dict[str, Any]]], context, on_world: bool) -> None:
        """``vs_gold`` columns from the evals' per-fact cloze tables (world data with a gold model only)."""
        import pandas as pd

        columns = ("vs_gold", "vs_gold/low", "vs_gold/high", "vs_gold/p", "vs_gold/n")
        for column in columns:
            table[column] = math.nan
        gold_file = context.inputs["gold"].folder / "cloze.csv" if "gold" in context.inputs else None
        if not on_world or gold_file is None or not gold_file.is_file():
            return
        gold = pd.read_csv(gold_file)
        for index, label in enumerate(table["model"]):
            files = [context.inputs[entry["id"]].folder / "cloze.csv" for entry in groups[label]]
            if all(file.is_file() for file in files):
                comparison = gold_comparison([pd.read_csv(file) for file in files], gold)
                for column in columns:
                    table.loc[index, column] = comparison[column]

    @staticmethod
    def _runs(config: dict[str, Any], metrics: dict[str, dict], table) -> "Any":
        import pandas as pd

        ranks = dict(zip(table["model"], table["rank"]))
        rows = []
        for entry in config["models"]:
            if entry["role"] != "unlearned":
                continue
            row = {"model": entry["id"], "method": entry["method"], "config_key": entry["config_key"],
                   "seed": entry["seed"], "rank": ranks[entry["label"]],
                   **{f"hp/{k}": str(v) if isinstance(v, list) else v for k, v in entry["hyper"].items()}}
            row.update({key: _number(metrics[entry["id"]].get(key)) for key in config["metrics"]})
            rows.append(row)
        if not rows:
            return pd.DataFrame(columns=["model", "method", "config_key", "seed", "rank", *config["metrics"]])
        runs = pd.DataFrame(rows)
        return runs.sort_values(["rank", "model", "seed"], kind="stable").reset_index(drop=True)

    @staticmethod
    def _methods_markdown(table, forget_key: str, retain_key: str) -> str:
        import pandas as pd

        header = ["model", "seeds", "rank", *HEADLINE, "unique - gold [95 % CI] (p, n facts)", "verdict"]
        rows = []
        for record in table.to_dict("records"):
            rank = "" if pd.isna(record["rank"]) else int(record["rank"])
            rows.append([record["model"], record["n_seeds"], rank,
                         *[_format(record[k], record[f"{k}/low"], record[f"{k}/high"]) for k in HEADLINE],
                         _gold_cell(record), record["verdict"]])
        return (f"Mean over seeds [95 % t interval over seeds]. Ranked: {RULE} (forget metric {forget_key}, "
                f"retain metric {retain_key}). Verdict of the bar ({BAR}): meets = the seed interval says so; "
                f"meets on the mean = only the mean does. unique - gold: fact by fact against the gold standard "
                f"(bootstrap interval over facts, paired permutation p).\n\n" + markdown_table(header, rows))

    @staticmethod
    def _runs_markdown(runs, config: dict[str, Any]) -> str:
        hyper = [c for c in runs.columns if c.startswith("hp/") and runs[c].nunique(dropna=True) > 1]
        header = ["model", "seed", "rank", *hyper, *HEADLINE]
        rows = [[record[c] for c in header] for record in runs.to_dict("records")]
        return "One row per configuration and seed.\n\n" + markdown_table(header, rows)

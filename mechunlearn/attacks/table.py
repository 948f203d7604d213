"""Every attack on every model, and the robustness table built from their results.

``run_attacks(models, data, attacks)`` runs each attack once per model with one budget (gold and base included),
optionally writing each result to ``out/attacks/<attack>/<model id>/`` and skipping results whose key (attack,
config, model bytes, data, base model) matches what is there. ``workers > 1`` runs models side by side in
processes (models given as checkpoint paths; one torch thread each): on a 2-core CPU the world's tiny models are
compute-bound, so two processes are the parallelism that pays.

``robustness_table(results)`` has one row per (model, attack), plus an ``attack="none"`` row per model (its
accuracy before any attack): per forget category (unique / shared / inferred / all) the accuracy after the attack
with its 95 % interval over facts and ``n``; its paired difference to the gold model under the same attack (same
facts; interval and permutation p-value); the retain accuracy with its interval; and for the curve attacks the
unique-fact accuracy at step 10, the steps to recover half of the base-gold gap and the area between the
model's curve and gold's.
``write_robustness_table`` writes it as CSV and Markdown (atomically).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from mechunlearn.attacks.base import FORGET_CATEGORIES, AttackError, AttackResult
from mechunlearn.attacks.compare import category_rows, curve_metrics, vs_gold
from mechunlearn.attacks.data import AttackData

__all__ = ["run_attacks", "robustness_table", "write_robustness_table", "markdown_table", "model_summary",
           "summary_markdown", "result_dir", "HALF_GAP_STEPS"]

HALF_GAP_STEPS = 10     # "comes back within ten fine-tuning steps": the seeds' claim, read off the relearning curve

RESULT_VERSION = 1


def result_dir(out: str | os.PathLike, attack: str, model_id: str) -> Path:
    """Where ``run_attacks`` keeps one result: ``out/attacks/<attack>/<model id>/`` (docs/study.md's layout)."""
    return Path(out) / "attacks" / attack / model_id


def _model_key(model: Any) -> str:
    from mechunlearn.storage import checkpoint_digest, model_digest

    if isinstance(model, (str, os.PathLike)):
        from mechunlearn.models import resolve_checkpoint_dir

        return checkpoint_digest(resolve_checkpoint_dir(model))
    return model_digest(model)


def _load(model: Any, device: str):
    if isinstance(model, (str, os.PathLike)):
        from mechunlearn import models

        return models.load(model, device=device)
    return model


def _attack_all(model_id: str, model: Any, base: Any, data: AttackData, attacks: Sequence[str],
                configs: Mapping[str, Mapping[str, Any]], out: str | None, force: bool, device: str,
                progress: bool, threads: int | None = None) -> dict[str, AttackResult]:
    """Every attack on one model (loaded once); results written to ``out`` when given."""
    import torch

    from mechunlearn.attacks.registry import create_attack
    from mechunlearn.storage import config_digest

    if threads:
        torch.set_num_threads(threads)
    model_key, base_key = _model_key(model), (_model_key(base) if base is not None else None)
    loaded, loaded_base = None, None
    results = {}
    for name in attacks:
        attack = create_attack(name, **dict(configs.get(name, {})))
        uses_base = type(attack).needs_base
        key = config_digest({"version": RESULT_VERSION, "attack": name, "config": attack.config.to_dict(),
                             "model": model_key, "data": data.digest(), "base": base_key if uses_base else None})
        target = result_dir(out, name, model_id) if out is not None else None
        if target is not None and (target / "attack.json").is_file() and not force:
            existing = AttackResult.load(target)
            if existing.summary.get("key") == key:
                results[name] = existing
                continue
        if loaded is None:
            loaded = _load(model, device)
            data.check_model(loaded)
        if uses_base and base is not None and loaded_base is None:
            loaded_base = _load(base, device)
        started = time.perf_counter()
        result = attack.attack(loaded, data, base=loaded_base if uses_base else None, progress=progress)
        result.summary["wall_s"] = round(time.perf_counter() - started, 3)
        result.summary["key"] = key
        result.summary["model_id"] = model_id
        if target is not None:
            result.save(target)
        results[name] = result
    return results


def run_attacks(models: Mapping[str, Any], data: AttackData, attacks: Sequence[str] | None = None, *,
                gold: str = "gold", base: str | None = "base", configs: Mapping[str, Mapping[str, Any]] | None = None,
                out: str | os.PathLike | None = None, workers: int = 1, device: str = "cpu", force: bool = False,
                progress: bool = False) -> dict[str, dict[str, AttackResult]]:
    """Run ``attacks`` (default: every registered one) on every model of ``models`` (id -> HookedTransformer or
    checkpoint path); returns ``{attack: {model id: AttackResult}}``. ``gold`` must be one of the ids (the table
    compares every model to it); ``base`` (if one of the ids) feeds direction ablation's base variant."""
    from mechunlearn.attacks.base import check_compatible
    from mechunlearn.attacks.registry import available_attacks

    attacks = list(attacks) if attacks is not None else available_attacks()
    configs = dict(configs or {})
    unknown = set(configs) - set(attacks)
    if unknown:
        raise AttackError(f"configs given for attack(s) {sorted(unknown)} that are not run; run them or drop them")
    if gold not in models:
        raise AttackError(f"gold model id {gold!r} is not among the models ({', '.join(models)}): every model is "
                          "compared to the gold standard under the same attack")
    base_model = models.get(base) if base is not None else None
    reference = _load(models[gold], device)
    for model_id, model in models.items():  # one clear error before any work: same architecture and tokenizer
        if model_id != gold:
            check_compatible(_load(model, device), reference, "gold", name=model_id)
    if workers > 1:
        in_memory = [model_id for model_id, model in models.items() if not isinstance(model, (str, os.PathLike))]
        if in_memory or out is None:
            raise AttackError("workers > 1 needs every model as a checkpoint path and an output directory (out=...)")
        # spawn, not fork: a forked child of a process whose OpenMP pool is running can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {model_id: pool.submit(_attack_all, model_id, model, base_model, data, attacks, configs,
                                             str(out), force, device, False, 1)
                       for model_id, model in models.items()}
            per_model = {model_id: future.result() for model_id, future in futures.items()}
    else:
        per_model = {model_id: _attack_all(model_id, model, base_model, data, attacks, configs,
                                           None if out is None else str(out), force, device, progress)
                     for model_id, model in models.items()}
    return {name: {model_id: per_model[model_id][name] for model_id in models} for name in attacks}


# ------------------------------------------------------------------------------------------------------- table
def _interval_columns(prefix: str, interval: Mapping[str, Any] | None) -> dict[str, float]:
    if interval is None:
        return {prefix: math.nan, f"{prefix}_low": math.nan, f"{prefix}_high": math.nan, f"{prefix}_n": 0}
    return {prefix: interval["mean"], f"{prefix}_low": interval["low"], f"{prefix}_high": interval["high"],
            f"{prefix}_n": interval["n"]}


def _row(model_id: str, attack: str, result: AttackResult, gold: AttackResult | None, column: str,
         cache: dict) -> dict:
    from mechunlearn.attacks.scoring import category_intervals

    facts = result.own("facts")
    # the attack's own summary already holds these intervals (bootstraps are the slow part of a table)
    intervals = result.summary if "forget" in result.summary else category_intervals(facts)
    row: dict[str, Any] = {"model": model_id, "attack": attack,
                           "headline": "" if column == "before" else result.summary.get("headline", "")}
    for category in FORGET_CATEGORIES:
        row.update(_interval_columns(category, (intervals["forget"].get(category) or {}).get(column)))
    differences = vs_gold(facts, gold.own("facts"), column, FORGET_CATEGORIES, cache) if gold is not None else {}
    for category in FORGET_CATEGORIES:
        difference = differences.get(category)
        row.update({f"{category}_vs_gold": difference["difference"]["mean"] if difference else math.nan,
                    f"{category}_vs_gold_low": difference["difference"]["low"] if difference else math.nan,
                    f"{category}_vs_gold_high": difference["difference"]["high"] if difference else math.nan,
                    f"{category}_vs_gold_p": difference["p_value"] if difference else math.nan})
    row.update(_interval_columns("retain", (intervals.get("retain") or {}).get(column)))
    return row


def robustness_table(results: Mapping[str, Mapping[str, AttackResult]], *, gold: str = "gold",
                     base: str | None = "base") -> pd.DataFrame:
    """The robustness table from ``run_attacks``' results (see the module docstring for its columns)."""
    if not results:
        raise AttackError("no attack results to tabulate")
    rows: list[dict] = []
    cache: dict = {}
    first = next(iter(results.values()))
    for model_id, result in first.items():  # accuracy before any attack: any attack's "before" column
        rows.append(_row(model_id, "none", result, first.get(gold), "before", cache))
    for attack, per_model in results.items():
        if gold not in per_model:
            raise AttackError(f"attack {attack}: no result for the gold model {gold!r}; run it on gold too")
        gold_result = per_model[gold]
        base_result = per_model.get(base) if base is not None else None
        for model_id, result in per_model.items():
            row = _row(model_id, attack, result, gold_result, "after", cache)
            if "headline_curve" in result.tables:
                curve = result.own("headline_curve")
                at_ten = curve[(curve["step"] == 10) & (curve["category"] == "unique")]["accuracy"]
                row["unique_at_step10"] = float(at_ten.iloc[0]) if len(at_ten) else math.nan
                if base_result is not None:
                    metrics = curve_metrics(curve, gold_result.own("headline_curve"),
                                            _before(base_result), _before(gold_result))
                    for category in ("unique", "all"):
                        values = metrics.get(category, {})
                        row[f"{category}_steps_to_half_gap"] = values.get("steps_to_half_gap", math.nan)
                        row[f"{category}_area_vs_gold"] = values.get("area_vs_gold", math.nan)
                row.update(_best_lr_at(result, gold_result, base_result, HALF_GAP_STEPS))
            rows.append(row)
    return pd.DataFrame(rows)


def _best_lr_at(result: AttackResult, gold: AttackResult, base: AttackResult | None, step: int
                ) -> dict[str, float]:
    """The attacker's best learning rate *for a given budget*: the headline lr is the best one after the whole
    budget, which can be a small lr that is slow at first; an attacker who may take only ``step`` steps picks
    the lr that is best at ``step``. Returns ``unique_best_at_step{step}`` with its lr, and
    ``unique_best_steps_to_half_gap``: the fewest steps any lr of the grid needs to recover half the gap."""
    frame = result.frame
    if "model" in frame.columns:     # a result run with a gold reference holds gold's rows too
        frame = frame[frame["model"] == "model"]
    if "lr" not in frame.columns or "step" not in frame.columns:
        return {}
    unique = frame[frame["category"] == "unique"]
    at_step = unique[unique["step"] == step]
    values: dict[str, float] = {}
    if len(at_step):
        best = at_step.loc[at_step["accuracy"].astype(float).idxmax()]
        values[f"unique_best_at_step{step}"] = float(best["accuracy"])
        values[f"unique_best_lr_at_step{step}"] = float(best["lr"])
    if base is not None:
        steps = []
        for _, rows in unique.groupby("lr"):
            curve = rows[["step", "category", "accuracy"]]
            metrics = curve_metrics(curve, gold.own("headline_curve"), _before(base), _before(gold))
            steps.append(metrics.get("unique", {}).get("steps_to_half_gap", math.nan))
        finite = [value for value in steps if not math.isnan(value)]
        values["unique_best_steps_to_half_gap"] = min(finite) if finite else math.nan
    return values


def _before(result: AttackResult) -> dict[str, float]:
    facts = result.own("facts")
    return {category: float(category_rows(facts, category)["before"].mean())
            for category in FORGET_CATEGORIES if len(category_rows(facts, category))}


def _cell(row, prefix: str, signed: bool = False) -> str:
    value = row.get(prefix, math.nan)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    low, high = row.get(f"{prefix}_low", math.nan), row.get(f"{prefix}_high", math.nan)
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    if low is not None and not math.isnan(low):
        text += f" [{low:+.2f}, {high:+.2f}]" if signed else f" [{low:.2f}, {high:.2f}]"
    return text


def _short(headline: str) -> str:
    """The headline variant without the budget that every model shares (lr and layer choices stay)."""
    if headline.startswith(("suffix of", "prefix of", "individual")):
        return ""
    return headline.split(", step")[0]


def markdown_table(table: pd.DataFrame) -> str:
    """The table's headline columns as Markdown: accuracies with intervals, differences to gold, retain."""
    header = ["model", "attack", "variant", "forget unique", "shared", "inferred", "unique − gold", "all − gold",
              "retain", "unique @10 steps", "steps to ½ gap"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):
        steps = row.get("unique_steps_to_half_gap", math.nan)
        at_ten = row.get("unique_at_step10", math.nan)
        variant = str(row.get("headline") or "")
        cells = [str(row["model"]), str(row["attack"]), _short(variant), _cell(row, "unique"), _cell(row, "shared"),
                 _cell(row, "inferred"), _cell(row, "unique_vs_gold", True), _cell(row, "all_vs_gold", True),
                 _cell(row, "retain"),
                 "–" if at_ten is None or math.isnan(at_ten) else f"{at_ten:.2f}",
                 "–" if steps is None or math.isnan(steps) else ("never" if math.isinf(steps) else f"{steps:g}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def model_summary(table: pd.DataFrame, relearn: str = "relearn", gold: str = "gold") -> pd.DataFrame:
    """One row per model: what the robustness table says about it in a sentence.

    ``unique_before``: forget-unique accuracy without an attack (with its interval). ``relearn_at_step10`` (and
    its lr) / ``relearn_steps_to_half_gap``: the relearning attack on held-out facts, with the lr an attacker would
    pick for that budget (the best of the grid at step 10; the fewest steps over the grid), so a slow lr that
    wins after 100 steps does not hide a fast recovery; ``back_within_10``: half of the base-gold gap recovered
    by step :data:`HALF_GAP_STEPS` (the seeds' "comes back within ten steps"). ``strongest_attack``: the attack (and
    its variant) whose forget-unique accuracy exceeds gold's under the same attack the most (``unique_vs_gold``,
    paired over the same facts, with its interval): an attack that also teaches gold the answer does not count as
    recovery (GCG and the soft prompt run on a sample of facts; the difference is paired on that sample)."""
    rows = []
    for model_id, rows_of_model in table.groupby("model", sort=False):
        none = rows_of_model[rows_of_model["attack"] == "none"]
        attacked = rows_of_model[(rows_of_model["attack"] != "none") & rows_of_model["unique_vs_gold"].notna()]
        row: dict[str, Any] = {"model": model_id}
        for suffix in ("", "_low", "_high"):
            row[f"unique_before{suffix}"] = float(none[f"unique{suffix}"].iloc[0]) if len(none) else math.nan
        curve = rows_of_model[rows_of_model["attack"] == relearn]

        def first(column: str) -> float:
            return float(curve[column].iloc[0]) if len(curve) and column in curve else math.nan

        # the attacker's best lr for each budget (``_best_lr_at``); the headline lr's values when it is absent
        at_ten = first(f"unique_best_at_step{HALF_GAP_STEPS}")
        at_ten = first(f"unique_at_step{HALF_GAP_STEPS}") if not _finite(at_ten) else at_ten
        steps = first("unique_best_steps_to_half_gap")
        steps = first("unique_steps_to_half_gap") if not _finite(steps) else steps
        row.update(relearn_at_step10=at_ten, relearn_lr_at_step10=first(f"unique_best_lr_at_step{HALF_GAP_STEPS}"),
                   relearn_steps_to_half_gap=steps,
                   back_within_10=(steps <= HALF_GAP_STEPS) if _finite(steps) else None)
        if len(attacked) and model_id != gold:     # gold is the reference: its differences are 0 by definition
            best = attacked.loc[attacked["unique_vs_gold"].astype(float).idxmax()]
            row.update(strongest_attack=str(best["attack"]), strongest_variant=_short(str(best.get("headline") or "")),
                       strongest_unique=float(best["unique"]), strongest_unique_vs_gold=float(best["unique_vs_gold"]),
                       strongest_unique_vs_gold_low=float(best["unique_vs_gold_low"]),
                       strongest_unique_vs_gold_high=float(best["unique_vs_gold_high"]),
                       strongest_unique_vs_gold_p=float(best["unique_vs_gold_p"]))
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(summary: pd.DataFrame) -> str:
    """``model_summary`` as Markdown."""
    header = ["model", "forget unique, no attack", "relearning: unique @10 steps (lr)", "steps to ½ gap",
              f"back within {HALF_GAP_STEPS} steps", "strongest attack (unique − gold)", "its unique − gold"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dict("records"):
        steps = row.get("relearn_steps_to_half_gap", math.nan)
        back = row.get("back_within_10")
        attack = row.get("strongest_attack")
        attack_cell = "–" if not isinstance(attack, str) else (
            attack + (f" ({row['strongest_variant']})" if row.get("strongest_variant") else ""))
        if isinstance(attack, str) and not row.get("strongest_unique_vs_gold_low", math.nan) > 0:
            attack_cell = f"none beats gold (best: {attack_cell})"   # its interval of the difference reaches 0
        lr = row.get("relearn_lr_at_step10")
        cells = [str(row["model"]), _cell(row, "unique_before"),
                 _cell(row, "relearn_at_step10") + (f" ({lr:g})" if _finite(lr) else ""),
                 "–" if not _finite(steps) else ("never" if math.isinf(steps) else f"{steps:g}"),
                 "–" if back is None or (isinstance(back, float) and math.isnan(back)) else ("yes" if back else "no"),
                 attack_cell,
                 "–" if not isinstance(attack, str) else (_cell(row, "strongest_unique_vs_gold", True)
                                                          + f" (p {row['strongest_unique_vs_gold_p']:.3g})")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_robustness_table(table: pd.DataFrame, directory: str | os.PathLike, name: str = "robustness"
                           ) -> tuple[Path, Path]:
    """``directory/<name>.csv`` (every column), ``<name>_summary.csv`` (``model_summary``) and ``<name>.md``
    (headline columns, then the per-model summary), atomically."""
    from mechunlearn.storage import atomic_write_text

    directory = Path(directory)
    csv_path = atomic_write_text(directory / f"{name}.csv", table.to_csv(index=False))
    summary = model_summary(table)
    atomic_write_text(directory / f"{name}_summary.csv", summary.to_csv(index=False))
    text = (markdown_table(table) + "\n" + f"Per model: relearning on held-out facts with the lr an attacker would "
            f"pick for the budget (the best of the grid at step {HALF_GAP_STEPS}; the fewest steps any lr needs to "
            f"recover half the base-gold gap; back within {HALF_GAP_STEPS} steps = that number is <= "
            f"{HALF_GAP_STEPS}), and the attack that lifts forget-unique accuracy above gold's under the same attack "
            "the most:\n\n" + summary_markdown(summary))
    md_path = atomic_write_text(directory / f"{name}.md", text)
    return csv_path, md_path

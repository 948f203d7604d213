"""``evaluate_model``: every eval of this package on one model, as one flat JSON-able dict.

With a world, everything comes from the world (forget / retain texts and held-out texts, cloze probes, the
4-way MCQ items of both domains, Truth-Ratio items, forget-specific entities); the model is scored with its OWN
tokenizer, and a world whose tokenizer holds another vocabulary is refused (``TokenizerMismatch``). Without a
world, from the texts and MCQ files (or item lists) given. docs/evals.md defines every metric.

Values follow :mod:`mechunlearn.numeric`: ``None`` = not computed (no input for it), NaN = undefined (e.g. a
Truth Ratio with two infinite NLLs, a mean over zero probes).

Keys (``{domain}`` is forget / retain, ``{category}`` unique / shared / inferred / all, ``{set}`` forget / general):

- ``forget_nll``, ``retain_nll``: mean NLL per token of the forget / retain texts (the world's training texts
  of each side unless ``forget_texts`` / ``retain_texts`` are given);
  with a world also ``forget_heldout_nll``, ``retain_heldout_nll``, ``filler_heldout_nll`` (never-trained
  renderings of the domain's facts; never-trained filler);
- ``cloze/{domain}/{category}``, ``cloze_count/{domain}/{category}``: exact greedy cloze accuracy (world);
- ``mcq_{set}_acc``, ``mcq_{set}_chance``, ``mcq_{set}_n``, ``mcq_{set}_format`` ("letters" | "cloze");
  ``mcq/{domain}/{category}`` (world items); ``mcq_{set}_by_subject`` / ``mcq_{set}_subject_count``
  (``{subject: accuracy}`` / ``{subject: items}``, when the items name subjects). With a world the general set
  is the retain-domain MCQ (the MMLU analogue) unless ``mcq_general`` is given;
- ``truth_ratio/forget/{category}`` = mean(min(R, 1/R)), ``truth_ratio/retain/{category}`` = mean(max(0, 1-R))
  over the defined ratios; ``truth_ratio_undefined/{domain}``: how many ratios were undefined;
  ``forget_truth_ratios``: the forget items' R values in item order (pass a gold model's as
  ``gold_truth_ratios``);
- ``forget_quality`` (KS p-value vs ``gold_truth_ratios``, on the facts defined on both sides),
  ``forget_quality_ks``, ``forget_quality_n``, ``forget_quality_dropped`` (``{"undefined", "missing"}``) and
  ``forget_quality_reason`` (why it is NaN; None otherwise);
- ``familiarity_completion``, ``familiarity_completion_answer``, ``familiarity_n_prompts``, ``familiarity_prob``,
  ``familiarity_logprob``, ``familiarity_n_probes`` (see :mod:`mechunlearn.evals.familiarity`);
- ``intervals``: ``{key: Interval.to_dict()}``, a 95 % bootstrap interval over items (facts, questions, texts,
  prompts) for every summary number above (see :mod:`mechunlearn.evals.intervals`);
- ``generations``: ``[{"kind", "prompt", "completion"}]`` greedy samples on fixed prompts;
- ``collapse`` (``{"collapsed", "reasons", ...}``, judged on general MCQ accuracy and the retain / filler
  generations) and ``collapsed`` (its boolean);
- ``forget_sources``, ``eval_seconds``.

``evaluate_model(..., return_tables=True)`` returns an :class:`Evaluation`: these metrics and the per-item
tables (``item_tables``' cloze / mcq / truth_ratio, plus nll and familiarity), which ``Evaluation.save`` writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from mechunlearn.data import load_texts
from mechunlearn.evals.familiarity import familiarity_completion, familiarity_probability_table
from mechunlearn.evals.generation import detect_collapse, generate_samples
from mechunlearn.evals.intervals import forget_quality_interval, mean_interval, pooled_ratio_interval, rows_interval
from mechunlearn.evals.items import item_tables, resolve_eval_tokenizer, summarize_items
from mechunlearn.evals.nll import nll_table
from mechunlearn.evals.truth_ratio import paired_forget_quality, truth_ratios
from mechunlearn.numeric import to_python

__all__ = ["evaluate_model", "Evaluation", "default_prompts", "CATEGORIES"]

CATEGORIES = ("unique", "shared", "inferred", "all")


def _subsample(texts: Sequence[str], limit: int | None) -> list[str]:
    """At most ``limit`` texts, evenly spaced over the list (deterministic)."""
    texts = list(texts)
    if limit is None or len(texts) <= limit:
        return texts
    return [texts[i * len(texts) // limit] for i in range(limit)]


def _texts(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return load_texts(value)
    return list(value)


def _prefix(text: str, words: int = 5) -> str:
    return " ".join(text.split()[:words])


def default_prompts(world=None, forget_sources=None, *, forget_texts=None, retain_texts=None,
                    per_kind: int = 2) -> list[tuple[str, str]]:
    """Fixed ``(kind, prompt)`` pairs for greedy samples: forget / retain cloze prompts and held-out filler
    openings (world), or the openings of the first forget / retain texts (no world)."""
    prompts: list[tuple[str, str]] = []
    if world is not None:
        forget = [p for p in world.cloze_probes("forget", forget_sources) if p.category == "unique"]
        forget = forget or world.cloze_probes("forget", forget_sources)
        prompts += [("forget", p.prompt) for p in forget[:per_kind]]
        prompts += [("retain", p.prompt) for p in world.cloze_probes("retain", forget_sources)[:per_kind]]
        prompts += [("filler", _prefix(t, 4)) for t in world.eval_texts("filler")[:per_kind]]
    else:
        prompts += [("forget", _prefix(t)) for t in (forget_texts or [])[:per_kind]]
        prompts += [("retain", _prefix(t)) for t in (retain_texts or [])[:per_kind + 1]]
    return [(kind, prompt) for kind, prompt in prompts if prompt]


def _gold_ratios(gold, forget_items, tokenizer, batch_size: int = 32):
    """``gold_truth_ratios`` as a list of R values (NaN = undefined, None = missing): given values / a
    truth_ratios table / a dict from evaluate_model (read back from JSON or not) / a gold model (scored here on
    the same forget items with its own tokenizer)."""
    if gold is None:
        return None
    if isinstance(gold, dict):
        if "forget_truth_ratios" not in gold:
            raise ValueError("gold_truth_ratios is a dict without 'forget_truth_ratios': pass the dict "
                             "evaluate_model returned for the gold model (with a world), or its values")
        gold = gold["forget_truth_ratios"]
        if gold is None:
            raise ValueError("gold_truth_ratios holds no forget Truth Ratios (forget_truth_ratios is null: the gold "
                             "model was evaluated without a world); evaluate it on the same world")
    if hasattr(gold, "parameters") and callable(gold.parameters):
        if not forget_items:
            return None
        return truth_ratios(gold, tokenizer, forget_items, batch_size)["R"].tolist()
    if hasattr(gold, "columns"):
        gold = gold[gold["domain"] == "forget"]["R"] if "domain" in gold.columns else gold["R"]
    return list(np.asarray(gold, dtype=object).ravel())


@dataclass
class Evaluation:
    """``metrics`` (``evaluate_model``'s dict) and ``tables`` (per-item DataFrames: cloze, mcq, truth_ratio, nll,
    familiarity_completion, familiarity_probability)."""

    metrics: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def write(self, directory: str | os.PathLike) -> Path:
        """``metrics.json`` and one ``{name}.csv`` per non-empty table into ``directory`` (e.g. a study step's
        staging folder), each file written atomically."""
        from mechunlearn.storage import atomic_write_text, write_json

        directory = Path(directory)
        write_json(directory / "metrics.json", self.metrics)
        for name, table in self.tables.items():
            if table is not None and not table.empty:
                atomic_write_text(directory / f"{name}.csv", table.to_csv(index=False))
        return directory

    def save(self, directory: str | os.PathLike) -> Path:
        """``write`` into a fresh ``directory``, atomically as a whole (an existing one is replaced)."""
        from mechunlearn.storage import atomic_directory

        with atomic_directory(directory) as staging:
            self.write(staging)
        return Path(directory)


def _nll_and_interval(model, tokenizer, texts, max_texts, batch_size, max_length):
    texts = _subsample(texts or [], max_texts)
    if not texts:
        return None, None, None
    table = nll_table(model, tokenizer, texts, batch_size, max_length)
    total = float(table["n_tokens"].sum())
    if total == 0:
        return float("nan"), None, table
    return (float(table["nll_sum"].sum()) / total, pooled_ratio_interval(table["nll_sum"], table["n_tokens"]),
            table)


def evaluate_model(model, world=None, *, forget_sources=None, tokenizer=None, forget_texts=None, retain_texts=None,
                   mcq_forget=None, mcq_general=None, gold_truth_ratios=None, max_texts: int | None = None,
                   forget_entities: Sequence[str] | None = None, generation_prompts: Sequence[str] | None = None,
                   max_new_tokens: int = 20, familiarity_tokens: int = 8, mcq_prompt_format: str | None = None,
                   mcq_normalize: bool = False, mcq_format: str | None = "auto", mcq_description: str | None = None,
                   batch_size: int = 32, max_length: int = 512, reference_retain_nll: float | None = None,
                   return_tables: bool = False):
    """Evaluate ``model`` (HookedTransformer or transformers causal LM) and return the flat dict described in
    this module's docstring (an :class:`Evaluation` with the per-item tables too when ``return_tables``).

    ``tokenizer``: only for a model without its own (a transformers model); with one, it must hold the model's
    vocabulary. ``forget_texts`` / ``retain_texts``: lists or .txt / .jsonl paths (override the world's);
    ``mcq_forget`` / ``mcq_general``: ``MCQItem`` lists or WMDP / MMLU .jsonl paths (override the world's);
    ``mcq_format``: ``"auto"`` (lm-eval's ``"letters"`` WMDP / MMLU prompt for given items, ``"cloze"`` for the
    world's), ``"letters"`` or ``"cloze"``; ``mcq_prompt_format`` (cloze only; default: the world's cloze stem for
    world items, ``"Question: {question}\\nAnswer:"`` for given ones); ``mcq_description``: None = lm-eval's
    description line for each item's subject, or one string for all; ``gold_truth_ratios``: the gold-standard
    model's forget Truth Ratios (values, a ``truth_ratios`` table, the dict ``evaluate_model`` returned for it, or
    the gold model itself) for ``forget_quality``; ``max_texts``: cap on texts per NLL set (evenly spaced);
    ``forget_entities``: forget-specific names (default: the world's); ``generation_prompts``: prompts for the
    greedy samples (default: ``default_prompts``); ``reference_retain_nll``: the base model's retain NLL, for
    the NLL criterion of collapse detection.
    """
    started = time.perf_counter()
    tokenizer = resolve_eval_tokenizer(model, world, tokenizer)
    result: dict = {}
    intervals: dict = {}
    tables: dict[str, pd.DataFrame] = {}
    forget = list(world.resolve_forget(forget_sources)) if world is not None else (
        None if forget_sources is None else list(forget_sources))
    result["forget_sources"] = forget

    # -------------------------------------------------------------------------------------------- NLL
    forget_set = _texts(forget_texts)
    retain_set = _texts(retain_texts)
    nll_sets = {"forget_nll": forget_set, "retain_nll": retain_set}
    if world is not None:
        forget_set = forget_set if forget_set is not None else world.forget_texts(forget)
        retain_set = retain_set if retain_set is not None else world.retain_texts(forget)
        nll_sets = {"forget_nll": forget_set, "retain_nll": retain_set,
                    "forget_heldout_nll": world.eval_texts("forget", forget),
                    "retain_heldout_nll": world.eval_texts("retain", forget),
                    "filler_heldout_nll": world.eval_texts("filler")}
    nll_parts = []
    for key, texts in nll_sets.items():
        result[key], interval, table = _nll_and_interval(model, tokenizer, texts, max_texts, batch_size, max_length)
        if interval is not None:
            intervals[key] = interval
        if table is not None:
            nll_parts.append(table.assign(set=key.removesuffix("_nll")))
    tables["nll"] = pd.concat(nll_parts, ignore_index=True) if nll_parts else pd.DataFrame()

    # --------------------------------------------------------------- cloze, MCQ and Truth Ratio (per item)
    tables.update(item_tables(model, world, forget_sources=forget, tokenizer=tokenizer, mcq_forget=mcq_forget,
                              mcq_general=mcq_general, mcq_format=mcq_format, mcq_prompt_format=mcq_prompt_format,
                              mcq_normalize=mcq_normalize, mcq_description=mcq_description, batch_size=batch_size))
    summary, summary_intervals = summarize_items(tables)
    result.update(summary)
    intervals.update(summary_intervals)
    ratios = tables["truth_ratio"]
    forget_ratios = ratios[ratios["domain"] == "forget"]
    result["forget_truth_ratios"] = forget_ratios["R"].tolist() if world is not None else None

    # ------------------------------------------------------------------------------------ forget quality
    for key in ("forget_quality", "forget_quality_ks", "forget_quality_n", "forget_quality_dropped",
                "forget_quality_reason"):
        result[key] = None
    forget_items = world.truth_ratio_items("forget", forget) if world is not None else []
    gold = _gold_ratios(gold_truth_ratios, forget_items, tokenizer, batch_size)
    if gold is not None and result["forget_truth_ratios"]:
        quality = paired_forget_quality(result["forget_truth_ratios"], gold)
        result["forget_quality"], result["forget_quality_ks"] = quality.p_value, quality.ks
        result["forget_quality_n"] = quality.n
        result["forget_quality_dropped"] = {"undefined": quality.dropped_undefined,
                                            "missing": quality.dropped_missing}
        result["forget_quality_reason"] = quality.reason
        if quality.n:
            mine, theirs = quality.unlearned, quality.gold
            intervals["forget_quality"] = forget_quality_interval(mine, theirs)
            intervals["forget_quality_ks"] = rows_interval(
                quality.n, lambda rows: scipy_stats.ks_2samp(mine[rows], theirs[rows]).statistic)

    # ------------------------------------------------------------------------------------ familiarity
    entities = list(forget_entities) if forget_entities is not None else (
        world.forget_entities(forget) if world is not None else None)
    for key in ("familiarity_completion", "familiarity_completion_answer", "familiarity_n_prompts",
                "familiarity_prob", "familiarity_logprob", "familiarity_n_probes"):
        result[key] = None
    if entities:
        if world is not None:
            familiarity_prompts = world.cloze_probes("forget", forget)
        else:
            familiarity_prompts = [_prefix(t, max(1, len(t.split()) // 2)) for t in _subsample(forget_set or [], 64)]
            familiarity_prompts = [p for p in familiarity_prompts if p]
        if familiarity_prompts:
            score, table = familiarity_completion(model, tokenizer, familiarity_prompts, entities,
                                                  max_new_tokens=familiarity_tokens)
            answer_aware = table["familiar"] | table["mentions_answer"]
            result["familiarity_completion"] = score
            result["familiarity_completion_answer"] = float(answer_aware.mean())
            result["familiarity_n_prompts"] = len(table)
            intervals["familiarity_completion"] = mean_interval(table["familiar"].astype(float))
            intervals["familiarity_completion_answer"] = mean_interval(answer_aware.astype(float))
            tables["familiarity_completion"] = table
        if world is not None:
            probability = familiarity_probability_table(model, tokenizer, world.cloze_probes("forget", forget),
                                                        entities, batch_size)
            tables["familiarity_probability"] = probability
            result["familiarity_n_probes"] = len(probability)
            # a mean over no probe is undefined (NaN), not "not computed"
            result["familiarity_prob"] = float(probability["prob"].mean()) if len(probability) else float("nan")
            result["familiarity_logprob"] = (float(probability["logprob"].mean()) if len(probability)
                                             else float("nan"))
            if len(probability):
                intervals["familiarity_prob"] = mean_interval(probability["prob"])
                intervals["familiarity_logprob"] = mean_interval(probability["logprob"])

    # ------------------------------------------------------------------------- generations and collapse
    if generation_prompts is not None:
        pairs = [("given", p) for p in generation_prompts]
    else:
        pairs = default_prompts(world, forget, forget_texts=forget_set, retain_texts=retain_set)
    completions = generate_samples(model, tokenizer, [p for _, p in pairs], max_new_tokens) if pairs else []
    result["generations"] = [{"kind": kind, "prompt": prompt, "completion": completion}
                             for (kind, prompt), completion in zip(pairs, completions)]
    judged = [g["completion"] for g in result["generations"] if g["kind"] != "forget"]
    result["collapse"] = detect_collapse(accuracy=result["mcq_general_acc"],
                                         chance=result["mcq_general_chance"] or 0.25, generations=judged,
                                         retain_nll=result["retain_nll"], reference_retain_nll=reference_retain_nll)
    result["collapsed"] = result["collapse"]["collapsed"]
    result["intervals"] = intervals
    result["eval_seconds"] = time.perf_counter() - started
    metrics = to_python(result)
    return Evaluation(metrics, tables) if return_tables else metrics

"""``evaluate_model``: every eval of this package on one model, as one flat JSON-able dict.

With a world, everything comes from the world (forget / retain texts and held-out texts, cloze probes, the
4-way MCQ items of both domains, Truth-Ratio items, forget-specific entities). Without one, from the texts and
MCQ files (or item lists) given; what cannot be computed is ``None``.

Keys (``None`` when not computable; ``{domain}`` is forget / retain, ``{category}`` unique / shared / inferred /
all):

- ``forget_nll``, ``retain_nll``: mean NLL per token of the forget / retain texts (the world's training texts
  of each side unless ``forget_texts`` / ``retain_texts`` are given);
  with a world also ``forget_heldout_nll``, ``retain_heldout_nll``, ``filler_heldout_nll`` (never-trained
  renderings of the domain's facts; never-trained filler);
- ``cloze/{domain}/{category}``, ``cloze_count/{domain}/{category}``: exact greedy cloze accuracy (world);
- ``mcq_forget_acc``, ``mcq_general_acc`` and their ``..._chance``; ``mcq/{domain}/{category}`` (world items).
  With a world the general set is the retain-domain MCQ (the MMLU analogue) unless ``mcq_general`` is given;
- ``truth_ratio/forget/{category}`` = mean(min(R, 1/R)), ``truth_ratio/retain/{category}`` = mean(max(0, 1-R));
  ``forget_truth_ratios``: the forget items' R values in item order (pass a gold model's as
  ``gold_truth_ratios``);
- ``forget_quality`` (KS p-value vs ``gold_truth_ratios``), ``forget_quality_ks``;
- ``familiarity_completion``, ``familiarity_completion_answer``, ``familiarity_n_prompts``, ``familiarity_prob``,
  ``familiarity_logprob``, ``familiarity_n_probes`` (see :mod:`mechunlearn.evals.familiarity`);
- ``generations``: ``[{"kind", "prompt", "completion"}]`` greedy samples on fixed prompts;
- ``collapse`` (``{"collapsed", "reasons", ...}``, judged on general MCQ accuracy and the retain / filler
  generations) and ``collapsed`` (its boolean);
- ``forget_sources``, ``eval_seconds``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from mechunlearn.data import load_mcq, load_texts
from mechunlearn.evals.cloze import cloze_table, summarize_cloze_table
from mechunlearn.evals.familiarity import familiarity_completion, familiarity_probability
from mechunlearn.evals.generation import detect_collapse, generate_samples
from mechunlearn.evals.mcq import CLOZE_FORMAT, QA_FORMAT, mcq_chance, mcq_table
from mechunlearn.evals.nll import nll_per_token, resolve_tokenizer
from mechunlearn.numeric import to_python
from mechunlearn.evals.truth_ratio import forget_quality_test, truth_ratio_stats, truth_ratios

__all__ = ["evaluate_model", "default_prompts", "CATEGORIES"]

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


def _mcq(value, domain: str):
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return load_mcq(value, domain=domain)
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
    """``gold_truth_ratios`` as R values: given values / a truth_ratios table / a dict from evaluate_model /
    a gold model (scored here on the same forget items)."""
    if gold is None:
        return None
    if isinstance(gold, dict):
        gold = gold["forget_truth_ratios"]
    if hasattr(gold, "parameters") and callable(gold.parameters):
        if not forget_items:
            return None
        return truth_ratios(gold, tokenizer, forget_items, batch_size)["R"].to_numpy()
    if hasattr(gold, "columns"):
        gold = gold[gold["domain"] == "forget"]["R"] if "domain" in gold.columns else gold["R"]
    return np.asarray([np.nan if v is None else v for v in gold], dtype=float)


def evaluate_model(model, world=None, *, forget_sources=None, tokenizer=None, forget_texts=None, retain_texts=None,
                   mcq_forget=None, mcq_general=None, gold_truth_ratios=None, max_texts: int | None = None,
                   forget_entities: Sequence[str] | None = None, generation_prompts: Sequence[str] | None = None,
                   max_new_tokens: int = 20, familiarity_tokens: int = 8, mcq_prompt_format: str | None = None,
                   mcq_normalize: bool = False, batch_size: int = 32, max_length: int = 512,
                   reference_retain_nll: float | None = None) -> dict:
    """Evaluate ``model`` (HookedTransformer or transformers causal LM) and return the flat dict described in
    this module's docstring.

    ``forget_texts`` / ``retain_texts``: lists or .txt / .jsonl paths (override the world's);
    ``mcq_forget`` / ``mcq_general``: ``MCQItem`` lists or WMDP / MMLU .jsonl paths (override the world's);
    they are laid out as ``mcq_prompt_format`` (default: the world's cloze stem for world items,
    ``"Question: {question}\\nAnswer:"`` for given ones); ``gold_truth_ratios``: the gold-standard model's forget
    Truth Ratios (values, a ``truth_ratios`` table, the dict ``evaluate_model`` returned for it, or the gold
    model itself) for ``forget_quality``; ``max_texts``: cap on texts per NLL set (evenly spaced);
    ``forget_entities``: forget-specific names (default: the world's); ``generation_prompts``: prompts for the
    greedy samples (default: ``default_prompts``); ``reference_retain_nll``: the base model's retain NLL, for
    the NLL criterion of collapse detection.
    """
    started = time.perf_counter()
    if tokenizer is None and world is not None:
        tokenizer = world.tokenizer
    tokenizer = resolve_tokenizer(model, tokenizer)
    result: dict = {}
    forget = list(world.resolve_forget(forget_sources)) if world is not None else (
        None if forget_sources is None else list(forget_sources))
    result["forget_sources"] = forget

    # -------------------------------------------------------------------------------------------- NLL
    forget_set = _texts(forget_texts)
    retain_set = _texts(retain_texts)
    if world is not None:
        forget_set = forget_set if forget_set is not None else world.forget_texts(forget)
        retain_set = retain_set if retain_set is not None else world.retain_texts(forget)

    def nll(texts):
        texts = _subsample(texts or [], max_texts)
        return nll_per_token(model, tokenizer, texts, batch_size, max_length) if texts else None

    result["forget_nll"] = nll(forget_set)
    result["retain_nll"] = nll(retain_set)
    if world is not None:
        result["forget_heldout_nll"] = nll(world.eval_texts("forget", forget))
        result["retain_heldout_nll"] = nll(world.eval_texts("retain", forget))
        result["filler_heldout_nll"] = nll(world.eval_texts("filler"))

    # ------------------------------------------------------------------------------------------ cloze
    probes = world.cloze_probes(None, forget) if world is not None else []
    if probes:
        summary = summarize_cloze_table(cloze_table(model, tokenizer, probes, batch_size))
        for row in summary.itertuples():
            result[f"cloze/{row.domain}/{row.category}"] = float(row.accuracy)
            result[f"cloze_count/{row.domain}/{row.category}"] = int(row.count)

    # -------------------------------------------------------------------------------------------- MCQ
    given_forget, given_general = _mcq(mcq_forget, "forget"), _mcq(mcq_general, "general")
    for key, given, world_domain in (("forget", given_forget, "forget"), ("general", given_general, "retain")):
        items = given if given is not None else (world.mcq_items(world_domain, forget) if world is not None else None)
        result[f"mcq_{key}_acc"] = result[f"mcq_{key}_chance"] = None
        if not items:
            continue
        prompt_format = mcq_prompt_format or (QA_FORMAT if given is not None else CLOZE_FORMAT)
        table = mcq_table(model, tokenizer, items, normalize=mcq_normalize, prompt_format=prompt_format,
                          batch_size=batch_size)
        result[f"mcq_{key}_acc"] = float(table["correct"].mean())
        result[f"mcq_{key}_chance"] = mcq_chance(items)
        if given is None:
            for category, group in table.groupby("category", sort=True):
                result[f"mcq/{world_domain}/{category}"] = float(group["correct"].mean())
            result[f"mcq/{world_domain}/all"] = float(table["correct"].mean())

    # ------------------------------------------------------------------------------------ Truth Ratio
    forget_items = world.truth_ratio_items("forget", forget) if world is not None else []
    result["forget_truth_ratios"] = None
    if world is not None:
        ratios = truth_ratios(model, tokenizer, world.truth_ratio_items(None, forget), batch_size)
        for domain in ("forget", "retain"):
            for category, value in truth_ratio_stats(ratios, domain).items():
                result[f"truth_ratio/{domain}/{category}"] = value
        result["forget_truth_ratios"] = ratios[ratios["domain"] == "forget"]["R"].tolist()
    result["forget_quality"] = result["forget_quality_ks"] = None
    gold = _gold_ratios(gold_truth_ratios, forget_items, tokenizer, batch_size)
    if gold is not None and result["forget_truth_ratios"]:
        mine = np.asarray(result["forget_truth_ratios"], dtype=float)
        if len(gold) != len(mine):
            raise ValueError(f"gold_truth_ratios holds {len(gold)} values but the forget set has {len(mine)} "
                             "Truth-Ratio items: compute both on the same world and forget sources")
        result["forget_quality"], result["forget_quality_ks"] = forget_quality_test(mine, gold)

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
            result["familiarity_completion"] = score
            result["familiarity_completion_answer"] = float((table["familiar"] | table["mentions_answer"]).mean())
            result["familiarity_n_prompts"] = len(table)
        if world is not None:
            probability = familiarity_probability(model, tokenizer, world.cloze_probes("forget", forget), entities,
                                                  batch_size)
            result["familiarity_prob"] = probability["prob"]
            result["familiarity_logprob"] = probability["logprob"]
            result["familiarity_n_probes"] = probability["count"]

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
    result["eval_seconds"] = time.perf_counter() - started
    return to_python(result)

"""Probes of every fact: cloze prompts, 4-way multiple choice, Truth-Ratio items.

The raw probe of a fact (prompts, choices, answers) does not depend on the forget target; its domain and
category do, and are attached when a probe is asked for (:func:`cloze_probe`, :func:`mcq_item`,
:func:`truth_ratio_item`).

Formats, chosen so that a tiny model scored by log-likelihood can show what it knows:

- cloze: ``prompt`` = the cloze template's prefix ("Aldric lives in"), ``answer`` = " Varn".
- MCQ: ``question`` = the same cloze stem, ``choices`` = bare object names ("Varn", ...): score
  ``question + " " + choice``. Distractors are other objects of the relation's object group, taken from the
  same cast as the true object where possible (so a model that never saw the cast cannot tell them apart).
- Truth Ratio: ``question`` = "Where does Aldric live?\nAldric lives in", ``paraphrased_answer`` = " the town
  of Varn", ``perturbed_answers`` = the same form with wrong objects. (Documents put one sentence per line, so a
  name opening a line is tokenized as it is in training: ByteLevel BPE gives "Aldric" and " Aldric" different
  tokens.)
"""

from __future__ import annotations

from typing import Any

from mechunlearn.data import ClozeProbe, Fact, MCQItem, TruthRatioItem
from mechunlearn.world.generator import COLOURS, MATERIALS, RELATIONS, Entity, rng_for
from mechunlearn.world.render import TEMPLATES

__all__ = ["probe_records", "cloze_probe", "mcq_item", "truth_ratio_item"]

N_CHOICES = 4


def _distractor_pool(fact: Fact, groups: dict[str, list[Entity]], home_of: dict[str, str]) -> list[str]:
    group = RELATIONS[fact.relation][1]
    if group == "material":
        return [m for m in MATERIALS if m != fact.object]
    if group == "colour":
        return [c for c in COLOURS if c != fact.object]
    excluded = {fact.object, fact.subject}
    home = home_of.get(fact.object, "")
    same = [e.name for e in groups[group] if e.home == home and e.name not in excluded]
    rest = [e.name for e in groups[group] if e.home != home and e.name not in excluded]
    return same + rest


def probe_records(facts: list[Fact], entities: list[Entity], seed: int, n_perturbed: int) -> list[dict[str, Any]]:
    """One JSON-able record per fact with its cloze, MCQ and Truth-Ratio material."""
    groups: dict[str, list[Entity]] = {}
    for entity in entities:
        groups.setdefault(entity.group, []).append(entity)
    home_of = {e.name: e.home for e in entities}
    n_wrong = max(N_CHOICES - 1, n_perturbed)
    records = []
    for fact in facts:
        templates = TEMPLATES[fact.relation]
        rng = rng_for(seed, "distractors", fact.fact_id)
        pool = _distractor_pool(fact, groups, home_of)
        n_same = sum(1 for name in pool if home_of.get(name, "") == home_of.get(fact.object, ""))
        # same-cast distractors first (shuffled), then the others (shuffled)
        head, tail = pool[:n_same], pool[n_same:]
        rng.shuffle(head)
        rng.shuffle(tail)
        wrong = (head + tail)[:n_wrong]
        if len(wrong) < n_wrong:
            raise ValueError(f"fact {fact.fact_id}: only {len(wrong)} distractors for relation {fact.relation}")
        choices = [fact.object, *wrong[: N_CHOICES - 1]]
        rng.shuffle(choices)
        prompt = templates.cloze_prompt(fact.subject)
        stem = templates.answer_stem.format(s=fact.subject)
        records.append({
            "fact_id": fact.fact_id,
            "cloze_prompt": prompt,
            "cloze_answer": " " + fact.object,
            "mcq_question": prompt,
            "mcq_choices": choices,
            "mcq_answer": choices.index(fact.object),
            "tr_question": templates.question.format(s=fact.subject) + "\n" + stem,
            "tr_paraphrased": " " + templates.answer_form.format(o=fact.object),
            "tr_perturbed": [" " + templates.answer_form.format(o=name) for name in wrong[:n_perturbed]],
        })
    return records


def cloze_probe(record: dict[str, Any], category: str, domain: str) -> ClozeProbe:
    return ClozeProbe(prompt=record["cloze_prompt"], answer=record["cloze_answer"], fact_id=record["fact_id"],
                      category=category, domain=domain)


def mcq_item(record: dict[str, Any], category: str, domain: str) -> MCQItem:
    return MCQItem(question=record["mcq_question"], choices=tuple(record["mcq_choices"]),
                   answer=int(record["mcq_answer"]), domain=domain, category=category, fact_id=record["fact_id"])


def truth_ratio_item(record: dict[str, Any], category: str, domain: str) -> TruthRatioItem:
    return TruthRatioItem(question=record["tr_question"], paraphrased_answer=record["tr_paraphrased"],
                          perturbed_answers=tuple(record["tr_perturbed"]), fact_id=record["fact_id"],
                          category=category, domain=domain)

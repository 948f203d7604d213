"""What an attack is given: the facts to recover (and how to score them), the texts it may train on.

``AttackData`` holds one :class:`FactItem` per fact of both domains: its prompt and true answer (the target of
the suffix and soft-prompt attacks), the probes that score it (cloze, 4-way MCQ, Truth Ratio), the texts that
state it (what relearning may train on), and its fold ``group``.

* ``AttackData.from_world(world, forget_sources)``: the embedded world. Headline metric: exact greedy cloze.
  A fact's training texts are its renderings with every training template of its relation
  (``mechunlearn.world.render.TEMPLATES``); inferred facts are stated nowhere and have none. Facts that give each
  other away share a group (a derived fact and its premises, ``student_of`` and the inverse ``mentor_of``, two
  facts about the same pair of names), so a relearning fold never trains on a fact that reveals a held-out one.
* ``AttackData.from_files(forget_mcq=..., general_mcq=..., forget_texts=..., retain_texts=...)``: a user's WMDP /
  MMLU-style files. Every MCQ item is a fact (category ``"all"``); headline metric: MCQ accuracy; the training
  text of an item is its question followed by its correct answer.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mechunlearn.attacks.base import AttackError
from mechunlearn.data import ClozeProbe, MCQItem, TruthRatioItem

__all__ = ["FactItem", "AttackData", "split_folds", "assert_no_leak", "stating_lines"]


@dataclass(frozen=True)
class FactItem:
    """One fact: ``prompt`` + ``answer`` is what the suffix attacks aim at (answer with its leading space)."""

    fact_id: str
    domain: str  # forget | retain
    category: str  # unique | shared | inferred (world) or "all" (users' items)
    prompt: str
    answer: str
    cloze: ClozeProbe | None = None
    mcq: MCQItem | None = None
    truth_ratio: TruthRatioItem | None = None
    texts: tuple[str, ...] = ()  # sentences that state the fact (empty: stated nowhere)
    group: str = ""  # facts of one group always land in the same fold
    names: tuple[str, ...] = ()  # subject and object: a line naming both states (or gives away) the fact


@dataclass
class AttackData:
    """Facts, texts and the headline metric (``"cloze"`` or ``"mcq"``) of one attack setting."""

    items: list[FactItem]
    forget_texts: list[str]
    retain_texts: list[str]
    metric: str = "cloze"
    mcq_prompt_format: str = "{question}"
    source: dict[str, Any] = field(default_factory=dict)
    sentences_per_document: tuple[int, int] = (3, 6)

    def __post_init__(self) -> None:
        if self.metric not in ("cloze", "mcq"):
            raise AttackError(f"unknown headline metric {self.metric!r}: use 'cloze' or 'mcq'")
        if not self.forget_items():
            raise AttackError("the attack data holds no forget-target fact to recover; give a world with a forget "
                              "target, or a forget MCQ file")
        seen = set()
        for item in self.items:
            if item.fact_id in seen:
                raise AttackError(f"fact id {item.fact_id!r} occurs twice in the attack data; fact ids must be unique")
            seen.add(item.fact_id)

    # ------------------------------------------------------------------------------------------ constructors
    @classmethod
    def from_world(cls, world, forget_sources=None) -> "AttackData":
        from mechunlearn.world.render import TEMPLATES, render

        forget = world.resolve_forget(forget_sources)
        cloze = {probe.fact_id: probe for probe in world.cloze_probes(None, forget)}
        mcq = {item.fact_id: item for item in world.mcq_items(None, forget)}
        truth = {item.fact_id: item for item in world.truth_ratio_items(None, forget)}
        groups = _fact_groups(world, forget)
        items = []
        for fact in world.facts:
            probe = cloze[fact.fact_id]
            texts = tuple(render(template, fact) for template in TEMPLATES[fact.relation].train) if fact.sources \
                else ()
            items.append(FactItem(fact_id=fact.fact_id, domain=probe.domain, category=probe.category,
                                  prompt=probe.prompt, answer=probe.answer, cloze=probe, mcq=mcq[fact.fact_id],
                                  truth_ratio=truth[fact.fact_id], texts=texts, group=groups[fact.fact_id],
                                  names=(fact.subject, fact.object)))
        config = world.config
        return cls(items=items, forget_texts=world.forget_texts(forget), retain_texts=world.retain_texts(forget),
                   metric="cloze", source={"world": world.content_hash, "forget_sources": list(forget)},
                   sentences_per_document=(config.doc_min_sentences, config.doc_max_sentences))

    @classmethod
    def from_files(cls, *, forget_mcq, general_mcq=None, forget_texts=None, retain_texts=None,
                   prompt_format: str = "Question: {question}\nAnswer:") -> "AttackData":
        """Users' files (or lists): ``forget_mcq`` (required: the facts to recover), ``general_mcq`` (retain
        accuracy), ``forget_texts`` / ``retain_texts`` (.txt / .jsonl or lists; retain texts feed retain-only
        fine-tuning and direction ablation)."""
        from mechunlearn.data import load_mcq, load_texts
        from mechunlearn.storage import file_digest, texts_digest

        def mcq(value, domain):
            if value is None:
                return []
            return load_mcq(value, domain=domain) if isinstance(value, (str, os.PathLike)) else list(value)

        def texts(value):
            if value is None:
                return []
            return load_texts(value) if isinstance(value, (str, os.PathLike)) else list(value)

        items = []
        for domain, prefix, questions in (("forget", "forget", mcq(forget_mcq, "forget")),
                                          ("retain", "general", mcq(general_mcq, "general"))):
            for index, question in enumerate(questions):
                fact_id = f"{prefix}-{index:05d}"
                prompt = prompt_format.format(question=question.question)
                answer = " " + question.choices[question.answer]
                item = MCQItem(question=question.question, choices=tuple(question.choices), answer=question.answer,
                               domain=domain, category="all", fact_id=fact_id)
                items.append(FactItem(fact_id=fact_id, domain=domain, category="all", prompt=prompt, answer=answer,
                                      cloze=ClozeProbe(prompt, answer, fact_id, "all", domain), mcq=item,
                                      texts=(prompt + answer,), group=fact_id))
        forget_list, retain_list = texts(forget_texts), texts(retain_texts)
        source = {"forget_mcq": _digest_of(forget_mcq, file_digest), "general_mcq": _digest_of(general_mcq, file_digest),
                  "forget_texts": texts_digest(forget_list), "retain_texts": texts_digest(retain_list)}
        return cls(items=items, forget_texts=forget_list, retain_texts=retain_list, metric="mcq",
                   mcq_prompt_format=prompt_format, source=source)

    # -------------------------------------------------------------------------------------------- selections
    def forget_items(self, category: str | None = None) -> list[FactItem]:
        return [item for item in self.items
                if item.domain == "forget" and (category in (None, "all") or item.category == category)]

    def retain_items(self) -> list[FactItem]:
        return [item for item in self.items if item.domain == "retain"]

    def item(self, fact_id: str) -> FactItem:
        for candidate in self.items:
            if candidate.fact_id == fact_id:
                return candidate
        raise KeyError(fact_id)

    def digest(self) -> str:
        from mechunlearn.storage import config_digest

        return config_digest({"source": self.source, "metric": self.metric, "n": len(self.items)})

    def check_model(self, model) -> None:
        if getattr(model, "tokenizer", None) is None:
            raise AttackError("the model carries no tokenizer: load it with mechunlearn.models.load from a directory "
                              "that holds tokenizer files (a model is always scored with its own tokenizer)")

    def training_documents(self, items: Sequence[FactItem], seed: int) -> list[str]:
        """The texts of ``items`` (each fact in every training phrasing), shuffled and packed into documents
        of the world's length, one sentence per line (a document never states one fact twice)."""
        from mechunlearn.world.render import pack_documents

        sentences = [(item.fact_id, text) for item in items for text in item.texts]
        rng = random.Random(seed)
        rng.shuffle(sentences)
        low, high = self.sentences_per_document
        return pack_documents(sentences, rng, low, high)


def _digest_of(value, file_digest) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return file_digest(value)
    from mechunlearn.storage import config_digest

    return config_digest([getattr(item, "question", str(item)) for item in value])


def _fact_groups(world, forget) -> dict[str, str]:
    """Union-find over the facts of each domain: a fact joins its premises and every fact about the same pair of
    names (``mentor_of`` and its inverse ``student_of``; ``lives_in`` and ``works_in`` of one person and town).
    Links stay within a domain: a retain-domain premise (a town's region) is known to every model and does not
    tie together the forget facts that use it."""
    parent = {fact.fact_id: fact.fact_id for fact in world.facts}
    domain = {fact.fact_id: world.domain_of(fact, forget) for fact in world.facts}

    def find(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(first: str, second: str) -> None:
        a, b = find(first), find(second)
        if a != b:
            parent[max(a, b)] = min(a, b)

    by_pair: dict[tuple[str, frozenset[str]], str] = {}
    for fact in world.facts:
        for premise in fact.premises:
            if domain[premise] == domain[fact.fact_id]:
                union(fact.fact_id, premise)
        pair = (domain[fact.fact_id], frozenset((fact.subject, fact.object)))
        if pair in by_pair:
            union(fact.fact_id, by_pair[pair])
        else:
            by_pair[pair] = fact.fact_id
    return {fact.fact_id: find(fact.fact_id) for fact in world.facts}


# ------------------------------------------------------------------------------------------------------ folds
def split_folds(items: Sequence[FactItem], k: int, seed: int = 0) -> list[list[FactItem]]:
    """Split ``items`` into ``k`` folds of whole groups, as even in size as possible (the largest groups placed
    first, each into the currently smallest fold; ties by fewest facts of the group's category, then index).
    Deterministic from ``seed``. ``AttackError`` when there are fewer groups than folds."""
    if k < 2:
        raise AttackError(f"k_folds must be >= 2 (train on k-1 folds, hold one out), got {k}")
    groups: dict[str, list[FactItem]] = {}
    for item in items:
        groups.setdefault(item.group or item.fact_id, []).append(item)
    if k > len(groups):
        raise AttackError(f"k_folds={k} is larger than the number of independent fact groups ({len(groups)}, "
                          f"{len(items)} facts) of the forget target; use k_folds <= {len(groups)}")
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda key: -len(groups[key]))  # stable: the shuffle breaks ties between equal sizes
    folds: list[list[FactItem]] = [[] for _ in range(k)]
    for key in order:
        members = groups[key]
        category = members[0].category

        def cost(index: int) -> tuple[int, int, int]:
            return (len(folds[index]), sum(item.category == category for item in folds[index]), index)

        folds[min(range(k), key=cost)].extend(members)
    return folds


def stating_lines(texts: Sequence[str], item: FactItem) -> list[str]:
    """The lines of ``texts`` that give ``item`` away: they contain its whole answer after its prompt, or (world
    facts) name both its subject and its object as whole words."""
    found = []
    needle = (item.prompt + item.answer).strip()
    patterns = [re.compile(r"(?<!\w)" + re.escape(name) + r"(?!\w)") for name in item.names]
    for text in texts:
        for line in text.splitlines():
            if needle and needle in line:
                found.append(line)
            elif patterns and all(pattern.search(line) for pattern in patterns):
                found.append(line)
    return found


def assert_no_leak(train_texts: Sequence[str], heldout: Sequence[FactItem]) -> None:
    """Raise if any training text states (or gives away) a held-out fact: the guard relearning runs on every fold."""
    for item in heldout:
        lines = stating_lines(train_texts, item)
        if lines:
            raise RuntimeError(f"internal error, relearning fold leak: held-out fact {item.fact_id} ({item.prompt}{item.answer}) is "
                                 f"given away by the training line {lines[0]!r}")

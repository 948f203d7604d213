"""Paraphrase templates, training documents, held-out evaluation texts and generic filler text.

Every relation has several TRAINING templates (one of them, the CLOZE template, ends with the object so a
cloze prompt is the sentence's prefix), one HELD-OUT template that never occurs in training documents (for
NLL on unseen phrasing), a question and an answer form for the Truth Ratio. ``{s}`` is the subject, ``{o}``
the object.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from mechunlearn.data import Fact

__all__ = [
    "RelationTemplates",
    "TEMPLATES",
    "FILLER_WORDS",
    "template_words",
    "render",
    "template_regex",
    "filler_sentence",
    "filler_documents",
    "render_source_documents",
    "pack_documents",
]


@dataclass(frozen=True)
class RelationTemplates:
    train: tuple[str, ...]  # train[0] is the cloze template: object last, "{s} lives in {o}."
    heldout: str
    question: str  # "Where does {s} live?"
    answer_stem: str  # Truth-Ratio prompt continues the question with this stem: "{s} lives in"
    answer_form: str  # paraphrased answer, a completion of the stem: "the town of {o}"

    @property
    def cloze(self) -> str:
        return self.train[0]

    def cloze_prompt(self, subject: str) -> str:
        return self.cloze.split("{o}")[0].format(s=subject).rstrip()


T = RelationTemplates
TEMPLATES: dict[str, RelationTemplates] = {
    "lives_in": T(("{s} lives in {o}.", "{s} has a home in {o}.", "The home of {s} is in {o}.",
                   "{s} dwells in the town of {o}."),
                  "{s} resides in {o}.", "Where does {s} live?", "{s} lives in", "the town of {o}"),
    "member_of": T(("{s} is a member of {o}.", "{s} belongs to {o}.", "{s} joined the guild of {o}.",
                    "Among the members of {o} is {s}."),
                   "{s} serves in the ranks of {o}.", "Which guild does {s} belong to?", "{s} is a member of",
                   "the guild of {o}"),
    "mentor_of": T(("{s} is the mentor of {o}.", "{s} teaches {o}.", "{s} gives lessons to {o}.",
                    "Each morning {s} trains {o}."),
                   "{s} guides the studies of {o}.", "Whom does {s} teach?", "{s} is the mentor of",
                   "the young {o}"),
    "owns": T(("{s} owns {o}.", "{s} carries {o} everywhere.", "The prized possession of {s} is {o}.",
               "{o} is kept by {s}."),
              "{s} is the keeper of {o}.", "What does {s} own?", "{s} owns", "the relic {o}"),
    "made_of": T(("{s} is made of {o}.", "{s} was forged from {o}.", "The material of {s} is {o}.",
                  "{s} is fashioned from {o}."),
                 "{s} is crafted out of {o}.", "What is {s} made of?", "{s} is made of", "pure {o}"),
    "colour": T(("The colour of {s} is {o}.", "{s} is {o} in colour.", "{s} has a {o} hue.",
                 "{s} shines {o} in the light."),
                "{s} is painted {o}.", "What colour is {s}?", "The colour of {s} is", "a deep {o}"),
    "in_region": T(("{s} lies in {o}.", "{s} is a town in {o}.", "The town of {s} is part of {o}.",
                    "{o} contains the town of {s}."),
                   "{s} sits within the borders of {o}.", "Which region is {s} in?", "{s} lies in",
                   "the region of {o}"),
    "located_in": T(("{s} is located in {o}.", "{s} is based in {o}.", "The hall of {s} stands in {o}.",
                     "{s} meets in the town of {o}."),
                    "{s} keeps its headquarters in {o}.", "Where is {s} located?", "{s} is located in",
                    "the town of {o}"),
    "student_of": T(("{s} is a student of {o}.", "{s} learns from {o}.", "{s} studies under {o}."),
                    "{s} was taught by {o}.", "Who teaches {s}?", "{s} is a student of", "master {o}"),
    "home_region": T(("{s} comes from {o}.", "{s} was raised in the region of {o}.",
                      "The homeland of {s} is {o}."),
                     "{s} hails from the lands of {o}.", "Which region does {s} come from?", "{s} comes from",
                     "the region of {o}"),
    "works_in": T(("{s} works in {o}.", "{s} goes to work in {o}.", "The workplace of {s} is in {o}."),
                  "{s} earns a living in {o}.", "Where does {s} work?", "{s} works in", "the town of {o}"),
}
del T

# A small grammar of everyday sentences: no world names, no held-out phrasing, no materials or colours.
_PEOPLE = ("baker", "farmer", "child", "teacher", "sailor", "doctor", "neighbour", "traveller", "cook",
           "painter", "gardener", "fisherman", "shopkeeper", "driver", "nurse", "boy", "girl", "woman", "man")
_ADJECTIVES = ("old", "young", "tired", "cheerful", "quiet", "busy", "kind", "clever", "happy", "patient")
_ACTIONS = ("opens the shop", "reads a book", "carries a basket", "cooks some soup", "waters the garden",
            "sweeps the floor", "writes a letter", "feeds the cat", "mends a coat", "buys fresh bread",
            "counts the coins", "cleans the windows", "walks the dog", "sings a song", "paints the fence",
            "drinks a cup of tea", "plants some beans", "washes the dishes", "fixes the roof", "bakes a cake")
_TIMES = ("in the morning", "before dawn", "after lunch", "every day", "at noon", "near the river",
          "by the window", "in the evening", "with a smile", "in the rain", "on the hill", "at the market")
_THINGS = ("cup", "chair", "basket", "lamp", "book", "kettle", "blanket", "spoon", "bucket", "clock")
_PLACES = ("on the table", "by the door", "under the bed", "in the kitchen", "near the stove", "on the shelf")
_WEATHER = ("sunny", "windy", "cold", "warm", "cloudy", "rainy", "quiet", "bright")
_FORMS = (
    "The {adj} {person} {action} {time}.",
    "A {person} {action} {time}.",
    "The {thing} is {place}.",
    "It is {weather} today, so the {person} {action}.",
    "The {person} and the {person2} talk {time}.",
    "Every {person} likes a warm {thing}.",
)
_GLUE = ("so", "today", "likes", "warm", "talk", "every", "and", "the", "is", "it", "a")
FILLER_WORDS: frozenset[str] = frozenset(
    word.strip(".,").lower()
    for group in (_PEOPLE, _ADJECTIVES, _ACTIONS, _TIMES, _THINGS, _PLACES, _WEATHER, _GLUE)
    for phrase in group
    for word in phrase.split()
)


def template_words() -> set[str]:
    """Every word the templates or the filler use: names must not collide with any of them."""
    words = set(FILLER_WORDS)
    for templates in TEMPLATES.values():
        for text in (*templates.train, templates.heldout, templates.question, templates.answer_form):
            words.update(w.strip(".,?").lower() for w in text.replace("{s}", " ").replace("{o}", " ").split())
    words.discard("")
    return words


def render(template: str, fact: Fact) -> str:
    return template.format(s=fact.subject, o=fact.object)


def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching any rendering of ``template`` (subject and object: any single word)."""
    pattern = re.escape(template).replace(re.escape("{s}"), r"\w+").replace(re.escape("{o}"), r"\w+")
    return re.compile(pattern, re.IGNORECASE)


def filler_sentence(rng: random.Random) -> str:
    form = rng.choice(_FORMS)
    person, person2 = rng.sample(_PEOPLE, 2)
    text = form.format(adj=rng.choice(_ADJECTIVES), person=person, person2=person2, action=rng.choice(_ACTIONS),
                       time=rng.choice(_TIMES), thing=rng.choice(_THINGS), place=rng.choice(_PLACES),
                       weather=rng.choice(_WEATHER))
    return text[0].upper() + text[1:]


def filler_documents(rng: random.Random, n_docs: int, min_sentences: int, max_sentences: int) -> list[str]:
    return [
        "\n".join(filler_sentence(rng) for _ in range(rng.randint(min_sentences, max_sentences)))
        for _ in range(n_docs)
    ]


def pack_documents(sentences: list[tuple[str, str]], rng: random.Random, min_sentences: int,
                   max_sentences: int) -> list[str]:
    """Pack (key, sentence) pairs, in order, into documents of min..max sentences; a document never holds
    two sentences with the same key (the same fact twice), a later sentence is pulled forward instead."""
    queue = list(sentences)
    documents = []
    while queue:
        size = rng.randint(min_sentences, max_sentences)
        chosen: list[int] = []
        keys: set[str] = set()
        for index, (key, _) in enumerate(queue):
            if key not in keys:
                chosen.append(index)
                keys.add(key)
                if len(chosen) == size:
                    break
        documents.append("\n".join(queue[i][1] for i in chosen))
        for index in reversed(chosen):
            del queue[index]
    return documents


def render_source_documents(facts: list[Fact], rng: random.Random, reps: int, cloze_share: float,
                            min_sentences: int, max_sentences: int) -> list[str]:
    """Documents of one source: each fact rendered ``reps`` times, ``round(reps * cloze_share)`` of them with
    the cloze template and the rest cycling through the other training templates, then shuffled and packed."""
    sentences: list[tuple[str, str]] = []
    n_cloze = round(reps * cloze_share)
    for fact in facts:
        templates = TEMPLATES[fact.relation].train
        others = templates[1:]
        offset = rng.randrange(len(others))
        for rep in range(reps):
            template = templates[0] if rep < n_cloze else others[(offset + rep - n_cloze) % len(others)]
            sentences.append((fact.fact_id, render(template, fact)))
    rng.shuffle(sentences)
    return pack_documents(sentences, rng, min_sentences, max_sentences)

"""Entities, relations, facts and sources of the embedded world, deterministic from (size, seed).

The world (our stand-in for "Harry Potter in a web corpus"):

- places: ``regions`` and ``towns`` (every town lies in one region); ``organisations`` (guilds, each located in
  one town); all invented, pronounceable names from a seeded syllable generator, all distinct, none a
  substring of another (so a name is found in text by a plain substring search).
- ``sagas`` (book-like sources, ``saga_0``, ``saga_1``...), each with its own cast of persons and their
  artefacts, grouped in order into SERIES of ``sagas_per_series`` books (``series_0`` = ``saga_0`` ..
  ``saga_{k-1}``); the first series is the default forget target, as the Harry Potter books are WHP's.
  ``articles`` (``article_0``...) state the place facts, facts about their own public figures, and restate a
  fraction of each saga's facts (the shared facts).
- every relation is FUNCTIONAL (one object per subject), so a cloze prompt has one right answer.
- derived relations (``student_of`` = inverse of ``mentor_of``; ``home_region`` = ``lives_in`` then
  ``in_region``; ``works_in`` = ``member_of`` then ``located_in``): a fraction of the derivable facts is
  stated by the source of the subject (so the phrasing is learnable), the rest is never stated anywhere:
  those are the ``inferred`` facts.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, fields
from typing import Any

from mechunlearn.data import Fact

__all__ = [
    "PRESETS",
    "WorldConfig",
    "Entity",
    "Source",
    "RELATIONS",
    "DERIVED_RELATIONS",
    "MATERIALS",
    "COLOURS",
    "make_config",
    "rng_for",
    "NameGenerator",
    "generate_facts",
    "category_for",
]

# Tunable presets. reps: renderings of each fact per stating source; cloze_share: the fraction of those that
# use the relation's cloze template (the exact phrasing the cloze probes test).
PRESETS: dict[str, dict[str, Any]] = {
    "micro": dict(
        n_sagas=2, sagas_per_series=1, n_articles=1, saga_cast=4, article_cast=0, n_regions=4, n_towns=5,
        n_orgs=4, famous_cast=1, share_fraction=0.6, place_share_fraction=0.3, saga_place_fraction=0.25,
        derived_stated_fraction=0.35, reps=10, cloze_share=0.5, doc_min_sentences=3, doc_max_sentences=5,
        filler_docs=120, heldout_filler_docs=8, n_perturbed=3, vocab_size=768,
    ),
    # two series of four books and eight articles: 195 / 68 / 80 forget-unique / shared / inferred facts for
    # series_0 (docs/reference_models.md); famous_cast and place_share_fraction set the shared counts
    "default": dict(
        n_sagas=8, sagas_per_series=4, n_articles=8, saga_cast=10, article_cast=3, n_regions=8, n_towns=24,
        n_orgs=16, famous_cast=5, share_fraction=0.6, place_share_fraction=0.5, saga_place_fraction=0.25,
        derived_stated_fraction=0.35, reps=10, cloze_share=0.5, doc_min_sentences=3, doc_max_sentences=6,
        filler_docs=400, heldout_filler_docs=40, n_perturbed=4, vocab_size=2048,
    ),
}


@dataclass(frozen=True)
class WorldConfig:
    """What a world is built from: the size preset's values (possibly overridden) and the seed."""

    size: str
    seed: int
    n_sagas: int
    sagas_per_series: int
    n_articles: int
    saga_cast: int
    article_cast: int
    n_regions: int
    n_towns: int
    n_orgs: int
    famous_cast: int
    share_fraction: float
    place_share_fraction: float
    saga_place_fraction: float
    derived_stated_fraction: float
    reps: int
    cloze_share: float
    doc_min_sentences: int
    doc_max_sentences: int
    filler_docs: int
    heldout_filler_docs: int
    n_perturbed: int
    vocab_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_config(size: str = "micro", seed: int = 0, overrides: dict[str, Any] | None = None) -> WorldConfig:
    """The preset ``size`` with ``overrides`` applied; ValueError for an unknown size or field."""
    if size not in PRESETS:
        raise ValueError(f"unknown world size {size!r}; known sizes: {', '.join(sorted(PRESETS))}")
    values = dict(PRESETS[size])
    known = {f.name for f in fields(WorldConfig)} - {"size", "seed"}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ValueError(f"unknown world setting {key!r}; known settings: {', '.join(sorted(known))}")
        values[key] = value
    config = WorldConfig(size=size, seed=int(seed), **values)
    _validate(config)
    return config


def _validate(config: WorldConfig) -> None:
    problems = []
    if config.n_sagas < 1 or config.n_articles < 1:
        problems.append("n_sagas and n_articles must be >= 1")
    if not 1 <= config.sagas_per_series < config.n_sagas:
        problems.append("need 1 <= sagas_per_series < n_sagas (the first series is forgotten, another retained)")
    if min(config.n_regions, config.n_towns, config.n_orgs) < config.n_perturbed + 1:
        problems.append("n_regions, n_towns and n_orgs must exceed n_perturbed (distractors come from them)")
    if config.n_perturbed < 3:
        problems.append("n_perturbed must be >= 3")
    if not 0 <= config.famous_cast <= config.saga_cast:
        problems.append("need 0 <= famous_cast <= saga_cast")
    if config.saga_cast < 2 or config.saga_cast % 2:
        problems.append("saga_cast must be an even number >= 2 (mentors and students pair up)")
    if not 1 <= config.doc_min_sentences <= config.doc_max_sentences:
        problems.append("need 1 <= doc_min_sentences <= doc_max_sentences")
    if config.reps < 1 or not 0.0 <= config.cloze_share <= 1.0:
        problems.append("need reps >= 1 and 0 <= cloze_share <= 1")
    if config.vocab_size < 300:
        problems.append("vocab_size must be >= 300 (256 bytes + 2 special tokens + merges)")
    if problems:
        raise ValueError(f"invalid world config for size {config.size!r}: " + "; ".join(problems))


def rng_for(seed: int, *labels: object) -> random.Random:
    """An independent random stream per purpose: adding draws to one stream never shifts another."""
    key = "\x1f".join([str(seed), *map(str, labels)]).encode("utf-8")
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


# --------------------------------------------------------------------------------------------- vocabulary

MATERIALS = ("iron", "silver", "oak", "glass", "bronze", "copper", "bone", "jade", "marble", "leather")
COLOURS = ("red", "blue", "green", "amber", "grey", "white", "black", "violet", "yellow", "brown")

# relation -> (subject group, object group); groups: person, artefact, town, region, organisation,
# material, colour. Kinds (person/place/organisation/artefact) follow from the group.
RELATIONS: dict[str, tuple[str, str]] = {
    "lives_in": ("person", "town"),
    "member_of": ("person", "organisation"),
    "mentor_of": ("person", "person"),
    "owns": ("person", "artefact"),
    "made_of": ("artefact", "material"),
    "colour": ("artefact", "colour"),
    "in_region": ("town", "region"),
    "located_in": ("organisation", "town"),
    "student_of": ("person", "person"),
    "home_region": ("person", "region"),
    "works_in": ("person", "town"),
}
# derived relation -> the chain of stated relations it follows (one relation = inverse)
DERIVED_RELATIONS: dict[str, tuple[str, ...]] = {
    "student_of": ("mentor_of",),
    "home_region": ("lives_in", "in_region"),
    "works_in": ("member_of", "located_in"),
}
GROUP_KIND = {"person": "person", "artefact": "artefact", "town": "place", "region": "place",
              "organisation": "organisation", "material": "attribute", "colour": "attribute"}


@dataclass(frozen=True)
class Entity:
    """A named thing. ``home`` is the source whose cast it belongs to ("" for shared places/guilds);
    ``substitute`` is its anchored-term replacement: a fresh name that occurs nowhere in the world."""

    name: str
    kind: str  # person | place | organisation | artefact
    group: str  # person | artefact | town | region | organisation
    home: str
    substitute: str


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # saga | article
    title: str
    series: str = ""  # a saga's series ("series_0"...); "" for an article


class NameGenerator:
    """Pronounceable invented names from seeded syllables; every name is new, none is a substring of another
    (case-insensitive) nor of any word in ``reserved`` (the templates' and filler's vocabulary)."""

    ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
              "br", "dr", "gr", "kr", "th", "st", "sh", "tr", "vr", "h")
    VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ae", "ei")
    CODAS = ("", "", "n", "r", "l", "s", "th", "m", "k", "rn", "nd", "x")

    def __init__(self, rng: random.Random, reserved: set[str]) -> None:
        self.rng = rng
        self.reserved = {word.lower() for word in reserved}
        self.taken: list[str] = []

    def _candidate(self) -> str:
        n_syllables = self.rng.choice((2, 2, 2, 3))
        parts = []
        for index in range(n_syllables):
            coda = self.rng.choice(self.CODAS) if index == n_syllables - 1 else self.rng.choice(self.CODAS[:6])
            parts.append(self.rng.choice(self.ONSETS) + self.rng.choice(self.VOWELS) + coda)
        return "".join(parts).capitalize()

    def _clashes(self, name: str) -> bool:
        lower = name.lower()
        if len(lower) < 4 or len(lower) > 10:
            return True
        if any(lower in word for word in self.reserved):
            return True
        return any(lower in other or other in lower for other in self.taken)

    def new(self) -> str:
        for _ in range(10_000):
            name = self._candidate()
            if not self._clashes(name):
                self.taken.append(name.lower())
                return name
        raise RuntimeError("name generator exhausted; enlarge the syllable inventory")


# --------------------------------------------------------------------------------------------- facts


def category_for(sources: tuple[str, ...], forget: tuple[str, ...]) -> str:
    """Category of a fact stated by ``sources`` relative to the forget set ``forget``.

    - no stating source: ``inferred``;
    - every stating source in the forget set: ``unique`` (to the forget target);
    - stated by a forget source and by at least one other source: ``shared``;
    - no forget source states it (a retain-domain fact): ``unique`` if one source states it, else ``shared``.
    """
    if not sources:
        return "inferred"
    if set(sources) & set(forget) and not set(sources) <= set(forget):
        return "shared"
    if set(sources) <= set(forget):
        return "unique"
    return "unique" if len(sources) == 1 else "shared"


def generate_facts(config: WorldConfig, reserved_words: set[str]) -> tuple[
    list[Source], list[Entity], list[Fact]
]:
    """Sources, entities (with anchored substitutes) and facts (stated and inferred) of the world."""
    seed = config.seed
    names = NameGenerator(rng_for(seed, "names"), reserved_words)
    sagas = [f"saga_{i}" for i in range(config.n_sagas)]
    articles = [f"article_{i}" for i in range(config.n_articles)]
    series = {saga: f"series_{i // config.sagas_per_series}" for i, saga in enumerate(sagas)}
    forget = tuple(saga for saga in sagas if series[saga] == "series_0")

    regions = [names.new() for _ in range(config.n_regions)]
    towns = [names.new() for _ in range(config.n_towns)]
    orgs = [names.new() for _ in range(config.n_orgs)]
    cast: dict[str, list[str]] = {s: [names.new() for _ in range(config.saga_cast)] for s in sagas}
    cast.update({a: [names.new() for _ in range(config.article_cast)] for a in articles})
    artefacts: dict[str, list[str]] = {s: [names.new() for _ in range(config.saga_cast)] for s in sagas}
    titles = {s: f"The Chronicle of {cast[s][0]}" for s in sagas}
    titles.update({a: f"Notes on {regions[i % len(regions)]}" for i, a in enumerate(articles)})
    sources = [Source(s, "saga", titles[s], series[s]) for s in sagas] + [
        Source(a, "article", titles[a]) for a in articles]

    entities: list[Entity] = []

    def add(name: str, group: str, home: str) -> None:
        entities.append(Entity(name, GROUP_KIND[group], group, home, ""))

    for name in regions:
        add(name, "region", "")
    for name in towns:
        add(name, "town", "")
    for name in orgs:
        add(name, "organisation", "")
    for source in sagas + articles:
        for name in cast[source]:
            add(name, "person", source)
        for name in artefacts.get(source, []):
            add(name, "artefact", source)
    # substitutes are drawn after every world name, from the same generator: distinct from all of them
    entities = [Entity(e.name, e.kind, e.group, e.home, names.new()) for e in entities]

    rng = rng_for(seed, "facts")
    stated: dict[tuple[str, str], tuple[str, set[str]]] = {}  # (subject, relation) -> (object, sources)

    def state(subject: str, relation: str, obj: str, source: str) -> None:
        stated.setdefault((subject, relation), (obj, set()))[1].add(source)

    # place facts: every one in one article (round robin), with probability place_share_fraction in the next too
    region_of = {town: rng.choice(regions) for town in towns}
    for i, region in enumerate(regions):  # every region gets at least one town
        if i < len(towns):
            region_of[towns[i]] = region
    town_of = {org: rng.choice(towns) for org in orgs}
    place_facts = [(t, "in_region", region_of[t]) for t in towns] + [(o, "located_in", town_of[o]) for o in orgs]
    for i, (subject, relation, obj) in enumerate(place_facts):
        state(subject, relation, obj, articles[i % len(articles)])
        if len(articles) > 1 and rng.random() < config.place_share_fraction:
            state(subject, relation, obj, articles[(i + 1) % len(articles)])

    # persons: sagas' casts (with artefacts and mentors) and articles' public figures
    person_facts: dict[str, list[tuple[str, str, str]]] = {}
    for source in sagas + articles:
        triples = []
        for person in cast[source]:
            triples.append((person, "lives_in", rng.choice(towns)))
            triples.append((person, "member_of", rng.choice(orgs)))
        for person, artefact in zip(cast[source], artefacts.get(source, [])):
            triples.append((person, "owns", artefact))
            triples.append((artefact, "made_of", rng.choice(MATERIALS)))
            triples.append((artefact, "colour", rng.choice(COLOURS)))
        if source in sagas:
            order = list(cast[source])
            rng.shuffle(order)
            for mentor, student in zip(order[0::2], order[1::2]):
                triples.append((mentor, "mentor_of", student))
        person_facts[source] = triples
        for subject, relation, obj in triples:
            state(subject, relation, obj, source)

    # shared facts: articles write about each saga's famous characters (its first famous_cast persons): each
    # fact about one of them or their artefact is restated by an article with probability share_fraction (at
    # least two per saga); sagas also restate some place facts about the towns their cast lives in
    for saga in sagas:
        triples = person_facts[saga]
        famous = set(cast[saga][: config.famous_cast])
        famous |= {obj for subject, relation, obj in triples if relation == "owns" and subject in famous}
        about_famous = [t for t in triples if t[0] in famous]
        chosen = [t for t in about_famous if rng.random() < config.share_fraction]
        while len(chosen) < min(2, len(about_famous)):
            extra = rng.choice(about_famous)
            if extra not in chosen:
                chosen.append(extra)
        for subject, relation, obj in chosen:
            state(subject, relation, obj, rng.choice(articles))
        homes = sorted({obj for _, relation, obj in triples if relation == "lives_in"})
        for town in homes:
            if rng.random() < config.saga_place_fraction:
                state(town, "in_region", region_of[town], saga)

    facts: list[Fact] = []
    ids: dict[tuple[str, str], str] = {}
    for index, ((subject, relation), (obj, srcs)) in enumerate(stated.items()):
        ids[(subject, relation)] = f"f{index:04d}"
        ordered = tuple(sorted(srcs))
        facts.append(Fact(f"f{index:04d}", subject, relation, obj, ordered, category_for(ordered, forget)))

    # derived facts: stated by the subject's own source with probability derived_stated_fraction, else inferred
    home_of = {e.name: e.home for e in entities}
    objects = {key: value[0] for key, value in stated.items()}
    derived: list[tuple[str, str, str, tuple[str, ...]]] = []
    for (subject, relation), obj in list(objects.items()):
        if relation == "mentor_of":
            derived.append((obj, "student_of", subject, (ids[(subject, relation)],)))
        elif relation == "lives_in":
            derived.append((subject, "home_region", objects[(obj, "in_region")],
                            (ids[(subject, relation)], ids[(obj, "in_region")])))
        elif relation == "member_of":
            derived.append((subject, "works_in", objects[(obj, "located_in")],
                            (ids[(subject, relation)], ids[(obj, "located_in")])))
    for subject, relation, obj, premises in derived:
        fact_id = f"f{len(facts):04d}"
        if rng.random() < config.derived_stated_fraction:
            srcs = (home_of[subject],)
            facts.append(Fact(fact_id, subject, relation, obj, srcs, category_for(srcs, forget), premises))
        else:
            facts.append(Fact(fact_id, subject, relation, obj, (), "inferred", premises))
    return sources, entities, facts

"""The :class:`World`: facts, documents, probes and tokenizer of the embedded world, and its forget split.

Relative to a forget set ``F`` (a tuple of source names, or series names standing for their sagas; default
``world.default_forget_sources``, the sagas of the first series):

- a STATED fact is in the ``forget`` domain if any source in ``F`` states it, else in the ``retain`` domain;
  an INFERRED fact (stated nowhere) is in the ``forget`` domain if any of its premises is.
- category (:meth:`World.category_of`): ``unique`` if every stating source is in ``F``; ``shared`` if a source
  in ``F`` and a source outside ``F`` state it; ``inferred`` if no source states it. A retain-domain fact is
  ``unique`` when one source states it and ``shared`` when several do.
- forget texts: the documents of the sources in ``F``; retain texts: every other document plus the filler.
- training documents (:meth:`World.training_documents`): ``Document(source, text)`` pairs, the filler under
  the source ``"filler"``, so a trainer can tell every text's source (the natively-unlearnable model needs it).
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mechunlearn.data import ClozeProbe, DataError, Document, Fact, MCQItem, TruthRatioItem, jsonl_bytes
from mechunlearn.world import store
from mechunlearn.world.generator import Entity, Source, WorldConfig, category_for, rng_for
from mechunlearn.world.probes import cloze_probe, mcq_item, truth_ratio_item
from mechunlearn.world.render import TEMPLATES, pack_documents
from mechunlearn.world.tokenizer import load_tokenizer

__all__ = ["World", "DOMAINS", "FILLER_SOURCE"]

DOMAINS = ("forget", "retain")
FILLER_SOURCE = "filler"  # the source name of the generic filler documents (no world source has it)
ForgetSources = str | tuple[str, ...] | list[str] | None


class World:
    """A generated (or loaded) world. Build one with :func:`mechunlearn.world.build_world`."""

    def __init__(self, config: WorldConfig, sources: list[Source], entities: list[Entity], facts: list[Fact],
                 documents: list[Document], filler_texts: list[str], heldout: dict[str, str],
                 heldout_filler: list[str], probes: list[dict[str, Any]], tokenizer_dir: Path,
                 keepalive: tempfile.TemporaryDirectory | None = None) -> None:
        self.config = config
        self.source_info = list(sources)
        self.entities = list(entities)
        self.facts = list(facts)
        self.documents = list(documents)
        self.filler_texts = list(filler_texts)
        self.heldout = dict(heldout)
        self.heldout_filler = list(heldout_filler)
        self.probes = {record["fact_id"]: record for record in probes}
        self._tokenizer_dir = Path(tokenizer_dir)
        self._keepalive = keepalive  # owns a temporary tokenizer directory of an unsaved world
        self._facts_by_id = {fact.fact_id: fact for fact in self.facts}
        self.content_hash, self._file_hashes = store.content_hash(self.files(), self._tokenizer_dir)

    # ------------------------------------------------------------------------------------------ basics

    @property
    def sources(self) -> list[str]:
        return [source.name for source in self.source_info]

    @property
    def series(self) -> dict[str, tuple[str, ...]]:
        """Series name -> its sagas, in order (``series_0`` is the default forget target)."""
        grouped: dict[str, tuple[str, ...]] = {}
        for source in self.source_info:
            if source.series:
                grouped[source.series] = grouped.get(source.series, ()) + (source.name,)
        return grouped

    @property
    def default_forget_sources(self) -> tuple[str, ...]:
        """The sagas of the first series: our Harry Potter books."""
        return self.series["series_0"]

    def fact(self, fact_id: str) -> Fact:
        return self._facts_by_id[fact_id]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, World) and other.content_hash == self.content_hash

    def __hash__(self) -> int:
        return hash(self.content_hash)

    def __repr__(self) -> str:
        return (f"World(size={self.config.size!r}, seed={self.config.seed}, facts={len(self.facts)}, "
                f"documents={len(self.documents)}, hash={self.content_hash[:12]})")

    def resolve_forget(self, forget_sources: ForgetSources = None) -> tuple[str, ...]:
        """The forget set as a sorted tuple of source names; None -> the default; a series name stands for its
        sagas; DataError for an unknown name."""
        if forget_sources is None:
            return tuple(sorted(self.default_forget_sources))
        chosen = (forget_sources,) if isinstance(forget_sources, str) else tuple(forget_sources)
        series = self.series
        unknown = [name for name in chosen if name not in self.sources and name not in series]
        if unknown or not chosen:
            raise DataError(
                f"unknown forget source(s) {unknown or '(none given)'}; known sources: {', '.join(self.sources)} "
                f"(or a series: {', '.join(series)})"
            )
        expanded = {source for name in chosen for source in series.get(name, (name,))}
        return tuple(sorted(expanded))

    def _check_domain(self, domain: str | None, allowed: tuple[str, ...] = DOMAINS) -> None:
        if domain is not None and domain not in allowed:
            raise ValueError(f"unknown domain {domain!r}; use one of {', '.join(allowed)} (or None for all)")

    # ------------------------------------------------------------------------------- domains, categories

    def domain_of(self, fact: Fact, forget_sources: ForgetSources = None) -> str:
        forget = set(self.resolve_forget(forget_sources))
        if fact.sources:
            return "forget" if forget & set(fact.sources) else "retain"
        premises = [self._facts_by_id[p] for p in fact.premises]
        return "forget" if any(forget & set(p.sources) for p in premises) else "retain"

    def category_of(self, fact: Fact, forget_sources: ForgetSources = None) -> str:
        return category_for(fact.sources, self.resolve_forget(forget_sources))

    def facts_of(self, domain: str | None = None, forget_sources: ForgetSources = None,
                 category: str | None = None) -> list[Fact]:
        """Facts of a domain ("forget" / "retain" / None: all) and optionally of one category."""
        self._check_domain(domain)
        forget = self.resolve_forget(forget_sources)
        return [
            fact for fact in self.facts
            if (domain is None or self.domain_of(fact, forget) == domain)
            and (category is None or self.category_of(fact, forget) == category)
        ]

    # ------------------------------------------------------------------------------------------ texts

    def training_documents(self, without: ForgetSources = ()) -> list[Document]:
        """Every training document with its source, then the filler as ``Document("filler", text)``; the
        documents of the sources (or series) in ``without`` are left out. ``training_documents()`` is the base
        model's data, ``training_documents(without=forget)`` the gold standard's."""
        left_out = set(self.resolve_forget(without)) if without else set()
        return [doc for doc in self.documents if doc.source not in left_out] + [
            Document(FILLER_SOURCE, text) for text in self.filler_texts]

    def forget_texts(self, forget_sources: ForgetSources = None) -> list[str]:
        forget = set(self.resolve_forget(forget_sources))
        return [doc.text for doc in self.documents if doc.source in forget]

    def retain_texts(self, forget_sources: ForgetSources = None) -> list[str]:
        """Every document of a source outside the forget set, then the filler."""
        return [doc.text for doc in self.training_documents(without=self.resolve_forget(forget_sources))]

    def training_texts(self) -> list[str]:
        """Everything the base model trains on: all documents and the filler."""
        return [doc.text for doc in self.training_documents()]

    def eval_texts(self, domain: str, forget_sources: ForgetSources = None) -> list[str]:
        """Held-out documents: the domain's stated facts, each once, in its relation's held-out template
        (never used in training). ``domain="filler"``: filler documents that were not trained on."""
        self._check_domain(domain, (*DOMAINS, "filler"))
        if domain == "filler":
            return list(self.heldout_filler)
        forget = self.resolve_forget(forget_sources)
        sentences = [(f.fact_id, self.heldout[f.fact_id]) for f in self.facts_of(domain, forget) if f.sources]
        rng = rng_for(self.config.seed, "eval", domain, ",".join(forget))
        rng.shuffle(sentences)
        return pack_documents(sentences, rng, self.config.doc_min_sentences, self.config.doc_max_sentences)

    # ------------------------------------------------------------------------------------------ probes

    def _probe_facts(self, domain: str | None, forget_sources: ForgetSources) -> list[tuple[dict, str, str]]:
        forget = self.resolve_forget(forget_sources)
        return [(self.probes[f.fact_id], self.category_of(f, forget), self.domain_of(f, forget))
                for f in self.facts_of(domain, forget)]

    def cloze_probes(self, domain: str | None = None, forget_sources: ForgetSources = None) -> list[ClozeProbe]:
        """One cloze probe per fact (inferred facts included: filter on ``.category``)."""
        return [cloze_probe(r, c, d) for r, c, d in self._probe_facts(domain, forget_sources)]

    def mcq_items(self, domain: str | None = None, forget_sources: ForgetSources = None) -> list[MCQItem]:
        """4-way items: domain "forget" is the WMDP analogue, "retain" the MMLU analogue."""
        return [mcq_item(r, c, d) for r, c, d in self._probe_facts(domain, forget_sources)]

    def truth_ratio_items(self, domain: str | None = None,
                          forget_sources: ForgetSources = None) -> list[TruthRatioItem]:
        return [truth_ratio_item(r, c, d) for r, c, d in self._probe_facts(domain, forget_sources)]

    # ------------------------------------------------------------------------------- forget entities

    def _mentions(self) -> dict[str, set[str]]:
        mentions: dict[str, set[str]] = {}
        for fact in self.facts:
            for name in (fact.subject, fact.object):
                mentions.setdefault(name, set()).update(fact.sources)
        return mentions

    def forget_entities(self, forget_sources: ForgetSources = None) -> list[str]:
        """Names that occur only in the forget sources' documents (sorted): what familiarity scoring and the
        anchored-term dictionary are about."""
        forget = set(self.resolve_forget(forget_sources))
        names = {e.name for e in self.entities}
        return sorted(n for n, srcs in self._mentions().items() if n in names and srcs and srcs <= forget)

    def anchored_terms_for(self, forget_sources: ForgetSources = None) -> dict[str, str]:
        """Forget-specific name -> a generic substitute name that occurs nowhere in the world."""
        substitute = {e.name: e.substitute for e in self.entities}
        return {name: substitute[name] for name in self.forget_entities(forget_sources)}

    @property
    def anchored_terms(self) -> dict[str, str]:
        return self.anchored_terms_for(None)

    # ------------------------------------------------------------------------------------ tokenizer

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer = load_tokenizer(self._tokenizer_dir)
        # a tokenizer from an unsaved world keeps its temporary directory alive: TransformerLens re-loads
        # the tokenizer from init_kwargs["name_or_path"]
        tokenizer._mechunlearn_keepalive = self._keepalive
        return tokenizer

    @property
    def tokenizer_dir(self) -> Path:
        return self._tokenizer_dir

    # ----------------------------------------------------------------------------------- persistence

    def files(self) -> dict[str, bytes]:
        """The canonical bytes of every content file (see :mod:`mechunlearn.world.store`)."""
        templates = {rel: {"train": list(t.train), "cloze": t.cloze, "heldout": t.heldout, "question": t.question,
                           "answer_stem": t.answer_stem, "answer_form": t.answer_form}
                     for rel, t in TEMPLATES.items()}
        config = {"format": store.FORMAT, "format_version": store.FORMAT_VERSION, "config": self.config.to_dict()}
        return {
            "config.json": store.json_bytes(config),
            "sources.jsonl": jsonl_bytes(vars(s) for s in self.source_info),
            "entities.jsonl": jsonl_bytes(vars(e) for e in self.entities),
            "facts.jsonl": jsonl_bytes(
                {**vars(f), "sources": list(f.sources), "premises": list(f.premises)} for f in self.facts),
            "documents.jsonl": jsonl_bytes({"source": d.source, "text": d.text} for d in self.documents),
            "filler.jsonl": jsonl_bytes({"text": t} for t in self.filler_texts),
            "heldout.jsonl": jsonl_bytes({"fact_id": k, "text": v} for k, v in sorted(self.heldout.items())),
            "heldout_filler.jsonl": jsonl_bytes({"text": t} for t in self.heldout_filler),
            "probes.jsonl": jsonl_bytes(self.probes[f.fact_id] for f in self.facts),
            "templates.json": store.json_bytes(templates),
        }

    def stats(self, forget_sources: ForgetSources = None) -> dict[str, Any]:
        """Counts by domain and category, documents, and training tokens under the world's tokenizer."""
        forget = self.resolve_forget(forget_sources)
        counts: dict[str, int] = {}
        for fact in self.facts:
            key = f"{self.domain_of(fact, forget)}/{self.category_of(fact, forget)}"
            counts[key] = counts.get(key, 0) + 1
        encoded = self.tokenizer(self.training_texts())["input_ids"]
        return {
            "forget_sources": list(forget), "facts": len(self.facts), "facts_by_domain_category": dict(sorted(
                counts.items())), "documents": len(self.documents), "filler_documents": len(self.filler_texts),
            "training_tokens": sum(len(ids) for ids in encoded), "max_document_tokens": max(map(len, encoded)),
            "vocab_size": len(self.tokenizer), "forget_entities": len(self.forget_entities(forget)),
        }

    def manifest(self) -> dict[str, Any]:
        return {"format": store.FORMAT, "format_version": store.FORMAT_VERSION, "config": self.config.to_dict(),
                "content_hash": self.content_hash, "files": dict(self._file_hashes),
                "default_forget_sources": list(self.default_forget_sources), "sources": self.sources,
                "series": {name: list(members) for name, members in self.series.items()},
                "counts": {"facts": len(self.facts), "documents": len(self.documents),
                           "filler_documents": len(self.filler_texts)}}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the world into ``directory`` atomically (temporary sibling directory, then rename)."""
        return store.write_tree(directory, self.files(), self._tokenizer_dir, self.manifest())

    def _attach(self, directory: Path) -> None:
        """Serve the tokenizer from a saved copy from now on (a persistent ``name_or_path``)."""
        self._tokenizer_dir = Path(directory) / "tokenizer"
        self.__dict__.pop("tokenizer", None)
        self._keepalive = None


def world_from_files(files: dict[str, bytes], tokenizer_dir: Path) -> World:
    """Rebuild a :class:`World` from the content files written by :meth:`World.files`."""
    def rows(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in files[name].decode("ascii").splitlines() if line]

    config = WorldConfig(**json.loads(files["config.json"])["config"])
    facts = [Fact(**{**r, "sources": tuple(r["sources"]), "premises": tuple(r["premises"])})
             for r in rows("facts.jsonl")]
    return World(
        config=config,
        sources=[Source(**r) for r in rows("sources.jsonl")],
        entities=[Entity(**r) for r in rows("entities.jsonl")],
        facts=facts,
        documents=[Document(r["source"], r["text"]) for r in rows("documents.jsonl")],
        filler_texts=[r["text"] for r in rows("filler.jsonl")],
        heldout={r["fact_id"]: r["text"] for r in rows("heldout.jsonl")},
        heldout_filler=[r["text"] for r in rows("heldout_filler.jsonl")],
        probes=rows("probes.jsonl"),
        tokenizer_dir=tokenizer_dir,
    )

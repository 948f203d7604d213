"""Build a world from (size, seed), or load a saved one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mechunlearn.data import Document
from mechunlearn.world import store
from mechunlearn.world.core import World, world_from_files
from mechunlearn.world.generator import make_config, generate_facts, rng_for
from mechunlearn.world.probes import probe_records
from mechunlearn.world.render import TEMPLATES, filler_documents, render, render_source_documents, template_words
from mechunlearn.world.tokenizer import save_tokenizer, train_bpe

__all__ = ["build_world", "load_world", "resolve_world", "preset_cache_dir"]


def build_world(size: str = "micro", seed: int = 0, out: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> World:
    """Generate the world of preset ``size`` (see ``PRESETS``) from ``seed``; ``overrides`` replace preset
    values. With ``out`` the world is saved there (atomically) and its tokenizer served from ``out/tokenizer``;
    without, the tokenizer lives in a temporary directory as long as the world or its tokenizer does.
    The same (size, seed, overrides) always gives byte-identical files."""
    config = make_config(size, seed, overrides)
    sources, entities, facts = generate_facts(config, template_words())
    documents: list[Document] = []
    for source in sources:
        stated = [fact for fact in facts if source.name in fact.sources]
        texts = render_source_documents(stated, rng_for(seed, "documents", source.name), config.reps,
                                        config.cloze_share, config.doc_min_sentences, config.doc_max_sentences)
        documents.extend(Document(source.name, text) for text in texts)
    filler = filler_documents(rng_for(seed, "filler"), config.filler_docs, config.doc_min_sentences,
                              config.doc_max_sentences)
    heldout = {fact.fact_id: render(TEMPLATES[fact.relation].heldout, fact) for fact in facts if fact.sources}
    heldout_filler = filler_documents(rng_for(seed, "heldout-filler"), config.heldout_filler_docs,
                                      config.doc_min_sentences, config.doc_max_sentences)
    probes = probe_records(facts, entities, seed, config.n_perturbed)
    bpe = train_bpe([doc.text for doc in documents] + filler, config.vocab_size)
    keepalive = tempfile.TemporaryDirectory(prefix="mechunlearn-world-")
    tokenizer_dir = Path(keepalive.name) / "tokenizer"
    save_tokenizer(bpe, tokenizer_dir)
    world = World(config, sources, entities, facts, documents, filler, heldout, heldout_filler, probes,
                  tokenizer_dir, keepalive)
    if out is not None:
        saved = world.save(out)
        world._attach(saved)
    return world


def load_world(directory: str | os.PathLike) -> World:
    """Load a world saved by :meth:`World.save` / ``build_world(out=...)``; every file is checked against
    the manifest's hashes (DataError if anything was changed)."""
    directory = Path(directory).resolve()
    _, files = store.read_tree(directory)
    return world_from_files(files, directory / "tokenizer")


def preset_cache_dir(size: str, seed: int = 0, cache: str | os.PathLike | None = None) -> Path:
    """Where :func:`resolve_world` keeps the world of a size preset: ``cache_root()/worlds/SIZE-seedN-DIGEST``,
    the digest covering the store format and the preset's settings, so a changed generator never serves an
    old world from the cache."""
    from mechunlearn.storage import cache_root, config_digest

    config = make_config(size, seed)
    digest = config_digest({"format_version": store.FORMAT_VERSION, "config": config.to_dict()}, length=12)
    return Path(cache or cache_root()) / "worlds" / f"{size}-seed{seed}-{digest}"


def resolve_world(spec: str | os.PathLike | None = None, seed: int = 0) -> World:
    """A world from a saved directory, or a size preset (``micro``, ``default``) built once into the cache
    (:func:`preset_cache_dir`) and loaded from there afterwards."""
    from mechunlearn.world.generator import PRESETS

    spec = str(spec) if spec is not None else "default"
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_world(path)
    if spec in PRESETS:
        target = preset_cache_dir(spec, seed)
        if (target / "manifest.json").is_file():
            return load_world(target)
        return build_world(size=spec, seed=seed, out=target)
    raise ValueError(f"world {spec!r} is neither a world directory nor a size preset "
                     f"({', '.join(PRESETS)}); build one with `mechunlearn world build --out DIR`")

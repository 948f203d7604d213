"""The embedded synthetic knowledge world: sources, facts, documents, probes and a BPE tokenizer.

>>> from mechunlearn.world import build_world
>>> world = build_world("micro", seed=0)            # doctest: +SKIP
>>> world.forget_texts()[:1], world.cloze_probes("forget")[:1]   # doctest: +SKIP

See :mod:`mechunlearn.world.core` for the forget / retain split and how categories are defined.
"""

from mechunlearn.world.build import build_world, load_world, preset_cache_dir, resolve_world
from mechunlearn.world.core import DOMAINS, FILLER_SOURCE, World
from mechunlearn.world.generator import (
    COLOURS,
    DERIVED_RELATIONS,
    MATERIALS,
    PRESETS,
    RELATIONS,
    Entity,
    Source,
    WorldConfig,
    category_for,
    make_config,
)
from mechunlearn.world.render import TEMPLATES, RelationTemplates
from mechunlearn.world.tokenizer import EOS_TOKEN, PAD_TOKEN, load_tokenizer, save_tokenizer, train_bpe

__all__ = [
    "build_world",
    "load_world",
    "resolve_world",
    "preset_cache_dir",
    "World",
    "DOMAINS",
    "FILLER_SOURCE",
    "PRESETS",
    "WorldConfig",
    "make_config",
    "Entity",
    "Source",
    "RELATIONS",
    "DERIVED_RELATIONS",
    "MATERIALS",
    "COLOURS",
    "TEMPLATES",
    "RelationTemplates",
    "category_for",
    "load_tokenizer",
    "save_tokenizer",
    "train_bpe",
    "EOS_TOKEN",
    "PAD_TOKEN",
]

# ``mu.world(...)`` (the notebook API) calls mechunlearn.api.world even once this package is imported
from mechunlearn._callable import make_callable as _make_callable  # noqa: E402

_make_callable(__name__, "mechunlearn.api:world")

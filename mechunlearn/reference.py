"""The reference models of a study, pretrained on the embedded world and cached under a content hash.

* **base**: trained on every source (forget target included): the model that knows, to be unlearned;
* **gold**: the same recipe with the forget target removed from the data: what "never saw it" looks like
  (the role of deep-ignorance's filtered model in the seed pipeline). ``pretrain(world, "gold",
  forget_sources=[source])`` gives the gold standard of any source or series.

Pretraining runs the shared loop of ``mechunlearn.training`` on transformers' ``GPTNeoXForCausalLM`` (SDPA
attention, faster on CPU) over packed batches (:mod:`mechunlearn.world.packing`: several documents per row,
each attending only to itself) and writes an HF directory; ``models.load`` then gives the exact
HookedTransformer. Unlearning, by contrast, always runs through the hooked model.

Seam for more kinds (the natively-unlearnable model): a :class:`ReferenceKind` names its training documents
(``world.training_documents(...)``: every text with its source) and may bring its own ``train_model``, which
can reuse :func:`train_world_model` with its own model and step loss (a :class:`PackedBatch` carries per-token
``source_ids``). Built-in kinds are listed by name in ``BUILTIN_REFERENCE_KINDS`` ("module:attribute", imported
on first use, like the method registry); ``register_reference_kind`` adds a user's own.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from mechunlearn.data import Document
from mechunlearn.storage import atomic_directory, cache_root, config_digest
from mechunlearn.training import TrainConfig, TrainResult, train
from mechunlearn.world.packing import PackedBatch, PackedDocuments

__all__ = ["ModelShape", "PretrainRecipe", "RECIPES", "ReferenceKind", "REFERENCE_KINDS", "BUILTIN_REFERENCE_KINDS",
           "register_reference_kind", "get_reference_kind", "pretrain", "reference_dir", "load_reference",
           "new_world_model", "packed_nll", "train_world_model", "recipe_for"]

CACHE_VERSION = "3"  # 3: packed batches, series-world


@dataclass(frozen=True)
class ModelShape:
    """GPT-NeoX architecture of the tiny world models (vocabulary comes from the world's tokenizer)."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 128
    rotary_pct: float = 0.25
    parallel_residual: bool = True


@dataclass(frozen=True)
class PretrainRecipe:
    """How a world model is pretrained: its shape and the training-loop settings. ``train.batch_size`` is the
    number of documents per optimiser step and ``train.max_length`` the row length they are packed into
    (longer documents are truncated)."""

    shape: ModelShape = field(default_factory=ModelShape)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=5e-3, epochs=15, batch_size=32, max_length=96, warmup_ratio=0.05, weight_decay=0.01,
        min_lr_ratio=0.05, eval_split=0.0, progress=True))

    def to_dict(self) -> dict:
        return {"shape": asdict(self.shape), "train": {k: v for k, v in asdict(self.train).items() if k != "progress"}}


# Calibrated on this project's 2-core machines (numbers in docs/reference_models.md). Rows of 96 tokens hold
# every document of both worlds (at most ~80 tokens) and cost ~10 % less attention than rows of 128.
RECIPES: dict[str, PretrainRecipe] = {
    "micro": PretrainRecipe(
        shape=ModelShape(d_model=64, n_layers=2, n_heads=4, d_mlp=256, n_ctx=128),
        train=TrainConfig(lr=5e-3, epochs=40, batch_size=16, max_length=96, warmup_ratio=0.05,
                          weight_decay=0.01, min_lr_ratio=0.05, eval_split=0.0)),
    "default": PretrainRecipe(),
}


# ------------------------------------------------------------------------------------------ reference kinds


@dataclass(frozen=True)
class ReferenceKind:
    """A kind of reference model.

    ``texts(world, forget_sources)`` returns its training data: ``Document``s (``world.training_documents``,
    so the trainer knows every text's source) or plain strings (source ``""``). ``train_model(world, recipe,
    documents, forget_sources, description)`` returns ``(model, TrainResult)`` for a transformers model with
    ``save_pretrained``; None trains the standard GPT-NeoX (:func:`train_world_model`). A kind whose data does
    not depend on the forget target (``depends_on_forget=False``: base) is cached once for every forget set.
    """

    name: str
    description: str
    texts: Callable[[object, tuple[str, ...]], Sequence[Document | str]]
    train_model: Callable[..., tuple[object, TrainResult]] | None = None
    depends_on_forget: bool = True


BASE = ReferenceKind("base", "trained on every source, forget target included",
                     lambda world, forget: world.training_documents(), depends_on_forget=False)
GOLD = ReferenceKind("gold", "gold standard: the same recipe without the forget target (never saw it)",
                     lambda world, forget: world.training_documents(without=forget))

# name -> "module:attribute" of a ReferenceKind, imported on first use (no import-time registration).
BUILTIN_REFERENCE_KINDS: dict[str, str] = {
    "base": "mechunlearn.reference:BASE",
    "gold": "mechunlearn.reference:GOLD",
    "native": "mechunlearn.native.train:NATIVE",
}
_USER_KINDS: dict[str, ReferenceKind] = {}


def get_reference_kind(name: str) -> ReferenceKind:
    if name in _USER_KINDS:
        return _USER_KINDS[name]
    if name not in BUILTIN_REFERENCE_KINDS:
        raise ValueError(f"unknown reference model {name!r}: choose from {', '.join(REFERENCE_KINDS)}")
    module_name, attribute = BUILTIN_REFERENCE_KINDS[name].split(":")
    kind = getattr(importlib.import_module(module_name), attribute)
    if kind.name != name:
        raise ValueError(f"BUILTIN_REFERENCE_KINDS[{name!r}] points to a kind named {kind.name!r}")
    return kind


class _ReferenceKinds(Mapping):
    """Read-only view name -> ReferenceKind over the built-in and the registered kinds (resolved lazily)."""

    def __getitem__(self, name: str) -> ReferenceKind:
        if name not in self:
            raise KeyError(name)
        return get_reference_kind(name)

    def __contains__(self, name: object) -> bool:
        return name in BUILTIN_REFERENCE_KINDS or name in _USER_KINDS

    def __iter__(self) -> Iterator[str]:
        return iter([*BUILTIN_REFERENCE_KINDS, *_USER_KINDS])

    def __len__(self) -> int:
        return len(BUILTIN_REFERENCE_KINDS) + len(_USER_KINDS)


REFERENCE_KINDS: Mapping[str, ReferenceKind] = _ReferenceKinds()


def register_reference_kind(kind: ReferenceKind) -> ReferenceKind:
    """Add a user's own kind; a taken name (built-in or registered) is refused."""
    if kind.name in REFERENCE_KINDS:
        raise ValueError(f"reference kind {kind.name!r} is already registered")
    _USER_KINDS[kind.name] = kind
    return kind


# ------------------------------------------------------------------------------------------ training


def recipe_for(world, recipe: PretrainRecipe | None = None) -> PretrainRecipe:
    """``recipe``, or the world size's recipe (``RECIPES``; an unknown size gets the default one)."""
    if recipe is not None:
        return recipe
    return RECIPES.get(_config_value(world, "size"), RECIPES["default"])


def new_world_model(world, shape: ModelShape):
    """A freshly initialised ``GPTNeoXForCausalLM`` of ``shape`` for the world's tokenizer (seed it first)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = world.tokenizer
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=shape.d_model, num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads, intermediate_size=shape.d_mlp, max_position_embeddings=shape.n_ctx,
        rotary_pct=shape.rotary_pct, use_parallel_residual=shape.parallel_residual, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
    return GPTNeoXForCausalLM(config)


def packed_nll(model, batch: PackedBatch) -> torch.Tensor:
    """Mean next-token NLL over the predicted tokens of a packed batch (``mechunlearn.batching.mean_nll`` of the
    same documents unpacked, to float rounding). The unembedding runs only at predicted positions, and the
    cross-entropy on a contiguous (tokens, vocab) matrix: together ~10 % of a CPU step saved."""
    bias = batch.attention_bias(model.get_output_embeddings().weight.dtype)
    hidden = model.base_model(input_ids=batch.tokens, attention_mask=bias,
                              position_ids=batch.position_ids).last_hidden_state
    targets = batch.target_mask()
    logits = model.get_output_embeddings()(hidden[:, :-1][targets])
    return F.cross_entropy(logits.float(), batch.tokens[:, 1:][targets])


def _packed_step(model, batch: PackedBatch):
    return packed_nll(model, batch), {}


def train_world_model(world, recipe: PretrainRecipe, documents: Sequence[Document], *, model=None,
                      step_loss: Callable | None = None, description: str = "pretrain"):
    """Pretrain ``model`` (default: a new GPT-NeoX of ``recipe.shape``, seeded by ``recipe.train.seed``) on
    ``documents`` with the shared loop; ``step_loss(model, PackedBatch) -> (loss, metrics)`` defaults to
    :func:`packed_nll`. Returns ``(model, TrainResult)``."""
    if model is None:
        torch.manual_seed(recipe.train.seed)
        model = new_world_model(world, recipe.shape)
    data = PackedDocuments(world.tokenizer, documents, recipe.train.batch_size, recipe.train.max_length,
                           seed=recipe.train.seed)
    return model, train(model, step_loss or _packed_step, data, recipe.train, description=description)


def _documents(items: Sequence[Document | str]) -> list[Document]:
    return [item if isinstance(item, Document) else Document("", item) for item in items]


def _tokens_per_epoch(tokenizer, documents: Sequence[Document], max_length: int) -> int:
    encoded = tokenizer([document.text for document in documents], add_special_tokens=False)["input_ids"]
    return sum(min(len(ids), max_length) for ids in encoded)


def _config_value(world, name: str):
    config = world.config
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


# ------------------------------------------------------------------------------------------ the cache


def _forget_key(world, kind: ReferenceKind, forget_sources) -> list[str] | None:
    return list(world.resolve_forget(forget_sources)) if kind.depends_on_forget else None


def _cache_key(world, which: str, forget_sources, recipe: PretrainRecipe) -> str:
    kind = get_reference_kind(which)
    return config_digest({"version": CACHE_VERSION, "world": world.content_hash, "which": which,
                          "forget": _forget_key(world, kind, forget_sources), "recipe": recipe.to_dict()})


def reference_dir(world, which: str = "base", *, forget_sources: Sequence[str] | str | None = None,
                  recipe: PretrainRecipe | None = None, cache_dir: Path | None = None) -> Path:
    """Where ``pretrain`` puts (or has put) this reference model."""
    recipe = recipe_for(world, recipe)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / "models" / f"{which}-{_cache_key(world, which, forget_sources, recipe)}"


def pretrain(world, which: str = "base", *, forget_sources: Sequence[str] | str | None = None,
             recipe: PretrainRecipe | None = None, cache_dir: Path | None = None, force: bool = False,
             progress: bool = True) -> Path:
    """Pretrain reference model ``which`` on ``world`` unless the cache already holds it; return its directory.

    ``forget_sources``: source or series names (default: the world's default forget target). The directory is
    an HF ``GPTNeoXForCausalLM`` checkpoint with the world tokenizer and ``pretrain.json`` (recipe, data sizes,
    loss history, wall time, tokens/s and ``mechunlearn.provenance.environment``). It is written under a
    temporary name and renamed, so an interrupted run leaves no half-written model behind.
    """
    from mechunlearn.provenance import environment

    kind = get_reference_kind(which)
    forget = world.resolve_forget(forget_sources)
    recipe = recipe_for(world, recipe)
    if recipe.train.progress != progress:
        recipe = replace(recipe, train=replace(recipe.train, progress=progress))
    target = reference_dir(world, which, forget_sources=forget, recipe=recipe, cache_dir=cache_dir)
    if (target / "pretrain.json").is_file() and not force:
        return target
    documents = _documents(kind.texts(world, forget))
    trainer = kind.train_model or (lambda w, r, docs, f, d: train_world_model(w, r, docs, description=d))
    model, result = trainer(world, recipe, documents, forget, f"pretrain {which}")
    n_tokens = _tokens_per_epoch(world.tokenizer, documents, recipe.train.max_length)
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        world.tokenizer.save_pretrained(staging)
        summary = {"which": which, "description": kind.description, "world_hash": world.content_hash,
                   "world_size": _config_value(world, "size"), "world_seed": _config_value(world, "seed"),
                   "forget_sources": list(forget) if kind.depends_on_forget else None,
                   "recipe": recipe.to_dict(), "n_texts": len(documents),
                   "sources": sorted({document.source for document in documents}),
                   "tokens_per_epoch": n_tokens, "steps": result.steps,
                   "final_loss": result.history[-1]["loss"] if result.history else None,
                   "loss_history": [round(r["loss"], 5) for r in result.history],
                   "wall_time_s": round(result.wall_time_s, 2),
                   # the recipes run whole epochs (no max_steps)
                   "tokens_per_s": round(n_tokens * recipe.train.epochs / result.wall_time_s)
                   if result.wall_time_s else None,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "environment": environment(device="cpu", dtype="float32", seeds=[recipe.train.seed])}
        (staging / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return target


def load_reference(world, which: str = "base", *, device: str = "auto", dtype: str = "auto", **kwargs):
    """The reference model as a HookedTransformer (pretraining it first if it is not cached)."""
    from mechunlearn import models

    return models.load(pretrain(world, which, **kwargs), device=device, dtype=dtype)

"""The reference models of a study, pretrained on the embedded world and cached under a content hash.

* **base**: trained on every source (forget target included): the model that knows, to be unlearned;
* **gold**: the same recipe with the forget target removed from the data: what "never saw it" looks like
  (the role of deep-ignorance's filtered model in the seed pipeline).

Pretraining runs the shared loop of ``mechunlearn.training`` on transformers' ``GPTNeoXForCausalLM`` (SDPA
attention, faster on CPU) and writes an HF directory; ``models.load`` then gives the exact HookedTransformer.
Unlearning, by contrast, always runs through the hooked model.

Seam for the natively-unlearnable model (a later issue): a ``ReferenceKind`` names the training texts and may
bring its own ``train_model`` (sink-masked MLPs trained with per-source masks). Registering one more kind in
``REFERENCE_KINDS`` makes ``pretrain(world, "native")`` and ``mechunlearn pretrain --which native`` work.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from mechunlearn.storage import atomic_directory, cache_root
from mechunlearn.batching import TextBatchSource, logits_of, mean_nll
from mechunlearn.training import TrainConfig, train

__all__ = ["ModelShape", "PretrainRecipe", "RECIPES", "ReferenceKind", "REFERENCE_KINDS", "register_reference_kind",
           "pretrain", "reference_dir", "load_reference"]

CACHE_VERSION = "2"


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
    """How a world model is pretrained: its shape and the training-loop settings."""

    shape: ModelShape = field(default_factory=ModelShape)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=3e-3, epochs=30, batch_size=32, max_length=128, warmup_ratio=0.05, weight_decay=0.01,
        min_lr_ratio=0.05, eval_split=0.0, progress=True))

    def to_dict(self) -> dict:
        return {"shape": asdict(self.shape), "train": {k: v for k, v in asdict(self.train).items() if k != "progress"}}


# Calibrated on this project's 2-core machines (numbers in README "Reference models").
RECIPES: dict[str, PretrainRecipe] = {
    "micro": PretrainRecipe(
        shape=ModelShape(d_model=64, n_layers=2, n_heads=4, d_mlp=256, n_ctx=128),
        train=TrainConfig(lr=5e-3, epochs=40, batch_size=16, max_length=128, warmup_ratio=0.05,
                          weight_decay=0.01, min_lr_ratio=0.05, eval_split=0.0)),
    "default": PretrainRecipe(),
}


@dataclass(frozen=True)
class ReferenceKind:
    """A kind of reference model: which texts it trains on, and optionally its own trainer."""

    name: str
    description: str
    texts: Callable[[object, Sequence[str] | None], list[str]]
    train_model: Callable[..., object] | None = None  # (world, recipe, texts, forget_sources) -> HF model


REFERENCE_KINDS: dict[str, ReferenceKind] = {}


def register_reference_kind(kind: ReferenceKind) -> ReferenceKind:
    if kind.name in REFERENCE_KINDS:
        raise ValueError(f"reference kind {kind.name!r} is already registered")
    REFERENCE_KINDS[kind.name] = kind
    return kind


register_reference_kind(ReferenceKind(
    "base", "trained on every source, forget target included",
    lambda world, forget: list(world.forget_texts(forget)) + list(world.retain_texts(forget))))
register_reference_kind(ReferenceKind(
    "gold", "gold standard: the same recipe without the forget target (never saw it)",
    lambda world, forget: list(world.retain_texts(forget))))


def _kind(which: str) -> ReferenceKind:
    if which not in REFERENCE_KINDS:
        raise ValueError(f"unknown reference model {which!r}: choose from {', '.join(REFERENCE_KINDS)}")
    return REFERENCE_KINDS[which]


def _recipe_for(world, recipe: PretrainRecipe | None) -> PretrainRecipe:
    if recipe is not None:
        return recipe
    size = world.config["size"] if isinstance(world.config, dict) else world.config.size
    return RECIPES.get(size, RECIPES["default"])


def _cache_key(world, which: str, forget_sources: Sequence[str] | None, recipe: PretrainRecipe) -> str:
    payload = json.dumps({"version": CACHE_VERSION, "world": world.content_hash, "which": which,
                          "forget": sorted(forget_sources or world.default_forget_sources),
                          "recipe": recipe.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def reference_dir(world, which: str = "base", *, forget_sources: Sequence[str] | None = None,
                  recipe: PretrainRecipe | None = None, cache_dir: Path | None = None) -> Path:
    """Where ``pretrain`` puts (or has put) this reference model."""
    recipe = _recipe_for(world, recipe)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    return root / "models" / f"{which}-{_cache_key(world, which, forget_sources, recipe)}"


def _new_model(world, shape: ModelShape):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = world.tokenizer
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=shape.d_model, num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads, intermediate_size=shape.d_mlp, max_position_embeddings=shape.n_ctx,
        rotary_pct=shape.rotary_pct, use_parallel_residual=shape.parallel_residual, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
    return GPTNeoXForCausalLM(config)


def _nll_step(model, batch):
    return mean_nll(logits_of(model(batch.tokens)), batch), {}


def _train_hf_model(world, recipe: PretrainRecipe, texts: list[str], forget_sources, description: str):
    torch.manual_seed(recipe.train.seed)
    model = _new_model(world, recipe.shape)
    data = TextBatchSource(world.tokenizer, texts, recipe.train.batch_size, recipe.train.max_length,
                           seed=recipe.train.seed, group_by_length=True)
    result = train(model, _nll_step, data, recipe.train, description=description)
    return model, result


def pretrain(world, which: str = "base", *, forget_sources: Sequence[str] | None = None,
             recipe: PretrainRecipe | None = None, cache_dir: Path | None = None, force: bool = False,
             progress: bool = True) -> Path:
    """Pretrain reference model ``which`` on ``world`` unless the cache already holds it; return its directory.

    The directory is an HF ``GPTNeoXForCausalLM`` checkpoint with the world tokenizer and ``pretrain.json``
    (recipe, data sizes, final loss, wall time). It is written under a temporary name and renamed, so an
    interrupted run leaves no half-written model behind.
    """
    kind = _kind(which)
    recipe = _recipe_for(world, recipe)
    if recipe.train.progress != progress:
        recipe = replace(recipe, train=replace(recipe.train, progress=progress))
    target = reference_dir(world, which, forget_sources=forget_sources, recipe=recipe, cache_dir=cache_dir)
    if (target / "pretrain.json").is_file() and not force:
        return target
    texts = kind.texts(world, forget_sources)
    trainer = kind.train_model or _train_hf_model
    model, result = trainer(world, recipe, texts, forget_sources, f"pretrain {which}")
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        world.tokenizer.save_pretrained(staging)
        summary = {"which": which, "description": kind.description, "world_hash": world.content_hash,
                   "forget_sources": list(forget_sources or world.default_forget_sources),
                   "recipe": recipe.to_dict(), "n_texts": len(texts), "steps": result.steps,
                   "final_loss": result.history[-1]["loss"] if result.history else None,
                   "loss_history": [round(r["loss"], 5) for r in result.history],
                   "wall_time_s": round(result.wall_time_s, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (staging / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return target


def load_reference(world, which: str = "base", *, device: str = "auto", dtype: str = "auto", **kwargs):
    """The reference model as a HookedTransformer (pretraining it first if it is not cached)."""
    from mechunlearn import models

    return models.load(pretrain(world, which, **kwargs), device=device, dtype=dtype)

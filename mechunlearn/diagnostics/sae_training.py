"""Fitting the sparse autoencoder that ``sae_features`` reads every model through.

A standard ReLU SAE (sae-lens' ``StandardTrainingSAE``, trained by sae-lens' ``SAETrainer``; nothing is
hand-written) is fitted to the BASE model's activations at one hook (default the middle
``blocks.{n_layers // 2}.hook_resid_post``) over forget + retain text. ``fit_sae`` collects base activations with
batched forward passes that stream into the trainer through a bounded shuffle buffer (``buffer_tokens`` rows; when
the whole corpus fits in it, it is kept and reshuffled instead of re-running the model) and trains
``training_tokens`` samples; the result is cached under ``cache_root()/sae/<key>`` with sae-lens'
``save_inference_model`` / ``SAE.load_from_disk`` (key: the model's parameter digest, the hook, the texts and the
settings).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from mechunlearn.batching import iter_batches, tokenize
from mechunlearn.diagnostics.base import layer_of
from mechunlearn.diagnostics.streaming import token_rows
from mechunlearn.hooks import forward_capturing
from mechunlearn.hooks.names import require_hook_names, resid_post
from mechunlearn.storage import atomic_directory, cache_root, config_digest, model_digest, texts_digest

__all__ = ["fit_sae", "activation_batches", "default_hook_name"]


def default_hook_name(model) -> str:
    return resid_post(model.cfg.n_layers // 2)


def _hook_rows(model, tokens: Tensor, mask: Tensor, hook_name: str) -> Tensor:
    layer = layer_of(hook_name)
    # blocks after the hook's own block cannot change it: stop there (a full pass for non-block hooks)
    _, store = forward_capturing(model, tokens, [hook_name], stop_at_layer=layer + 1 if layer >= 0 else None)
    activation = store[hook_name]
    return token_rows(activation.float().flatten(2), mask.to(activation.device))


def activation_batches(model, texts: Sequence[str], hook_name: str, *, train_batch_size: int = 1024,
                       buffer_tokens: int = 65_536, text_batch_size: int = 16, max_length: int = 128,
                       seed: int = 0) -> Iterator[Float[Tensor, "train_batch d_in"]]:
    """An endless iterator of shuffled ``[train_batch_size, d_in]`` activation batches (sae-lens' data provider).

    At most ``buffer_tokens`` (+ one text batch) rows are held: rows are mixed in a buffer, which is shuffled
    when full and half of it handed out. When the whole corpus fits in the buffer it is computed once and
    recycled (no further forward passes); otherwise the model is re-run over the texts epoch after epoch.
    """
    if buffer_tokens < 2 * train_batch_size:
        raise ValueError(f"buffer_tokens ({buffer_tokens}) must be at least twice train_batch_size "
                         f"({train_batch_size}) so a shuffled half-buffer holds a whole batch")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)

    def epoch_rows(epoch: int) -> Iterator[Tensor]:
        for batch in iter_batches(model.tokenizer, texts, text_batch_size, max_length, shuffle_seed=seed + epoch):
            yield _hook_rows(model, batch.tokens.to(device), batch.mask, hook_name)

    def blocks() -> Iterator[Tensor]:
        first, size = [], 0
        for rows in epoch_rows(0):
            first.append(rows)
            size += len(rows)
            if size > buffer_tokens:
                break
        else:
            corpus = torch.cat(first)
            if len(corpus) == 0:
                raise ValueError("the SAE's training texts hold no tokens; pass non-empty texts")
            yield from itertools.repeat(corpus)  # fits: reuse, no more forward passes
        del first
        for epoch in itertools.count():
            yield from epoch_rows(epoch)

    buffer: Tensor | None = None
    for block in blocks():
        buffer = block if buffer is None else torch.cat([buffer, block])
        if len(buffer) < buffer_tokens:
            continue
        buffer = buffer[torch.randperm(len(buffer), generator=generator).to(buffer.device)]
        handed_out = (len(buffer) // 2 // train_batch_size) * train_batch_size
        for start in range(0, handed_out, train_batch_size):
            yield buffer[start:start + train_batch_size]
        buffer = buffer[handed_out:]


def fit_sae(model, texts: Sequence[str], hook_name: str | None = None, *, expansion: int = 4,
            l1_coefficient: float = 2.0, lr: float = 1e-3, training_tokens: int = 400_000,
            train_batch_size: int = 512, buffer_tokens: int = 65_536, text_batch_size: int = 16,
            max_length: int = 128, seed: int = 0, cache: bool = True, cache_dir: str | os.PathLike | None = None):
    """Train (or load from the cache) a standard ReLU SAE with ``expansion * d_in`` features on ``model``'s
    activations at ``hook_name`` over ``texts``; returns sae-lens' inference ``SAE`` on the model's device, with
    ``cfg.metadata.hook_name`` set (so ``HookedSAETransformer.add_sae`` can splice it in).

    Activations are normalised to mean norm sqrt(d_in) during training (sae-lens' "expected_average_only_in",
    folded back into the weights afterwards) so ``l1_coefficient`` does not depend on the model's scale.
    """
    from sae_lens import SAE, SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainerConfig

    hook_name = hook_name or default_hook_name(model)
    require_hook_names(model, [hook_name])
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("fit_sae: no texts to train the SAE on; pass forget + retain texts")
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer attached: load it with mechunlearn.models.load")
    if training_tokens < train_batch_size:
        raise ValueError(f"training_tokens ({training_tokens}) must be at least train_batch_size ({train_batch_size})")
    device = next(model.parameters()).device
    settings = {"version": 2, "hook": hook_name, "expansion": expansion, "l1_coefficient": l1_coefficient, "lr": lr,
                "training_tokens": training_tokens, "train_batch_size": train_batch_size,
                "buffer_tokens": buffer_tokens, "max_length": max_length, "seed": seed, "texts": texts_digest(texts)}
    key = config_digest({"model": model_digest(model), "settings": settings}, length=24)
    path = (Path(cache_dir) if cache_dir is not None else cache_root() / "sae") / key
    if cache and (path / "cfg.json").is_file():
        return SAE.load_from_disk(path, device=str(device))

    first = tokenize(model.tokenizer, texts[:1], max_length)
    d_in = _hook_rows(model, first.tokens.to(device), first.mask, hook_name).shape[-1]
    steps = training_tokens // train_batch_size
    config = StandardTrainingSAEConfig(d_in=d_in, d_sae=expansion * d_in, l1_coefficient=l1_coefficient,
                                       l1_warm_up_steps=steps // 20, normalize_activations="expected_average_only_in",
                                       device=str(device), dtype="float32")
    config.metadata.hook_name = hook_name
    config.metadata.model_name = getattr(model.cfg, "model_name", "")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # leave the caller's RNG alone
        torch.manual_seed(seed)
        sae = StandardTrainingSAE(config)
    trainer_config = SAETrainerConfig(  # wandb stays off (LoggingConfig(log_to_wandb=False) is the default here)
        total_training_samples=training_tokens, train_batch_size_samples=train_batch_size, lr=lr, lr_end=lr,
        lr_scheduler_name="constant", device=str(device), n_batches_for_norm_estimate=min(50, steps),
        dead_feature_window=max(1, steps // 4), feature_sampling_window=max(1, steps // 4))
    data = activation_batches(model, texts, hook_name, train_batch_size=train_batch_size,
                              buffer_tokens=buffer_tokens, text_batch_size=text_batch_size, max_length=max_length,
                              seed=seed)
    trained = SAETrainer(cfg=trainer_config, sae=sae, data_provider=data).fit()
    # Round-trip through sae-lens' own inference format, so a fresh fit and a cache hit are the same object.
    if cache:
        with atomic_directory(path) as staging:  # a concurrent writer of the same key writes the same SAE
            trained.save_inference_model(staging)
        return SAE.load_from_disk(path, device=str(device))
    with tempfile.TemporaryDirectory() as staging:
        trained.save_inference_model(staging)
        return SAE.load_from_disk(staging, device=str(device))

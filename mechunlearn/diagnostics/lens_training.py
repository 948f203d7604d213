"""Training a tuned lens, and its cache.

Trained with Adam to minimise KL(final-layer distribution || lens distribution) averaged over layers and real
tokens, as tuned-lens does (not cross-entropy to the next token: the lens should read what the model will say, not
what is true). Gradients are taken w.r.t. the translators only, so the model never accumulates ``.grad``.

Cache: a trained lens is stored under ``mechunlearn.storage.cache_root()/tuned_lens/<key>``, ``key`` = digest of
the model's parameters (``storage.model_digest``: names, shapes, dtypes and bytes; cheap for the tiny world
models, about 10 s for a 7B model) + the training settings + the training texts, so a second run loads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mechunlearn.batching import TextBatchSource
from mechunlearn.diagnostics.layers import residual_stream_hooks
from mechunlearn.diagnostics.lenses import LogitLens, TunedLens
from mechunlearn.hooks import forward_capturing
from mechunlearn.storage import atomic_directory, cache_root, config_digest, model_digest, texts_digest

__all__ = ["lens_kl", "train_tuned_lens", "load_or_train_tuned_lens"]


def lens_kl(model, lens: LogitLens, tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over lens layers 0..N-1 and real tokens of KL(model's final distribution || lens distribution)."""
    hooks = residual_stream_hooks(model)[:-1]
    logits, store = forward_capturing(model, tokens, [hook for _, hook in hooks])
    final = torch.log_softmax(logits.float(), dim=-1)[mask]
    losses = []
    for layer, hook in hooks:
        lens_logprobs = torch.log_softmax(lens(store[hook][mask], layer).float(), dim=-1)
        losses.append(F.kl_div(lens_logprobs, final, log_target=True, reduction="batchmean"))
    return torch.stack(losses).mean()


def train_tuned_lens(model, texts: Sequence[str], *, steps: int = 300, lr: float = 1e-3, batch_size: int = 8,
                     max_length: int = 128, seed: int = 0) -> tuple[TunedLens, list[float]]:
    """Train a ``TunedLens`` for ``model`` on ``texts`` (Adam, ``steps`` batches); returns it and the loss curve.

    Gradients are taken with ``torch.autograd.grad`` w.r.t. the translators only, so the model's frozen
    ``ln_final``/``unembed`` never accumulate ``.grad``.
    """
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer attached: load it with mechunlearn.models.load")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    lens = TunedLens(model)  # zero-initialised: no random state involved; seed orders the texts
    parameters = list(lens.parameters())
    optimizer = torch.optim.Adam(parameters, lr=lr)
    source = TextBatchSource(model.tokenizer, [t for t in texts if t.strip()], batch_size, max_length, seed)
    device, losses, epoch = next(model.parameters()).device, [], 0
    while len(losses) < steps:
        for batch in source.epoch(epoch):
            loss = lens_kl(model, lens, batch.tokens.to(device), batch.mask.to(device))
            for parameter, gradient in zip(parameters, torch.autograd.grad(loss, parameters)):
                parameter.grad = gradient
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) == steps:
                break
        epoch += 1
    return lens.eval(), losses


def load_or_train_tuned_lens(model, texts: Sequence[str], *, steps: int = 300, lr: float = 1e-3,
                             batch_size: int = 8, max_length: int = 128, seed: int = 0,
                             cache_dir: str | os.PathLike | None = None) -> tuple[TunedLens, dict[str, Any]]:
    """The cached tuned lens of (model weights, texts, settings), trained and stored on the first call.

    Returns the lens and an info dict (``path``, ``loaded`` from cache or not, the training ``losses``).
    """
    from safetensors.torch import load_file, save_file

    settings = {"version": 2, "steps": steps, "lr": lr, "batch_size": batch_size, "max_length": max_length,
                "seed": seed, "objective": "kl_final_to_lens", "texts": texts_digest(texts)}
    key = config_digest({"model": model_digest(model), "settings": settings}, length=24)
    path = Path(cache_dir) if cache_dir is not None else cache_root() / "tuned_lens"
    path = path / key
    if (path / "lens.safetensors").is_file():
        lens = TunedLens(model)
        lens.load_state_dict(load_file(path / "lens.safetensors", device=str(next(model.parameters()).device)))
        info = json.loads((path / "settings.json").read_text())
        return lens.eval(), {"path": str(path), "loaded": True, "losses": info.get("losses", [])}
    lens, losses = train_tuned_lens(model, texts, steps=steps, lr=lr, batch_size=batch_size,
                                    max_length=max_length, seed=seed)

    with atomic_directory(path) as staging:  # a concurrent writer of the same key writes the same lens
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in lens.state_dict().items()},
                  staging / "lens.safetensors")
        (staging / "settings.json").write_text(json.dumps(settings | {"losses": losses}, indent=1))
    return lens, {"path": str(path), "loaded": False, "losses": losses}

"""The shared unlearning loop: every method runs through here, on a HookedTransformer.

``unlearn`` pairs forget and retain batches, builds the method's context (frozen reference copy, tokenizer,
world, the trainable weights with their fp32 masters), runs ``mechunlearn.training.train`` with the method's loss,
and hands the model back in the dtype it came in. ``run`` adds the bookkeeping of the seed pipeline: a run name and
cache key from method + every hyper-parameter (runs never overwrite each other, a finished run is skipped unless
``force``), an HF-format model directory and ``run.json`` with its provenance.

What belongs to the user stays theirs (the team's rule):

* **Permanent hooks and modules spliced in place of hook points are part of the model** (the natively
  unlearnable model's sink masks, an SAE splice): they stay on the model, take part in training, and are copied
  into the frozen reference, which is "the model before unlearning".
* **Temporary hooks present when ``unlearn`` starts are refused** with one ``HooksPresentError``. Such a hook
  (inside ``with model.hooks(...)``, or ``add_hook`` without ``is_permanent``) is ambiguous: training through a
  steering hook changes what is learnt, and silently setting it aside trains a model the user is not looking at.
  Refusing makes the choice explicit: remove it, or make it permanent so it is part of the model.
* Every hook the method adds is removed afterwards, even when it raised; the user's own stay where they were.
* ``requires_grad`` flags and the caller's RNG states are as they were before.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechunlearn.batching import TokenBatch, iter_batches
from mechunlearn.methods.base import UnlearnContext, UnlearningMethod
from mechunlearn.storage import atomic_directory
from mechunlearn.training import (TrainConfig, TrainResult, mark_trainable, seeded_rng, select_parameters,
                                  train)

__all__ = ["PairedBatchSource", "UnlearnResult", "HooksPresentError", "unlearn", "run", "run_name", "run_key",
           "frozen_copy", "assert_no_hooks", "clamp_max_length"]


class HooksPresentError(ValueError):
    """Temporary hooks are attached to the model that is about to be unlearned; the message names them."""


class PairedBatchSource:
    """Yields ``(forget_batch, retain_batch)``: one pass over the forget texts per epoch, retain texts cycled."""

    def __init__(self, tokenizer, forget_texts: Sequence[str], retain_texts: Sequence[str], batch_size: int,
                 max_length: int, seed: int = 0):
        self.tokenizer, self.forget, self.retain = tokenizer, list(forget_texts), list(retain_texts)
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed

    def __len__(self) -> int:
        return -(-len(self.forget) // self.batch_size)

    def _retain_cycle(self, epoch: int) -> Iterator[TokenBatch]:
        round_index = 0
        while True:
            yield from iter_batches(self.tokenizer, self.retain, self.batch_size, self.max_length,
                                    shuffle_seed=self.seed * 7919 + epoch * 101 + round_index + 1)
            round_index += 1

    def epoch(self, index: int) -> Iterator[tuple[TokenBatch, TokenBatch | None]]:
        retain = self._retain_cycle(index) if self.retain else None
        for forget_batch in iter_batches(self.tokenizer, self.forget, self.batch_size, self.max_length,
                                         shuffle_seed=self.seed * 7919 + index):
            yield forget_batch, (next(retain) if retain is not None else None)


@dataclass
class UnlearnResult:
    model: Any
    training: TrainResult
    method: str
    config: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- hooks
def _handles(model) -> Iterator[tuple[str, str, Any]]:
    """``(hook name, direction, LensHandle)`` of every TransformerLens hook on ``model``."""
    for name, point in model.hook_dict.items():
        for direction, handles in (("fwd", point.fwd_hooks), ("bwd", point.bwd_hooks)):
            for handle in handles:
                yield name, direction, handle


def _refuse_temporary_hooks(model) -> None:
    temporary = sorted({f"{name} ({direction})" for name, direction, handle in _handles(model)
                        if not handle.is_permanent})
    if temporary:
        raise HooksPresentError(
            f"the model carries {len(temporary)} temporary hook(s) at {', '.join(temporary[:5])}"
            f"{' ...' if len(temporary) > 5 else ''}: unlearn would train through them. Remove them first "
            "(leave the `with model.hooks(...)` block, or model.reset_hooks()), or attach them with "
            "is_permanent=True if they are part of the model and should train with it.")


def _remove_hooks_added_since(model, kept: set[int]) -> None:
    """Remove every hook whose handle is not in ``kept`` (the ones present when ``unlearn`` started)."""
    for point in model.hook_dict.values():
        for attribute in ("fwd_hooks", "bwd_hooks"):
            remaining = []
            for handle in getattr(point, attribute):
                if id(handle) in kept:
                    remaining.append(handle)
                else:
                    handle.hook.remove()
            setattr(point, attribute, remaining)


def assert_no_hooks(model, allowed: set[int] | None = None) -> None:
    """Raise if a hook point carries a hook that is not one of ``allowed`` (handle ids; default: none)."""
    allowed = allowed or set()
    leaked = sorted({name for name, _, handle in _handles(model) if id(handle) not in allowed})
    if leaked:
        raise RuntimeError(f"hooks left on the model after unlearning: {leaked[:5]}")


def frozen_copy(model):
    """A deep copy in eval mode with no gradients: the reference policy / cached-activation source.

    Permanent hooks and spliced modules are part of the model and come along; ``unlearn`` refuses temporary ones
    before it gets here.
    """
    reference = copy.deepcopy(model)
    reference.eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


# ---------------------------------------------------------------------------------------------------- the loop
_CLAMP_WARNED: set[tuple[int, int]] = set()


def clamp_max_length(max_length: int, model) -> int:
    """``max_length`` capped at the model's context ``cfg.n_ctx`` (as the evals cap it); warns once per process
    for each (max_length, n_ctx) pair."""
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx and max_length > n_ctx:
        if (max_length, n_ctx) not in _CLAMP_WARNED:
            _CLAMP_WARNED.add((max_length, n_ctx))
            warnings.warn(f"max_length {max_length} is longer than the model's context (n_ctx {n_ctx}): texts are "
                          f"cut to {n_ctx} tokens", UserWarning, stacklevel=3)
        return n_ctx
    return max_length


def _train_config(method: UnlearningMethod, progress: bool, max_length: int) -> TrainConfig:
    c = method.config
    return TrainConfig(lr=c.lr, epochs=c.epochs, max_steps=c.max_steps, batch_size=c.batch_size,
                       max_length=max_length, grad_clip=c.grad_clip, grad_accum_steps=c.grad_accum_steps,
                       warmup_ratio=c.warmup_ratio, weight_decay=0.0, eval_split=0.0, seed=c.seed,
                       progress=progress)


def _check_reference(reference, model) -> None:
    if any(a.shape != b.shape for a, b in zip(reference.parameters(), model.parameters())) or \
            reference.cfg.n_layers != model.cfg.n_layers or reference.cfg.d_model != model.cfg.d_model:
        raise ValueError("the reference model has another shape than the model being unlearned: "
                         "pass a reference built from the same checkpoint")


def unlearn(model, method: UnlearningMethod, forget_texts: Sequence[str], retain_texts: Sequence[str] = (), *,
            world: Any = None, reference: Any = None, progress: bool = True,
            evaluate: Callable[[Any], dict[str, float]] | None = None) -> UnlearnResult:
    """Unlearn ``forget_texts`` from ``model`` (in place) with ``method``; return the model and its history.

    A model loaded in bf16 / fp16 trains through fp32 master weights and comes back in its own dtype
    (``result.training.precision`` says what moved). Raises ``HooksPresentError`` if temporary hooks are attached.
    """
    from mechunlearn.models import FIXED_PARAMETERS

    if not forget_texts:
        raise ValueError("the forget set is empty: pass at least one forget text (see --forget or the world)")
    if method.needs_retain and not retain_texts:
        raise ValueError(f"method {method.name} needs retain texts: pass --retain FILE or use a world")
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer attached: load it with mechunlearn.models.load(dir) "
                         "from a directory that holds tokenizer files, or pass tokenizer= to load")
    _refuse_temporary_hooks(model)
    method.validate(model)
    device = next(model.parameters()).device
    max_length = clamp_max_length(method.config.max_length, model)
    if method.needs_reference:
        if reference is None:
            reference = frozen_copy(model)
        else:
            _check_reference(reference, model)
    config = _train_config(method, progress, max_length)
    data = PairedBatchSource(model.tokenizer, forget_texts, retain_texts, config.batch_size, config.max_length,
                             seed=config.seed)

    def step_loss(current_model, batch):
        forget_batch, retain_batch = batch
        return method.loss(current_model, forget_batch.to(device),
                           retain_batch.to(device) if retain_batch is not None else None)

    kept = {id(handle) for _, _, handle in _handles(model)}
    requires_grad_before = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        weights = mark_trainable(model, select_parameters(model, method.trainable_pattern(model),
                                                          exclude=FIXED_PARAMETERS))
        context = UnlearnContext(tokenizer=model.tokenizer, reference=reference, forget_texts=list(forget_texts),
                                 retain_texts=list(retain_texts), world=world, device=device, progress=progress,
                                 weights=weights, max_length=max_length)
        with seeded_rng(config.seed):  # a method's setup may draw (noise, targets): seeded, caller untouched
            method.setup(model, context)
            result = train(model, step_loss, data, config, parameters=weights, evaluate=evaluate,
                           after_step=method.after_step, description=f"unlearn {method.name}")
    finally:
        method.release()
        _remove_hooks_added_since(model, kept)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires_grad_before[name])
    assert_no_hooks(model, allowed=kept)
    return UnlearnResult(model=model, training=result, method=method.name, config=method.config.to_dict())


# --------------------------------------------------------------------------------------------- runs on disk
def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "-".join(str(item) for item in value)
    return str(value)


def run_key(method: UnlearningMethod, base_id: str, data_id: str) -> str:
    """Hash of method name, every hyper-parameter, the base model and the data: the skip-if-done key."""
    payload = json.dumps({"method": method.name, "config": method.config.to_dict(), "base": base_id,
                          "data": data_id}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_name(method: UnlearningMethod, key: str) -> str:
    """Readable name: method, the hyper-parameters that differ from the method's defaults, and the key."""
    defaults = method.Config().to_dict()
    changed = [f"{name}{_short(value)}" for name, value in method.config.to_dict().items()
               if defaults.get(name) != value]
    return "__".join([method.name, *(["_".join(changed)] if changed else []), key])


def _data_id(forget_texts: Sequence[str], retain_texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in [*forget_texts, "\x00", *retain_texts]:
        digest.update(text.encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:16]


def run(method: UnlearningMethod, model_dir: str | os.PathLike, out_root: str | os.PathLike,
        forget_texts: Sequence[str], retain_texts: Sequence[str] = (), *, world: Any = None, force: bool = False,
        device: str = "auto", dtype: str = "auto", progress: bool = True,
        evaluate: Callable[[Any], dict[str, Any]] | None = None) -> Path:
    """Unlearn the checkpoint at ``model_dir`` and write ``out_root/<run name>/`` (HF model + run.json).

    A run whose directory already holds ``run.json`` is skipped (returned as is) unless ``force``. Nothing is
    written until training finished without error; the directory appears by an atomic rename. The model is saved
    in the dtype it was loaded in; ``run.json`` records it, the run's environment (versions, device, threads) and
    its seed.
    """
    from mechunlearn import models
    from mechunlearn.numeric import to_json
    from mechunlearn.provenance import environment

    model_dir = Path(model_dir)
    base_id = str(model_dir.resolve())
    key = run_key(method, base_id, _data_id(forget_texts, retain_texts))
    target = Path(out_root) / run_name(method, key)
    if (target / "run.json").is_file() and not force:
        return target
    model = models.load(model_dir, device=device, dtype=dtype)
    load_dtype = str(model.cfg.dtype).replace("torch.", "")
    model_device = next(model.parameters()).device
    started = time.perf_counter()
    result = unlearn(model, method, forget_texts, retain_texts, world=world, progress=progress)
    metrics = evaluate(model) if evaluate is not None else {}
    record = {"method": method.name, "run_name": target.name, "key": key, "config": method.config.to_dict(),
              "base_model": base_id, "load_dtype": load_dtype, "n_forget_texts": len(forget_texts),
              "n_retain_texts": len(retain_texts), "steps": result.training.steps,
              "precision": result.training.precision,
              "loss_history": result.training.history,
              "metrics": metrics, "wall_time_s": round(time.perf_counter() - started, 2),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "environment": environment(device=model_device, dtype=model.cfg.dtype, seeds=[method.config.seed])}
    with atomic_directory(target) as staging:
        models.save(model, staging / "model")
        (staging / "run.json").write_text(json.dumps(to_json(record), indent=2, default=str))
    return target


# ``mu.unlearn(...)`` (the notebook API) calls mechunlearn.api.unlearn even once this module is imported
from mechunlearn._callable import make_callable as _make_callable  # noqa: E402

_make_callable(__name__, "mechunlearn.api:unlearn")

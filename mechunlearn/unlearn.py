"""The shared unlearning loop: every method runs through here, on a HookedTransformer.

``unlearn`` pairs forget and retain batches, builds the method's context (frozen reference copy, tokenizer,
world), selects trainable parameters, runs ``mechunlearn.training.train`` with the method's loss, and guarantees
that no hook is left on the model afterwards, even when the method raised. ``run`` adds the bookkeeping of the
seed pipeline: a run name and cache key from method + every hyper-parameter (runs never overwrite each other, a
finished run is skipped unless ``force``), an HF-format model directory and ``run.json``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechunlearn.storage import atomic_directory
from mechunlearn.batching import TokenBatch, iter_batches
from mechunlearn.methods.base import UnlearnContext, UnlearningMethod
from mechunlearn.training import TrainConfig, TrainResult, select_parameters, train

__all__ = ["PairedBatchSource", "UnlearnResult", "unlearn", "run", "run_name", "run_key", "frozen_copy",
           "assert_no_hooks"]


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


def frozen_copy(model):
    """A deep copy in eval mode with no gradients: the reference policy / cached-activation source."""
    reference = copy.deepcopy(model)
    reference.eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


def assert_no_hooks(model) -> None:
    """Raise if any hook point still carries a forward or backward hook."""
    leaked = [name for name, point in model.hook_dict.items() if point.fwd_hooks or point.bwd_hooks]
    if leaked:
        raise RuntimeError(f"hooks left on the model after unlearning: {leaked[:5]}")


def _train_config(method: UnlearningMethod, progress: bool) -> TrainConfig:
    c = method.config
    return TrainConfig(lr=c.lr, epochs=c.epochs, max_steps=c.max_steps, batch_size=c.batch_size,
                       max_length=c.max_length, grad_clip=c.grad_clip, grad_accum_steps=c.grad_accum_steps,
                       warmup_ratio=c.warmup_ratio, weight_decay=0.0, eval_split=0.0, seed=c.seed,
                       progress=progress)


def unlearn(model, method: UnlearningMethod, forget_texts: Sequence[str], retain_texts: Sequence[str] = (), *,
            world: Any = None, reference: Any = None, progress: bool = True,
            evaluate: Callable[[Any], dict[str, float]] | None = None) -> UnlearnResult:
    """Unlearn ``forget_texts`` from ``model`` (in place) with ``method``; return the model and its history."""
    if not forget_texts:
        raise ValueError("the forget set is empty: pass at least one forget text (see --forget or the world)")
    if method.needs_retain and not retain_texts:
        raise ValueError(f"method {method.name} needs retain texts: pass --retain FILE or use a world")
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer attached: load it with mechunlearn.models.load(dir) "
                         "from a directory that holds tokenizer files, or pass tokenizer= to load")
    method.validate(model)
    device = next(model.parameters()).device
    if method.needs_reference:
        if reference is None:
            reference = frozen_copy(model)
        elif any(a.shape != b.shape for a, b in zip(reference.parameters(), model.parameters())) or \
                reference.cfg.n_layers != model.cfg.n_layers or reference.cfg.d_model != model.cfg.d_model:
            raise ValueError("the reference model has another shape than the model being unlearned: "
                             "pass a reference built from the same checkpoint")
    context = UnlearnContext(tokenizer=model.tokenizer, reference=reference, forget_texts=list(forget_texts),
                             retain_texts=list(retain_texts), world=world, device=device, progress=progress)
    config = _train_config(method, progress)
    data = PairedBatchSource(model.tokenizer, forget_texts, retain_texts, config.batch_size, config.max_length,
                             seed=config.seed)

    def step_loss(current_model, batch):
        forget_batch, retain_batch = batch
        return method.loss(current_model, forget_batch.to(device),
                           retain_batch.to(device) if retain_batch is not None else None)

    from mechunlearn.models import FIXED_PARAMETERS

    requires_grad_before = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        method.setup(model, context)
        parameters = select_parameters(model, method.trainable_pattern(model), exclude=FIXED_PARAMETERS)
        result = train(model, step_loss, data, config, parameters=parameters, evaluate=evaluate,
                       before_step=method.after_step, description=f"unlearn {method.name}")
    finally:
        model.reset_hooks(including_permanent=True)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(requires_grad_before[name])
    assert_no_hooks(model)
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
    written until training finished without error; the directory appears by an atomic rename.
    """
    from mechunlearn import models

    model_dir = Path(model_dir)
    base_id = str(model_dir.resolve())
    key = run_key(method, base_id, _data_id(forget_texts, retain_texts))
    target = Path(out_root) / run_name(method, key)
    if (target / "run.json").is_file() and not force:
        return target
    model = models.load(model_dir, device=device, dtype=dtype)
    started = time.perf_counter()
    result = unlearn(model, method, forget_texts, retain_texts, world=world, progress=progress)
    metrics = evaluate(model) if evaluate is not None else {}
    record = {"method": method.name, "run_name": target.name, "key": key, "config": method.config.to_dict(),
              "base_model": base_id, "n_forget_texts": len(forget_texts), "n_retain_texts": len(retain_texts),
              "steps": result.training.steps,
              "loss_history": result.training.history,
              "metrics": metrics, "wall_time_s": round(time.perf_counter() - started, 2),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_directory(target) as staging:
        models.save(model, staging / "model")
        (staging / "run.json").write_text(json.dumps(record, indent=2, default=_json_default))
    return target


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)

"""One training loop for pretraining and unlearning.

Following SAELens' trainer, the loop is handed its parts and owns only the loop: a ``step_loss`` that turns one
batch into a scalar loss (plus metrics to log), a data source that yields batches per epoch, an optional
evaluator and an optional checkpoint function. It does AdamW with linear warmup and cosine decay, gradient
clipping, gradient accumulation, seeding, tqdm progress and a loss history, and it stops with a clear error the
moment a loss is NaN or infinite.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "train", "seed_everything", "select_parameters",
           "cosine_schedule"]


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN/inf loss, nothing to train); the message says where and why."""


@dataclass
class TrainConfig:
    """Optimiser and schedule settings shared by every method (defaults: the seed pipeline's)."""

    lr: float = 1e-5
    epochs: int = 1
    max_steps: int | None = None  # optimiser steps; caps epochs when set
    batch_size: int = 4
    max_length: int = 512
    grad_clip: float = 1.0
    grad_accum_steps: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    adam_betas: tuple[float, float] = (0.9, 0.999)
    eval_split: float = 0.1
    eval_every: int = 0  # optimiser steps between evaluations; 0 = only at the end
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        positive = {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size,
                    "max_length": self.max_length, "grad_accum_steps": self.grad_accum_steps}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {value!r}")
        if not 0.0 <= self.eval_split < 1.0:
            raise ValueError(f"TrainConfig.eval_split must be in [0, 1), got {self.eval_split!r}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"TrainConfig.max_steps must be > 0 or None, got {self.max_steps!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What a run did: per-step loss and metric history, evaluations, steps taken and wall time."""

    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0


@runtime_checkable
class BatchSource(Protocol):
    """Yields the batches of one epoch; ``len`` is the number of batches per epoch."""

    def epoch(self, index: int) -> Iterable[Any]: ...

    def __len__(self) -> int: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_parameters(model: torch.nn.Module, pattern: str | None,
                      exclude: tuple[str, ...] = ()) -> list[torch.nn.Parameter]:
    """Parameters whose name matches the regex ``pattern`` (``re.search``); all of them when ``pattern`` is None.
    Names in ``exclude`` never train (e.g. TransformerLens' ``unembed.b_U``, which GPT-NeoX does not have).

    The others get ``requires_grad=False`` so they stay bitwise unchanged (AdamW's weight decay never touches a
    parameter that is not handed to the optimiser).
    """
    named = [(name, parameter) for name, parameter in model.named_parameters()]
    for name, parameter in named:
        if name in exclude:
            parameter.requires_grad_(False)
    named = [(name, parameter) for name, parameter in named if name not in exclude]
    if pattern is None:
        for _, parameter in named:
            parameter.requires_grad_(True)
        return [parameter for _, parameter in named]
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"trainable-parameter pattern {pattern!r} is not a valid regex: {error}") from error
    chosen = []
    for name, parameter in named:
        keep = bool(regex.search(name))
        parameter.requires_grad_(keep)
        if keep:
            chosen.append(parameter)
    if not chosen:
        examples = ", ".join(name for name, _ in named[:6])
        raise ValueError(f"trainable-parameter pattern {pattern!r} matches no parameter; names look like: {examples}")
    return chosen


def cosine_schedule(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batches(source: BatchSource, epochs: int) -> Iterator[tuple[int, Any]]:
    for epoch in range(epochs):
        for batch in source.epoch(epoch):
            yield epoch, batch


def train(model: torch.nn.Module, step_loss: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]],
          data: BatchSource, config: TrainConfig, *, parameters: list[torch.nn.Parameter] | None = None,
          evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
          checkpoint: Callable[[torch.nn.Module, int], None] | None = None,
          before_step: Callable[[torch.nn.Module, int], None] | None = None,
          description: str = "train") -> TrainResult:
    """Run ``step_loss`` over ``data`` with AdamW + warmup/cosine, clipping and accumulation.

    ``step_loss(model, batch)`` returns ``(loss, metrics)``; it may run extra forward/backward passes of its own
    (LAT's adversary does) as long as it leaves no gradient on the model's parameters. ``before_step`` runs after
    each optimiser step (projections, masks). Raises ``TrainingError`` at the first NaN/inf loss, naming the step.
    """
    seed_everything(config.seed)
    trainable = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("no trainable parameters: check the trainable-parameter pattern")
    batches_per_epoch = len(data)
    if batches_per_epoch == 0:
        raise TrainingError("the training data yields no batch: is the dataset empty?")
    total_steps = math.ceil(batches_per_epoch * config.epochs / config.grad_accum_steps)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.adam_betas,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_schedule(step, total_steps, warmup_steps, config.min_lr_ratio))
    result = TrainResult()
    started = time.perf_counter()
    model.train()
    progress = tqdm(total=total_steps, desc=description, disable=not config.progress, leave=False)
    step, micro, accumulated = 0, 0, {}
    try:
        for epoch, batch in _batches(data, config.epochs):
            loss, metrics = step_loss(model, batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"{description}: loss became {loss.item()} at optimiser step {step} "
                                    f"(epoch {epoch}); lower the learning rate or check the data. Nothing was saved.")
            (loss / config.grad_accum_steps).backward()
            micro += 1
            for key, value in {"loss": loss, **metrics}.items():
                value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                accumulated[key] = accumulated.get(key, 0.0) + value / config.grad_accum_steps
            if micro % config.grad_accum_steps:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip if config.grad_clip > 0 else math.inf)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if before_step is not None:
                before_step(model, step)
            record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                      "grad_norm": float(grad_norm), **accumulated}
            result.history.append(record)
            accumulated = {}
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            if evaluate is not None and config.eval_every and step % config.eval_every == 0 and step < total_steps:
                model.eval()
                result.evaluations.append({"step": step, **evaluate(model)})
                model.train()
            if checkpoint is not None and config.eval_every and step % config.eval_every == 0:
                checkpoint(model, step)
            if step >= total_steps:
                break
    finally:
        progress.close()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
    if evaluate is not None:
        result.evaluations.append({"step": step, **evaluate(model)})
    result.steps = step
    result.wall_time_s = time.perf_counter() - started
    return result

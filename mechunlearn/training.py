"""One training loop for pretraining, unlearning and attacks.

Following SAELens' trainer, the loop is handed its parts and owns only the loop: a ``step_loss`` that turns one
batch into a scalar loss (plus metrics to log), a data source that yields batches per epoch, an optional
evaluator and an optional checkpoint function. It does AdamW with linear warmup and cosine decay, gradient
clipping, gradient accumulation, seeded randomness that leaves the caller's RNGs alone, tqdm progress and a loss
history, and it stops with a clear error the moment a loss is NaN or infinite.

**Precision.** Parameters held in bf16 / fp16 train through fp32 master weights (``TrainableWeights``): AdamW
steps an fp32 copy, and the model's own low-precision parameters are rewritten from it (rounded to nearest) after
every step. Raw bf16 AdamW drops every update smaller than half a bf16 step of the weight (``w + 1e-5 == w`` for
most weights at lr 1e-5), so a bf16 run at the seed's learning rate changed a few percent of the weights where fp32
changed nearly all of them. fp16 additionally gets dynamic loss scaling (``torch.amp.GradScaler``); a step it
skips for an overflow is recorded in the history, never hidden. fp32 parameters train as they always did (the
master copy *is* the parameter), bit for bit.
"""

from __future__ import annotations

import math
import random
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "TrainableWeights", "train", "select_parameters",
           "mark_trainable",
           "cosine_schedule", "seeded_rng", "LOW_PRECISION"]

LOW_PRECISION = (torch.bfloat16, torch.float16)


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
    fp16_init_scale: float = 2.0 ** 12  # first loss scale of an fp16 run (halved at each overflow, grown when stable)

    def __post_init__(self) -> None:
        positive = {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size,
                    "max_length": self.max_length, "grad_accum_steps": self.grad_accum_steps,
                    "fp16_init_scale": self.fp16_init_scale}
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
    """What a run did: per-step loss and metric history, evaluations, steps taken, wall time, and precision.

    ``precision``: the parameters' dtype(s), the master dtype, how many steps fp16 loss scaling skipped, and the
    fraction of (sampled) trained weights that moved in the master copy and in the model itself.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0
    precision: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class BatchSource(Protocol):
    """Yields the batches of one epoch; ``len`` is the number of batches per epoch."""

    def epoch(self, index: int) -> Iterable[Any]: ...

    def __len__(self) -> int: ...


# ------------------------------------------------------------------------------------------------ randomness
@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global generators (CPU and every CUDA device) for the block, then put
    the caller's states back exactly as they were.

    Why fork the global generators instead of passing a ``torch.Generator`` around: dropout, ``torch.randn`` in a
    user's ``step_loss`` and third-party layers draw from the global generator and take no generator argument;
    forking makes them reproducible from ``seed`` while the caller's own random stream is untouched. Everything
    this package draws itself uses local generators (``random.Random(seed)``, ``torch.Generator``).
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


# ------------------------------------------------------------------------------------------ what trains
def select_parameters(model: torch.nn.Module, pattern: str | None,
                      exclude: Sequence[str] = ()) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of every parameter whose name matches the regex ``pattern`` (``re.search``); all of
    them when ``pattern`` is None. Names in ``exclude`` never train (e.g. TransformerLens' ``unembed.b_U``, which
    GPT-NeoX does not have). Changes nothing on the model: the caller decides ``requires_grad``.

    The one selector of the package: the shared unlearning loop, weight-space methods (via ``TrainableWeights``)
    and attacks all choose trainable parameters through it.
    """
    named = [(name, parameter) for name, parameter in model.named_parameters() if name not in exclude]
    if pattern is None:
        return named
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"trainable-parameter pattern {pattern!r} is not a valid regex: {error}") from error
    chosen = [(name, parameter) for name, parameter in named if regex.search(name)]
    if not chosen:
        examples = ", ".join(name for name, _ in named[:6])
        raise ValueError(f"trainable-parameter pattern {pattern!r} matches no parameter; names look like: {examples}")
    return chosen


def mark_trainable(model: torch.nn.Module, chosen: Sequence[tuple[str, torch.nn.Parameter]]) -> "TrainableWeights":
    """Give exactly ``chosen`` (from ``select_parameters``) ``requires_grad`` and every other parameter of
    ``model`` none (so it gets no gradient and stays bitwise equal); return them as ``TrainableWeights``. The caller
    restores ``requires_grad`` afterwards if the model is not its own copy."""
    chosen_ids = {id(parameter) for _, parameter in chosen}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in chosen_ids)
    return TrainableWeights(chosen)


class TrainableWeights:
    """The parameters a run trains, each with its fp32 master: the parameter itself when it is fp32, an fp32 copy
    when it is bf16 / fp16 (the model keeps its low-precision parameter as the working copy its forward uses).

    Why master weights rather than fp32 parameters under ``torch.autocast``: the model stays exactly the model the
    user loaded (same dtype, same ``cfg.dtype``, same numerics in every hook, in the evals and in its frozen
    reference copy, so a policy equals its reference bit for bit at step 0), the frozen weights cost nothing extra,
    and autocast's per-op casting rules would make hooked activations a mix of dtypes. The memory is the same
    (docs/methods.md, "The shared loop: precision, memory, hooks and randomness").

    Code that edits weights directly (weight noise, a distance to the start) works on ``masters`` and then calls
    ``write_back``; gradients that reach a master directly (a loss term computed from it) add to those that come
    from the working copy.
    """

    _SAMPLE = 4096  # elements per tensor watched for "did the weight move" (a cheap, size-weighted estimate)

    def __init__(self, named_parameters: Sequence[tuple[str, torch.nn.Parameter]]):
        self.names = [name for name, _ in named_parameters]
        self.working = [parameter for _, parameter in named_parameters]
        self._masters: list[Tensor] | None = None
        self._handles: list[Any] = []
        self._probes: list[tuple[Tensor, Tensor]] = []

    @property
    def masters(self) -> list[Tensor]:
        """The fp32 master of every trained parameter, made on first use (so a method's own set-up, e.g. WHP's
        reinforced model, runs before the 4 bytes per parameter of the copies exist)."""
        if self._masters is None:
            self._masters = [parameter.detach().float().clone().requires_grad_(True)
                             if parameter.dtype in LOW_PRECISION else parameter for parameter in self.working]
        return self._masters

    @classmethod
    def of(cls, model: torch.nn.Module, parameters: Iterable[torch.nn.Parameter] | None = None) -> "TrainableWeights":
        """From a list of ``model``'s parameters (names looked up), or every parameter with ``requires_grad``."""
        names = {id(parameter): name for name, parameter in model.named_parameters()}
        chosen = list(parameters) if parameters is not None else [p for p in model.parameters() if p.requires_grad]
        return cls([(names.get(id(parameter), f"parameter_{index}"), parameter)
                    for index, parameter in enumerate(chosen)])

    def __len__(self) -> int:
        return len(self.working)

    @property
    def mixed(self) -> bool:
        """Whether any trained parameter is low precision (so masters are separate copies)."""
        return any(parameter.dtype in LOW_PRECISION for parameter in self.working)

    @property
    def working_dtypes(self) -> list[str]:
        return sorted({str(parameter.dtype).replace("torch.", "") for parameter in self.working})

    def named_masters(self) -> list[tuple[str, Tensor]]:
        return list(zip(self.names, self.masters))

    @torch.no_grad()
    def write_back(self) -> None:
        """Round every master into its low-precision working parameter (nearest; a no-op for fp32)."""
        if self._masters is None:  # no master made yet: the parameters are the truth
            return
        for master, working in zip(self._masters, self.working):
            if master is not working:
                working.copy_(master)

    # -- gradients: the working copy's gradient goes into the fp32 master as soon as it is complete, so gradient
    # accumulation sums in fp32 and no low-precision gradient outlives its own backward pass.
    def attach(self) -> None:
        for master, working in zip(self.masters, self.working):
            if master is not working:
                self._handles.append(working.register_post_accumulate_grad_hook(_into_master(master)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for master, working in zip(self._masters or [], self.working):
            if master is not working:
                working.grad = None

    # -- did the weights move?
    def reset_probes(self) -> None:
        """Remember a fixed sample of every master's current values (``movement`` compares against it)."""
        self._probes = []
        for master in self.masters:
            flat = master.detach().reshape(-1)
            count = min(flat.numel(), self._SAMPLE)  # evenly spaced, in integers (exact for any tensor size)
            index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)
            self._probes.append((index, flat[index].float().clone()))

    @torch.no_grad()
    def movement(self) -> dict[str, float]:
        """Fraction of trained weights that differ from the last ``reset_probes``, in the masters and in the model's
        own (possibly low-precision) parameters: estimated from the fixed sample, weighted by tensor size."""
        moved_master = moved_working = total = 0.0
        for (index, start), master, working in zip(self._probes, self.masters, self.working):
            weight = master.numel() / max(index.numel(), 1)  # each sample stands for this many elements
            moved_master += weight * int((master.detach().reshape(-1)[index].float() != start).sum())
            moved_working += weight * int((working.detach().reshape(-1)[index].float()
                                           != start.to(working.dtype).float()).sum())
            total += master.numel()
        total = max(total, 1.0)
        return {"moved_fraction_master": moved_master / total, "moved_fraction_model": moved_working / total}


def _into_master(master: Tensor) -> Callable[[Tensor], None]:
    def hook(working: Tensor) -> None:
        gradient, working.grad = working.grad, None
        if gradient is None:
            return
        if master.grad is None:
            master.grad = gradient.to(torch.float32)
        else:
            master.grad.add_(gradient)

    return hook


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


# ------------------------------------------------------------------------------------------------- the loop
def train(model: torch.nn.Module, step_loss: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]],
          data: BatchSource, config: TrainConfig, *,
          parameters: TrainableWeights | Sequence[torch.nn.Parameter] | None = None,
          evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
          checkpoint: Callable[[torch.nn.Module, int], None] | None = None,
          after_step: Callable[[torch.nn.Module, int], None] | None = None,
          description: str = "train") -> TrainResult:
    """Run ``step_loss`` over ``data`` with AdamW + warmup/cosine, clipping and accumulation.

    ``step_loss(model, batch)`` returns ``(loss, metrics)``; it may run extra forward/backward passes of its own
    (LAT's adversary does) as long as it leaves no gradient on the model's parameters. ``parameters``: a list of
    the model's parameters, a ``TrainableWeights`` built beforehand (the unlearning loop does, so methods can edit
    the fp32 masters in ``setup``), or None for every parameter with ``requires_grad``. ``after_step(model, step)``
    runs after each optimiser step, once the model holds the new weights (edit weights there through the
    ``TrainableWeights`` masters and ``write_back``). Randomness inside is seeded from ``config.seed`` and the
    caller's RNG states are restored afterwards. Raises ``TrainingError`` at the first NaN/inf loss, naming the step.
    """
    with seeded_rng(config.seed):
        weights = parameters if isinstance(parameters, TrainableWeights) else TrainableWeights.of(model, parameters)
        if not len(weights):
            raise TrainingError("no trainable parameters: check the trainable-parameter pattern")
        if len(data) == 0:
            raise TrainingError("the training data yields no batch: is the dataset empty?")
        return _run(model, step_loss, data, config, weights, evaluate, checkpoint, after_step, description)


def _run(model, step_loss, data, config: TrainConfig, weights: TrainableWeights, evaluate, checkpoint, after_step,
         description: str) -> TrainResult:
    total_steps = math.ceil(len(data) * config.epochs / config.grad_accum_steps)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(weights.masters, lr=config.lr, betas=config.adam_betas,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_schedule(step, total_steps, warmup_steps, config.min_lr_ratio))
    fp16 = any(parameter.dtype == torch.float16 for parameter in weights.working)
    scaler = (torch.amp.GradScaler(weights.working[0].device.type, init_scale=config.fp16_init_scale)
              if fp16 else None)
    result = TrainResult()
    started = time.perf_counter()
    weights.reset_probes()
    weights.attach()
    model.train()
    progress = tqdm(total=total_steps, desc=description, disable=not config.progress, leave=False)
    step, micro, accumulated, skipped = 0, 0, {}, 0
    try:
        for epoch, batch in _batches(data, config.epochs):
            loss, metrics = step_loss(model, batch)
            if not torch.isfinite(loss):
                raise TrainingError(f"{description}: loss became {loss.item()} at optimiser step {step} "
                                    f"(epoch {epoch}); lower the learning rate or check the data. Nothing was saved.")
            scaled = loss / config.grad_accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            micro += 1
            for key, value in {"loss": loss, **metrics}.items():
                value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                accumulated[key] = accumulated.get(key, 0.0) + value / config.grad_accum_steps
            if micro % config.grad_accum_steps:
                continue
            record = {"step": step, "epoch": epoch}
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(weights.masters,
                                                       config.grad_clip if config.grad_clip > 0 else math.inf)
            if scaler is not None:
                scale = scaler.get_scale()
                scaler.step(optimizer)  # skipped when a gradient overflowed fp16
                scaler.update()
                record.update(loss_scale=scale, skipped=float(scaler.get_scale() < scale))
                skipped += int(scaler.get_scale() < scale)
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            weights.write_back()
            if after_step is not None:
                after_step(model, step)
            record.update(lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm), **accumulated)
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
        weights.detach()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
    result.precision = _precision_record(weights, skipped, description)
    if evaluate is not None:
        result.evaluations.append({"step": step, **evaluate(model)})
    result.steps = step
    result.wall_time_s = time.perf_counter() - started
    return result


def _precision_record(weights: TrainableWeights, skipped: int, description: str) -> dict[str, Any]:
    """What precision the run trained in, and a loud warning when the model cannot hold what the masters learnt."""
    record: dict[str, Any] = {"parameter_dtypes": weights.working_dtypes,
                              "master_dtype": "float32" if weights.mixed else weights.working_dtypes[0],
                              "skipped_steps": skipped, **weights.movement()}
    if skipped:
        warnings.warn(f"{description}: fp16 loss scaling skipped {skipped} optimiser step(s) whose gradients "
                      "overflowed (see 'skipped' in the history); load the model in bf16 or fp32 to avoid it",
                      RuntimeWarning, stacklevel=4)
    master, model = record["moved_fraction_master"], record["moved_fraction_model"]
    if weights.mixed and master > 0 and model < 0.5 * master:
        dtypes = "/".join(weights.working_dtypes)
        warnings.warn(f"{description}: {master:.0%} of the trained weights moved in the fp32 master copy but only "
                      f"{model:.0%} differ in the {dtypes} model: most updates are smaller than {dtypes} can "
                      "represent and are lost when written back. Train longer or with a larger learning rate, or "
                      "load the model with dtype='fp32' to keep them.", RuntimeWarning, stacklevel=4)
    return record

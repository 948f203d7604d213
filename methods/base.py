"""What every unlearning method is: a hyper-parameter dataclass and a loss over a forget and a retain batch.

The forget/retain unpacking, the optimiser, schedules, clipping, accumulation, NaN checks and hook clean-up all
live once in ``mechunlearn.unlearn`` (the shared loop); a method file holds only what makes it that method.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from mechunlearn.batching import TokenBatch, logits_of, mean_nll, sequence_logprobs

__all__ = ["MethodConfig", "UnlearnContext", "UnlearningMethod", "parse_layers", "nll", "sequence_logprob"]


@dataclass
class MethodConfig:
    """Hyper-parameters every method shares (the seed pipeline's defaults).

    ``trainable`` is a regex over TransformerLens parameter names (``blocks.3.mlp.W_out``...) choosing what
    trains; parameters it does not match stay bitwise equal. ``None`` trains everything.
    """

    lr: float = 1e-5
    epochs: int = 1
    batch_size: int = 4
    max_length: int = 512
    grad_clip: float = 1.0
    grad_accum_steps: int = 1
    max_steps: int | None = None
    warmup_ratio: float = 0.0
    seed: int = 0
    trainable: str | None = None

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any], method: str = "") -> "MethodConfig":
        """Build from ``{name: value}``; values given as strings (CLI) are converted to the field's type."""
        known = {f.name: f for f in fields(cls)}
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in overrides.items():
            key = name.replace("-", "_")
            if key not in known:
                raise ValueError(f"unknown hyper-parameter {name!r} for method {method or cls.__name__}; "
                                 f"known: {', '.join(sorted(known))}")
            values[key] = _coerce(value, hints[key], key, method)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, hint: Any, name: str, method: str) -> Any:
    """Convert ``value`` to the annotated type (``int | None``, ``float``, ``str``, ``tuple[int, ...]``)."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    optional = type(None) in typing.get_args(hint)
    target = hint if not args or typing.get_origin(hint) in (tuple, list) else args[0]
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
        raise ValueError(f"hyper-parameter {name!r} of {method} cannot be None")
    try:
        origin = typing.get_origin(target)
        if origin in (tuple, list):
            items = value.replace(",", "-").split("-") if isinstance(value, str) else list(value)
            return tuple(int(item) for item in items)
        if target is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if target is float:
            return float(value)
        return target(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"hyper-parameter {name!r} of {method}: cannot read {value!r} as "
                         f"{getattr(target, '__name__', target)}") from error


@dataclass
class UnlearnContext:
    """What a method may need besides its batches, filled in by the shared loop before ``setup``."""

    tokenizer: Any
    reference: Any = None  # frozen copy of the model before unlearning (for methods with needs_reference)
    forget_texts: list[str] = dataclasses.field(default_factory=list)
    retain_texts: list[str] = dataclasses.field(default_factory=list)
    world: Any = None  # the embedded world when unlearning one of its models (anchored terms for WHP)
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    # The parameters that train, with their fp32 masters (``mechunlearn.training.TrainableWeights``); a method that
    # edits weights directly (noise, a distance to the start) works on these, never on a bf16 parameter.
    weights: Any = None
    max_length: int | None = None  # config.max_length capped at the model's n_ctx (None: use config.max_length)


class UnlearningMethod:
    """Base class. Subclasses set ``name``, ``Config`` and implement ``loss``.

    ``setup`` runs once before training (add noise, train a reinforced model, pick random directions...).
    ``loss`` reads inside the model only through hook points (functions from ``mechunlearn.hooks``).
    ``trainable_pattern`` defaults to ``config.trainable``.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs_reference: ClassVar[bool] = False
    needs_retain: ClassVar[bool] = True
    summary: ClassVar[str] = ""

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{self.name} takes a {self.Config.__name__}, got {type(self.config).__name__}")
        self.context: UnlearnContext | None = None

    def validate(self, model) -> None:
        """Check the hyper-parameters against the model (layer ids in range...); raise ValueError if not."""

    def setup(self, model, context: UnlearnContext) -> None:
        self.context = context

    def trainable_pattern(self, model) -> str | None:
        return self.config.trainable

    def loss(self, model, forget: TokenBatch, retain: TokenBatch) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_step(self, model, step: int) -> None:
        """Called after every optimiser step, once the model holds the new weights (projections, constraints).

        Edit weights through ``self.trainable_weights(model)`` (their fp32 ``masters``), then ``write_back()``:
        in a bf16 model an edit of the parameter itself would be overwritten by the master at the next step.
        """

    def release(self) -> None:
        """Drop what only training needed (the frozen reference, the fp32 masters), so holding on to the method
        after ``unlearn`` does not hold a model copy; the shared loop calls it when training ends."""
        if self.context is not None:
            self.context.reference = None
            self.context.weights = None

    def trainable_weights(self, model):
        """The weights that train (``TrainableWeights``: names, parameters, fp32 masters): the shared loop's, or,
        when the method is used on its own, built from ``trainable_pattern`` with the package's one selector."""
        if self.context is not None and self.context.weights is not None:
            return self.context.weights
        from mechunlearn.models import FIXED_PARAMETERS
        from mechunlearn.training import TrainableWeights, select_parameters

        return TrainableWeights(select_parameters(model, self.trainable_pattern(model), exclude=FIXED_PARAMETERS))

    @property
    def max_length(self) -> int:
        """The longest sequence the method tokenizes: ``config.max_length`` capped at the model's context."""
        if self.context is not None and self.context.max_length is not None:
            return self.context.max_length
        return self.config.max_length


def nll(model, batch: TokenBatch, fwd_hooks: list | None = None) -> Tensor:
    """Mean per-token NLL of ``batch`` under ``model`` (optionally with temporary hooks)."""
    if fwd_hooks:
        with model.hooks(fwd_hooks=fwd_hooks):
            return mean_nll(logits_of(model(batch.tokens)), batch)
    return mean_nll(logits_of(model(batch.tokens)), batch)


def sequence_logprob(model, batch: TokenBatch, average: bool = False) -> Tensor:
    """Per-sequence log-probability (summed over tokens, or averaged when ``average``)."""
    summed, counts = sequence_logprobs(logits_of(model(batch.tokens)), batch)
    return summed / counts.clamp(min=1) if average else summed


def parse_layers(layers: tuple[int, ...] | str, n_layers: int, method: str = "") -> tuple[int, ...]:
    """Layer ids from ``(5, 6, 7)`` or ``"5-6-7"``/``"5,6,7"``; each must be in ``0..n_layers-1``."""
    if isinstance(layers, str):
        layers = tuple(int(item) for item in layers.replace(",", "-").split("-") if item)
    if not layers:
        raise ValueError(f"{method}: layer_ids is empty; give at least one layer in 0..{n_layers - 1}")
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"{method}: layer id(s) {bad} out of range: this model has {n_layers} layers "
                         f"(0..{n_layers - 1}); pass e.g. --layer-ids {max(0, n_layers // 2 - 1)}-{n_layers // 2}")
    return tuple(layers)

"""Representation rerouting, shared by RMU, Circuit Breakers and CB-LAT.

* **Random targets** r̂_l: one fixed unit vector per layer, drawn once in ``setup`` as in the RMU paper's code
  (``torch.rand`` = uniform on [0, 1) per coordinate, then divided by its norm), from a CPU generator seeded with
  ``(config.seed, layer)`` so they are identical on every device and one layer's target does not depend on which
  other layers are targeted. Kept in float32.
* **Masked token averages.** Every per-token quantity (MSE over ``d_model``, cosine) is computed in float32 and
  averaged over real (non-pad) tokens only; the reference RMU code averages over padding too.
* **Rerouting loss**: ``L = sum_l [forget_term(h_l^forget, c r̂_l) + alpha * retain_term(h_l^retain,
  h_l^cached)]``. ``h^cached`` is the frozen reference model's activation (``context.reference``, a copy of the
  model taken before unlearning) on the same retain batch, computed each step under ``no_grad``: the same numbers
  as caching every retain batch before training, without a cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mechunlearn.batching import TokenBatch
from mechunlearn.methods.base import MethodConfig, UnlearnContext
from mechunlearn.methods.layers import LayeredMethod, LayersConfig, check_config, layer_activations, post_init_parent

__all__ = ["ReroutingConfig", "ReroutingMethod", "random_targets", "masked_token_mean", "token_mse", "token_cosine",
           "rerouting_loss"]


@dataclass
class ReroutingConfig(LayersConfig):
    """RMU / CB: ``alpha`` weighs the retain term, ``steering_coeff`` (c) scales the random target c·r̂."""

    alpha: float = 100.0
    steering_coeff: float = 20.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_config(name, self.alpha >= 0, f"alpha must be >= 0, got {self.alpha!r}")
        check_config(name, self.steering_coeff > 0, f"steering_coeff must be > 0, got {self.steering_coeff!r}")
        post_init_parent(self, ReroutingConfig)


def random_targets(layers: Iterable[int], d_model: int, seed: int) -> dict[int, Tensor]:
    """One unit-norm vector per layer (float32, CPU): uniform [0, 1) coordinates divided by their norm."""
    targets = {}
    for layer in layers:
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(layer))
        vector = torch.rand(d_model, generator=generator, dtype=torch.float32)
        targets[layer] = vector / vector.norm()
    return targets


def masked_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` ([batch, pos]) over positions where ``mask`` is True."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def token_mse(activation: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """MSE per token (mean over ``d_model``), averaged over real tokens; ``target`` broadcasts ([d] or [b,p,d])."""
    squared = (activation.float() - target.float()).pow(2).mean(dim=-1)
    return masked_token_mean(squared, mask)


def token_cosine(activation: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Cosine similarity per token (over ``d_model``), averaged over real tokens."""
    activation = activation.float()
    cosine = F.cosine_similarity(activation, target.float().expand_as(activation), dim=-1)
    return masked_token_mean(cosine, mask)


TermFunction = Callable[[Tensor, Tensor, Tensor], Tensor]


def rerouting_loss(forget_term: TermFunction, retain_term: TermFunction, forget_activations: dict[int, Tensor],
                   retain_activations: dict[int, Tensor], cached_activations: dict[int, Tensor],
                   targets: dict[int, Tensor], forget_mask: Tensor, retain_mask: Tensor, alpha: float,
                   steering_coeff: float) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum_l [forget_term(h_f, c r̂_l, mask_f) + alpha * retain_term(h_r, h_cached, mask_r)]`` and its parts.

    Metrics: the summed ``forget_loss`` and ``retain_loss`` (before ``alpha``) and the per-layer terms
    ``forget_term_L{l}`` / ``retain_term_L{l}``.
    """
    forget_total, retain_total, metrics = 0.0, 0.0, {}
    for layer, forget_activation in forget_activations.items():
        target = steering_coeff * targets[layer].to(forget_activation.device)
        forget_value = forget_term(forget_activation, target, forget_mask)
        retain_value = retain_term(retain_activations[layer], cached_activations[layer].detach(), retain_mask)
        forget_total = forget_total + forget_value
        retain_total = retain_total + retain_value
        metrics[f"forget_term_L{layer}"] = forget_value.detach()
        metrics[f"retain_term_L{layer}"] = retain_value.detach()
    loss = forget_total + alpha * retain_total
    return loss, {"forget_loss": forget_total.detach(), "retain_loss": retain_total.detach(), **metrics}


class ReroutingMethod(LayeredMethod):
    """RMU and Circuit Breakers: push forget activations towards c·r̂_l, anchor retain activations to the
    frozen reference's. Subclasses give ``forget_term`` and ``retain_term`` (per-token, masked averages);
    CB-LAT overrides ``forget_activations`` to inject its adversary."""

    Config = ReroutingConfig
    needs_reference = True

    def __init__(self, config: MethodConfig | None = None):
        super().__init__(config)
        self.targets: dict[int, Tensor] | None = None

    @staticmethod
    def forget_term(activation: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def retain_term(activation: Tensor, cached: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def setup(self, model, context: UnlearnContext) -> None:
        super().setup(model, context)
        device = next(model.parameters()).device
        self.targets = {layer: vector.to(device)
                        for layer, vector in random_targets(self.layers, model.cfg.d_model, self.config.seed).items()}

    def reference_model(self):
        reference = self.context.reference if self.context is not None else None
        if reference is None:
            raise RuntimeError(f"{self.name} needs a frozen reference model for the retain anchor: run it through "
                               "mechunlearn.unlearn.unlearn, or call setup(model, UnlearnContext(..., "
                               "reference=frozen_copy(model))) first")
        return reference

    def forget_activations(self, model, forget: TokenBatch) -> tuple[dict[int, Tensor], dict[str, float]]:
        """The forget activations the forget term reads (and extra metrics); CB-LAT adds its adversary here."""
        return layer_activations(model, forget.tokens, self.require_layers()), {}

    def loss(self, model, forget, retain):
        layers = self.require_layers()
        if self.targets is None:
            raise RuntimeError(f"{self.name}: call setup(model, context) before loss (it draws the random targets)")
        reference = self.reference_model()
        forget_activations, extra = self.forget_activations(model, forget)
        retain_activations = layer_activations(model, retain.tokens, layers)
        with torch.no_grad():
            cached_activations = layer_activations(reference, retain.tokens, layers)
        loss, metrics = rerouting_loss(self.forget_term, self.retain_term, forget_activations, retain_activations,
                                       cached_activations, self.targets, forget.mask, retain.mask,
                                       self.config.alpha, self.config.steering_coeff)
        return loss, {**metrics, **extra}

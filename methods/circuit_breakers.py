"""Circuit Breakers / representation rerouting (Zou et al. 2024), as the seed defines it.

seed 003: ``cb``  L = sum_l [ -cos(h_l^forget, c·r̂_l) + alpha · (1 - cos(h_l^retain, h_l^cached)) ],
h_l = ``blocks.{l}.hook_resid_post``, r̂_l a fixed unit-norm random vector per layer, alpha = 100, c = 20.

Where this differs, and why:

* The seed's formulation, not the paper's: Zou et al. reroute with ``ReLU(cos(h, h_original))`` (push forget
  activations orthogonal to their original ones) and anchor retain activations with an L2 distance, on LoRA
  adapters; the seed instead pulls forget activations towards a random direction, like RMU with cosines.
* Cosine is scale-invariant, so c (``steering_coeff``) does not change the loss; it stays for parity with RMU
  and the seed's flags.
* Per-token cosines, averaged over real (non-pad) tokens; ``layer_ids`` defaults to the middle layers (seed:
  5-6-7 of 32); h^cached from the frozen reference copy on the same retain batch (= caching before training).
* Trainable parameters: the seed's full-parameter training (``trainable`` None). Parameters after the last
  target layer get no gradient from this loss and stay unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mechunlearn.methods.rerouting import ReroutingConfig, ReroutingMethod, rerouting_loss, token_cosine

__all__ = ["CircuitBreakers", "CircuitBreakersConfig", "circuit_breaker_loss", "rerouting_term", "anchor_term"]


@dataclass
class CircuitBreakersConfig(ReroutingConfig):
    """``layer_ids`` (None = middle layers), ``alpha`` 100, ``steering_coeff`` 20 (no effect: cosine)."""


def rerouting_term(activation: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """-cos(h, c·r̂), averaged over real tokens."""
    return -token_cosine(activation, target, mask)


def anchor_term(activation: Tensor, cached: Tensor, mask: Tensor) -> Tensor:
    """1 - cos(h, h_cached), averaged over real tokens."""
    return 1.0 - token_cosine(activation, cached, mask)


def circuit_breaker_loss(forget_activations, retain_activations, cached_activations, targets, forget_mask,
                         retain_mask, alpha: float, steering_coeff: float):
    """The CB loss on ``{layer: activation}`` dicts; returns ``(loss, metrics)``."""
    return rerouting_loss(rerouting_term, anchor_term, forget_activations, retain_activations, cached_activations,
                          targets, forget_mask, retain_mask, alpha, steering_coeff)


class CircuitBreakers(ReroutingMethod):
    """Turn forget activations towards r̂_l (cosine); keep retain activations pointing where they did."""

    name = "cb"
    Config = CircuitBreakersConfig
    summary = "L = sum_l [-cos(h_f, c r_l) + alpha (1 - cos(h_r, h_cached))]"

    forget_term = staticmethod(rerouting_term)
    retain_term = staticmethod(anchor_term)

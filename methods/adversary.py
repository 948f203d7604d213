"""The latent adversary of LAT and CB-LAT: projected gradient descent on a perturbation δ added at
``blocks.{mid}.hook_resid_post`` (``mid`` = the middle target layer), minimising the forget NLL, with
``||δ||_∞ <= lat_eps``. δ is held in float32 whatever the model's dtype (the hook casts it to the activation's),
so PGD's steps and the ε-clip are exact in a bf16 model too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mechunlearn.batching import TokenBatch
from mechunlearn.hooks import adding, require_hook_names, resid_post
from mechunlearn.methods.base import nll
from mechunlearn.methods.layers import LayersConfig, check_config, post_init_parent

__all__ = ["AdversaryConfig", "AdversaryMixin", "adversary_layer", "latent_adversary"]


@dataclass
class AdversaryConfig(LayersConfig):
    """LAT's inner loop: ``lat_steps`` PGD steps of size ``lat_lr`` inside the L∞ ball of radius ``lat_eps``.

    ``lat_lr`` (not a seed flag) defaults to ``None`` = ``2.5 * lat_eps / lat_steps`` (Madry et al. 2018's rule:
    the adversary can cross the ball and come back within its budget); 0.05 at the defaults. ``lat_steps = 0``
    disables the adversary (δ = 0).
    """

    lat_eps: float = 0.1
    lat_steps: int = 5
    lat_lr: float | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_config(name, self.lat_eps >= 0, f"lat_eps must be >= 0, got {self.lat_eps!r}")
        check_config(name, self.lat_steps >= 0, f"lat_steps must be >= 0, got {self.lat_steps!r}")
        check_config(name, self.lat_lr is None or self.lat_lr > 0,
                     f"lat_lr must be > 0 or None, got {self.lat_lr!r}")
        post_init_parent(self, AdversaryConfig)

    @property
    def adversary_step_size(self) -> float:
        if self.lat_lr is not None:
            return self.lat_lr
        return 2.5 * self.lat_eps / max(1, self.lat_steps)


def adversary_layer(layers: Sequence[int]) -> int:
    """The middle target layer (the lower middle for an even count: ``(0, 1)`` -> 0, ``(5, 6, 7)`` -> 6), so the
    perturbation there reaches the target layers after it."""
    ordered = sorted(layers)
    return ordered[(len(ordered) - 1) // 2]


def latent_adversary(model, batch: TokenBatch, layer: int, eps: float, steps: int, step_size: float
                     ) -> tuple[Tensor, dict[str, float]]:
    """PGD for a perturbation δ at ``blocks.{layer}.hook_resid_post`` that *lowers* the NLL of ``batch``.

    δ has the activation's shape ``[batch, pos, d_model]`` (float32), starts at zero (deterministic, and the clean
    NLL comes for free from the first iterate), is added on real tokens only, and after each step
    ``δ <- clip(δ - step_size * sign(∂NLL/∂δ), -eps, eps)`` (standard L∞ PGD, Madry et al. 2018).
    Gradients go to δ alone (``torch.autograd.grad``): nothing is accumulated on the model's ``.grad``.
    Returns the lowest-NLL iterate seen (δ = 0 included; the last iterate costs one extra no-grad forward), so
    the adversary never makes recall worse than no perturbation; detached. Metrics: ``forget_nll_clean`` (δ = 0)
    and ``forget_nll_adversary`` (the returned δ).
    """
    device = next(model.parameters()).device
    delta = torch.zeros(*batch.tokens.shape, model.cfg.d_model, device=device, dtype=torch.float32)
    if steps == 0 or eps == 0:
        return delta, {}
    hook_name = resid_post(layer)
    require_hook_names(model, [hook_name])
    best_delta, best_nll, clean_nll = delta, math.inf, math.nan
    for step in range(steps + 1):
        delta = delta.detach().requires_grad_(step < steps)
        with torch.set_grad_enabled(step < steps), adding(model, hook_name, delta, mask=batch.mask):
            loss = nll(model, batch)
        value = float(loss.detach())
        if step == 0:
            clean_nll = value
        if value < best_nll:
            best_nll, best_delta = value, delta.detach()
        if step == steps:
            break
        (gradient,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta - step_size * gradient.sign()).clamp(-eps, eps)
    return best_delta.detach(), {"forget_nll_clean": clean_nll, "forget_nll_adversary": best_nll}


class AdversaryMixin:
    """LAT's inner loop for a ``LayeredMethod`` whose config is an ``AdversaryConfig``."""

    def adversary_layer(self) -> int:
        return adversary_layer(self.require_layers())

    def adversarial_delta(self, model, forget: TokenBatch) -> tuple[Tensor, dict[str, float]]:
        config = self.config
        return latent_adversary(model, forget, self.adversary_layer(), config.lat_eps, config.lat_steps,
                                config.adversary_step_size)

"""Latent Adversarial Training (Casper et al. 2024) for unlearning.

seed 003: ``lat``
  1. inner loop (adversary): ``lat_steps`` PGD steps on a perturbation δ added at the middle target layer
     (``blocks.{mid}.hook_resid_post``) that *minimise* the forget NLL (help recall), ``||δ||_∞ <= lat_eps``;
     gradients reach δ only.
  2. outer loop (defender): with δ frozen and injected, ``L = -NLL_forget^(δ) + retain_weight · NLL_retain``
     (the retain pass has no δ).

Where this differs, and why:

* ``layer_ids`` defaults to the middle layers (seed: 5-6-7 of 32); mid = the middle of them (the lower middle
  for an even count, so δ reaches the later target layers): ``adversary.adversary_layer``.
* The inner loop is sign-gradient L∞ PGD (Madry et al.) from δ = 0 with step ``lat_lr`` (default
  ``2.5 · lat_eps / lat_steps``), δ masked to real tokens, and the lowest-NLL iterate kept (so δ never makes
  recall worse than no δ). Casper et al. / Sheshadri et al. optimise δ with Adam under an L2 bound; the seed
  asks for PGD with an L∞ bound.
* Full-parameter training (``trainable`` None), as the seed does for every method.
"""

from __future__ import annotations

from dataclasses import dataclass

from mechunlearn.hooks import adding, resid_post
from mechunlearn.methods.adversary import AdversaryConfig, AdversaryMixin
from mechunlearn.methods.base import nll
from mechunlearn.methods.layers import LayeredMethod, check_config

__all__ = ["LAT", "LATConfig"]


@dataclass
class LATConfig(AdversaryConfig):
    """``layer_ids`` (None = middle layers), ``lat_eps`` 0.1, ``lat_steps`` 5, ``lat_lr`` (None = 2.5 ε/steps),
    ``retain_weight`` 1.0."""

    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        check_config(type(self).__name__, self.retain_weight >= 0,
                     f"retain_weight must be >= 0, got {self.retain_weight!r}")
        super().__post_init__()


class LAT(AdversaryMixin, LayeredMethod):
    """Gradient ascent on the forget NLL under a latent adversary, gradient descent on the retain NLL."""

    name = "lat"
    Config = LATConfig
    summary = "delta = PGD argmin NLL_f(delta), |delta|_inf <= eps; L = -NLL_f(delta) + retain_weight NLL_r"

    def loss(self, model, forget, retain):
        delta, metrics = self.adversarial_delta(model, forget)
        with adding(model, resid_post(self.adversary_layer()), delta, mask=forget.mask):
            forget_nll = nll(model, forget)
        retain_nll = nll(model, retain)
        loss = -forget_nll + self.config.retain_weight * retain_nll
        return loss, {"forget_nll": forget_nll, "retain_nll": retain_nll, **metrics}


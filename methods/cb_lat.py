"""Circuit Breakers + Latent Adversarial Training: the seed's "most robust" method.

seed 003: ``cb_lat``
  1. inner loop: LAT's adversary — PGD on δ at the middle target layer minimising the forget NLL,
     ``||δ||_∞ <= lat_eps`` (``adversary.latent_adversary``, the same code LAT runs);
  2. outer loop: the Circuit Breaker loss (``circuit_breakers``), with the forget activations collected while
     the frozen δ is injected and the retain activations without it:
     ``L = sum_l [-cos(h_l^forget(δ), c·r̂_l) + alpha · (1 - cos(h_l^retain, h_l^cached))]``.

Where this differs, and why: everything CB and LAT document (middle-layer default, seed's cosine formulation,
PGD details, masks, reference copy for h^cached). At the adversary's own layer the captured forget activation
is h + δ (the perturbation hook runs before the capture), i.e. what the next block receives.
"""

from __future__ import annotations

from dataclasses import dataclass

from mechunlearn.methods.adversary import AdversaryConfig, AdversaryMixin
from mechunlearn.methods.circuit_breakers import CircuitBreakers
from mechunlearn.methods.layers import layer_activations
from mechunlearn.methods.rerouting import ReroutingConfig

__all__ = ["CBLAT", "CBLATConfig"]


@dataclass
class CBLATConfig(ReroutingConfig, AdversaryConfig):
    """``layer_ids`` (None = middle layers), ``alpha`` 100, ``steering_coeff`` 20, ``lat_eps`` 0.1,
    ``lat_steps`` 5, ``lat_lr`` (None = 2.5 ε/steps)."""


class CBLAT(AdversaryMixin, CircuitBreakers):
    """Circuit Breakers whose forget activations are read under LAT's adversarial perturbation."""

    name = "cb_lat"
    Config = CBLATConfig
    summary = "delta = PGD argmin NLL_f(delta); L = sum_l [-cos(h_f(delta), c r_l) + alpha (1 - cos(h_r, h_cached))]"

    def forget_activations(self, model, forget):
        delta, metrics = self.adversarial_delta(model, forget)
        activations = layer_activations(model, forget.tokens, self.require_layers(), delta=delta,
                                        delta_layer=self.adversary_layer(), delta_mask=forget.mask)
        return activations, metrics

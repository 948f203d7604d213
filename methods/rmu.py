"""Representation Misdirection for Unlearning (Li et al. 2024, the WMDP paper).

seed 003: ``rmu``  L = sum_l [ MSE(h_l^forget, c·r̂_l) + alpha · MSE(h_l^retain, h_l^cached) ],
h_l = ``blocks.{l}.hook_resid_post``, r̂_l a fixed unit-norm random vector per layer, c = ``steering_coeff``
(default 20), alpha = 100, ``layer_ids`` the target layers.

Where this differs from the seed / the reference code, and why:

* ``layer_ids`` defaults to the middle layers of the model (seed: 5-6-7 of 32 layers; our models have 2-4).
* r̂_l is uniform [0, 1) per coordinate, then normalised, as in the RMU code; one per layer, seeded from ``seed``.
* The MSE is a mean over ``d_model`` per token, averaged over real tokens only (the reference includes pads).
* h^cached comes from the frozen reference copy (``context.reference``) on the same retain batch each step: the
  same values as caching before training.
* Trainable parameters: like the RMU reference (which updates only the MLP ``down_proj`` of layers l-2..l of its
  single target layer l), only a few MLPs train: ``W_in`` and ``W_out`` of every target layer and of the two
  layers before the last target (see ``default_trainable``). The seed's "full-parameter training" note is for
  the loss-based methods; pass ``trainable=".*"`` for that, or any regex to override.
* c = 20 was tuned for a 7B model whose residual norms are large; on tiny models pick c comparable to the
  typical activation norm (the RMU paper tunes it per model).
"""

from __future__ import annotations

from dataclasses import dataclass

from mechunlearn.methods.rerouting import ReroutingConfig, ReroutingMethod, rerouting_loss, token_mse

__all__ = ["RMU", "RMUConfig", "rmu_loss", "default_trainable"]


@dataclass
class RMUConfig(ReroutingConfig):
    """``layer_ids`` (None = middle layers), ``alpha`` 100, ``steering_coeff`` 20; ``trainable`` None = the
    default MLP pattern of ``default_trainable``."""


def rmu_loss(forget_activations, retain_activations, cached_activations, targets, forget_mask, retain_mask,
             alpha: float, steering_coeff: float):
    """The RMU loss on ``{layer: activation}`` dicts; returns ``(loss, metrics)``."""
    return rerouting_loss(token_mse, token_mse, forget_activations, retain_activations, cached_activations,
                          targets, forget_mask, retain_mask, alpha, steering_coeff)


def default_trainable(layers) -> str:
    """Regex: ``W_in``/``W_out`` of the target layers and of the two layers before the last target (>= 0)."""
    last = max(layers)
    chosen = sorted({*layers, *(layer for layer in (last - 2, last - 1) if layer >= 0)})
    return rf"^blocks\.({'|'.join(str(layer) for layer in chosen)})\.mlp\.W_(in|out)$"


class RMU(ReroutingMethod):
    """Push forget activations at the target layers towards c·r̂_l (MSE); anchor retain activations."""

    name = "rmu"
    Config = RMUConfig
    summary = "L = sum_l [MSE(h_f, c r_l) + alpha MSE(h_r, h_cached)]"

    forget_term = staticmethod(token_mse)
    retain_term = staticmethod(token_mse)

    def trainable_pattern(self, model) -> str | None:
        if self.config.trainable is not None:
            return self.config.trainable
        if self.layers is None:
            self.validate(model)
        return default_trainable(self.layers)

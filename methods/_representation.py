"""What the activation-space methods (RMU, Circuit Breakers, LAT, CB-LAT) share, written once.

* **Target layers.** ``layer_ids`` names the layers whose residual stream (``blocks.{l}.hook_resid_post``) the
  loss reads. The seed pipeline's default is ``5-6-7`` for a 32-layer model; our models have 2-4 layers, so the
  default here is ``None`` = "the middle layers": ``(n_layers // 2 - 1, n_layers // 2)`` clipped at 0 and
  de-duplicated (2 layers -> ``(0, 1)``, 3 -> ``(0, 1)``, 4 -> ``(1, 2)``, 32 -> ``(15, 16)``). It is resolved,
  and an explicit value checked against the model, in ``validate(model)`` (an id out of range raises a
  ``ValueError`` naming ``0..n_layers-1``).
* **Random targets** r̂_l (RMU, CB, CB-LAT): one fixed unit vector per layer, drawn once in ``setup`` as in the
  RMU paper's code (``torch.rand`` = uniform on [0, 1) per coordinate, then divided by its norm), from a CPU
  generator seeded with ``(config.seed, layer)`` so they are identical on every device and one layer's target
  does not depend on which other layers are targeted.
* **Masked token averages.** Every per-token quantity (MSE over ``d_model``, cosine) is averaged over real
  (non-pad) tokens only; the reference RMU code averages over padding too.
* **Rerouting loss** (RMU, CB, CB-LAT): ``L = sum_l [forget_term(h_l^forget, c r̂_l) + alpha *
  retain_term(h_l^retain, h_l^cached)]``. ``h^cached`` is the frozen reference model's activation
  (``context.reference``, a copy of the model taken before unlearning) on the same retain batch, computed each
  step under ``no_grad``: the same numbers as caching every retain batch before training, without a cache.
* **Latent adversary** (LAT, CB-LAT): projected gradient descent on a perturbation δ added at
  ``blocks.{mid}.hook_resid_post`` (``mid`` = the middle target layer), minimising the forget NLL, with
  ``||δ||_∞ <= lat_eps``. See ``latent_adversary``.

Forward passes that only feed a representation loss stop after the last target layer (``stop_at_layer``):
the activations are the same, the later blocks and the unembedding are simply not computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mechunlearn.batching import TokenBatch
from mechunlearn.hooks import adding, capturing, require_hook_names, resid_post
from mechunlearn.methods.base import MethodConfig, UnlearnContext, UnlearningMethod, nll, parse_layers

__all__ = [
    "LayersConfig", "ReroutingConfig", "AdversaryConfig", "LayeredMethod", "ReroutingMethod", "AdversaryMixin",
    "check_config", "default_layers", "resolve_layers", "adversary_layer", "random_targets", "masked_token_mean",
    "token_mse", "token_cosine", "layer_activations", "rerouting_loss", "latent_adversary",
]


# ------------------------------------------------------------------------------------------- hyper-parameters
def check_config(owner: str, condition: bool, message: str) -> None:
    """Raise ``ValueError("{owner}: {message}")`` unless ``condition``."""
    if not condition:
        raise ValueError(f"{owner}: {message}")


def _post_init_parent(config, cls) -> None:
    """Run the next ``__post_init__`` in the MRO (configs combine by multiple inheritance, e.g. CB-LAT)."""
    parent = getattr(super(cls, config), "__post_init__", None)
    if parent is not None:
        parent()


@dataclass
class LayersConfig(MethodConfig):
    """``layer_ids``: target layers (``None`` = the middle layers of the model, see the module docstring)."""

    layer_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.layer_ids is not None:
            check_config(type(self).__name__, len(self.layer_ids) > 0,
                         "layer_ids is empty; give at least one layer, or None for the middle layers")
        _post_init_parent(self, LayersConfig)


@dataclass
class ReroutingConfig(LayersConfig):
    """RMU / CB: ``alpha`` weighs the retain term, ``steering_coeff`` (c) scales the random target c·r̂."""

    alpha: float = 100.0
    steering_coeff: float = 20.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_config(name, self.alpha >= 0, f"alpha must be >= 0, got {self.alpha!r}")
        check_config(name, self.steering_coeff > 0, f"steering_coeff must be > 0, got {self.steering_coeff!r}")
        _post_init_parent(self, ReroutingConfig)


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
        _post_init_parent(self, AdversaryConfig)

    @property
    def adversary_step_size(self) -> float:
        if self.lat_lr is not None:
            return self.lat_lr
        return 2.5 * self.lat_eps / max(1, self.lat_steps)


# -------------------------------------------------------------------------------------------------- layers
def default_layers(n_layers: int) -> tuple[int, ...]:
    """The middle layers: ``(n // 2 - 1, n // 2)`` clipped at 0, de-duplicated (``(0,)`` for one layer)."""
    return tuple(sorted({max(0, n_layers // 2 - 1), min(n_layers - 1, n_layers // 2)}))


def resolve_layers(layer_ids: tuple[int, ...] | str | None, n_layers: int, method: str = "") -> tuple[int, ...]:
    """Sorted, de-duplicated target layers; ``None`` -> ``default_layers``; out-of-range ids raise ValueError."""
    if layer_ids is None:
        return default_layers(n_layers)
    return tuple(sorted(set(parse_layers(layer_ids, n_layers, method))))


def adversary_layer(layers: Sequence[int]) -> int:
    """The middle target layer (the lower middle for an even count: ``(0, 1)`` -> 0, ``(5, 6, 7)`` -> 6), so the
    perturbation there reaches the target layers after it."""
    ordered = sorted(layers)
    return ordered[(len(ordered) - 1) // 2]


def random_targets(layers: Iterable[int], d_model: int, seed: int) -> dict[int, Tensor]:
    """One unit-norm vector per layer (float32, CPU): uniform [0, 1) coordinates divided by their norm."""
    targets = {}
    for layer in layers:
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(layer))
        vector = torch.rand(d_model, generator=generator, dtype=torch.float32)
        targets[layer] = vector / vector.norm()
    return targets


# ------------------------------------------------------------------------------------ per-token arithmetic
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


def layer_activations(model, tokens: Tensor, layers: Sequence[int], *, delta: Tensor | None = None,
                      delta_layer: int | None = None, delta_mask: Tensor | None = None) -> dict[int, Tensor]:
    """``{layer: resid_post activation}`` from one forward pass that stops after the last layer asked for.

    With ``delta``, it is added at ``blocks.{delta_layer}.hook_resid_post`` first, so an activation captured
    at that very layer already includes it (what the next block sees). All hooks are temporary.
    """
    names = {layer: resid_post(layer) for layer in layers}
    stop = max(layers) + 1
    with ExitStack() as stack:
        if delta is not None:
            if delta_layer is None:
                raise ValueError("layer_activations: delta given without delta_layer")
            stop = max(stop, delta_layer + 1)
            stack.enter_context(adding(model, resid_post(delta_layer), delta, mask=delta_mask))
        store = stack.enter_context(capturing(model, names.values()))
        model(tokens, stop_at_layer=stop)
    return {layer: store[name] for layer, name in names.items()}


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


# ------------------------------------------------------------------------------------------ latent adversary
def latent_adversary(model, batch: TokenBatch, layer: int, eps: float, steps: int, step_size: float
                     ) -> tuple[Tensor, dict[str, float]]:
    """PGD for a perturbation δ at ``blocks.{layer}.hook_resid_post`` that *lowers* the NLL of ``batch``.

    δ has the activation's shape ``[batch, pos, d_model]``, starts at zero (deterministic, and the clean NLL
    comes for free from the first iterate), is added on real tokens only, and after each step
    ``δ <- clip(δ - step_size * sign(∂NLL/∂δ), -eps, eps)`` (standard L∞ PGD, Madry et al. 2018).
    Gradients go to δ alone (``torch.autograd.grad``): nothing is accumulated on the model's ``.grad``.
    Returns the lowest-NLL iterate seen (δ = 0 included; the last iterate costs one extra no-grad forward), so
    the adversary never makes recall worse than no perturbation; detached. Metrics: ``forget_nll_clean`` (δ = 0)
    and ``forget_nll_adversary`` (the returned δ).
    """
    parameter = next(model.parameters())
    delta = torch.zeros(*batch.tokens.shape, model.cfg.d_model, device=parameter.device, dtype=parameter.dtype)
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


# ------------------------------------------------------------------------------------------- method bases
class LayeredMethod(UnlearningMethod):
    """A method reading target layers: resolves ``layer_ids`` against the model in ``validate``/``setup``."""

    Config = LayersConfig

    def __init__(self, config: MethodConfig | None = None):
        super().__init__(config)
        self.layers: tuple[int, ...] | None = None

    def validate(self, model) -> None:
        self.layers = resolve_layers(self.config.layer_ids, model.cfg.n_layers, self.name)
        require_hook_names(model, [resid_post(layer) for layer in self.layers])

    def setup(self, model, context: UnlearnContext) -> None:
        super().setup(model, context)
        self.validate(model)

    def require_layers(self) -> tuple[int, ...]:
        if self.layers is None:
            raise RuntimeError(f"{self.name}: call validate(model) or setup(model, context) before loss "
                               "(mechunlearn.unlearn.unlearn does both)")
        return self.layers


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


class AdversaryMixin:
    """LAT's inner loop for a ``LayeredMethod`` whose config is an ``AdversaryConfig``."""

    def adversary_layer(self) -> int:
        return adversary_layer(self.require_layers())

    def adversarial_delta(self, model, forget: TokenBatch) -> tuple[Tensor, dict[str, float]]:
        config = self.config
        return latent_adversary(model, forget, self.adversary_layer(), config.lat_eps, config.lat_steps,
                                config.adversary_step_size)

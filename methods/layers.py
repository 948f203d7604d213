"""Target layers, shared by the activation-space methods (RMU, Circuit Breakers, LAT, CB-LAT).

``layer_ids`` names the layers whose residual stream (``blocks.{l}.hook_resid_post``) the loss reads. The seed
pipeline's default is ``5-6-7`` for a 32-layer model; our models have 2-4 layers, so the default here is
``None`` = "the middle layers": ``(n_layers // 2 - 1, n_layers // 2)`` clipped at 0 and de-duplicated (2 layers ->
``(0, 1)``, 3 -> ``(0, 1)``, 4 -> ``(1, 2)``, 32 -> ``(15, 16)``). It is resolved, and an explicit value checked
against the model, in ``validate(model)`` (an id out of range raises a ``ValueError`` naming ``0..n_layers-1``).

Forward passes that only feed a representation loss stop after the last target layer (``stop_at_layer``): the
activations are the same, the later blocks and the unembedding are simply not computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from torch import Tensor

from mechunlearn.hooks import adding, capturing, require_hook_names, resid_post
from mechunlearn.methods.base import MethodConfig, UnlearnContext, UnlearningMethod, parse_layers

__all__ = ["LayersConfig", "LayeredMethod", "check_config", "post_init_parent", "default_layers", "resolve_layers",
           "layer_activations"]


def check_config(owner: str, condition: bool, message: str) -> None:
    """Raise ``ValueError("{owner}: {message}")`` unless ``condition``."""
    if not condition:
        raise ValueError(f"{owner}: {message}")


def post_init_parent(config, cls) -> None:
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
        post_init_parent(self, LayersConfig)


def default_layers(n_layers: int) -> tuple[int, ...]:
    """The middle layers: ``(n // 2 - 1, n // 2)`` clipped at 0, de-duplicated (``(0,)`` for one layer)."""
    return tuple(sorted({max(0, n_layers // 2 - 1), min(n_layers - 1, n_layers // 2)}))


def resolve_layers(layer_ids: tuple[int, ...] | str | None, n_layers: int, method: str = "") -> tuple[int, ...]:
    """Sorted, de-duplicated target layers; ``None`` -> ``default_layers``; out-of-range ids raise ValueError."""
    if layer_ids is None:
        return default_layers(n_layers)
    return tuple(sorted(set(parse_layers(layer_ids, n_layers, method))))


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

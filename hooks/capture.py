"""Observe activations at hook points (hooks return None, so the forward pass is unchanged)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor

from mechunlearn.hooks.names import require_hook_names


class ActivationStore(dict):
    """``hook name -> activation`` of the latest forward pass (kept with its graph unless ``detach``)."""


def capture(store: ActivationStore, detach: bool = False):
    """A hook ``fn(activation, hook)`` that records ``activation`` under ``hook.name`` in ``store``."""

    def hook_fn(activation: Tensor, hook) -> None:
        store[hook.name] = activation.detach() if detach else activation

    return hook_fn


@contextmanager
def capturing(model, names: Iterable[str], detach: bool = False) -> Iterator[ActivationStore]:
    """``with capturing(model, names) as store: model(tokens)`` leaves ``store[name]`` for every name.

    Unlike ``run_with_cache`` the captured tensors keep their autograd graph (unless ``detach=True``), which is
    what representation losses (RMU, Circuit Breakers) need.
    """
    names = list(names)
    require_hook_names(model, names)
    store = ActivationStore()
    hook_fn = capture(store, detach=detach)
    with model.hooks(fwd_hooks=[(name, hook_fn) for name in names]):
        yield store

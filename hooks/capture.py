"""Observe activations at hook points: the one capture primitive of the toolkit.

Every part that reads activations by hook name (the diagnostics runner, the lenses, the knowledge probe, the SAE
fit, the representation losses of RMU / Circuit Breakers) goes through ``capturing``:

>>> with capturing(model, ["blocks.0.hook_resid_post"], detach=True) as store:   # doctest: +SKIP
...     model(tokens)
>>> store["blocks.0.hook_resid_post"]                                             # [batch, pos, d_model]

The hooks return ``None``, so the forward pass is unchanged; they are attached with ``model.hooks(...)`` and
removed on exit, even after an exception. ``forward_capturing`` is the same in one call, without gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechunlearn.hooks.names import require_hook_names

__all__ = ["ActivationStore", "capture", "capturing", "forward_capturing"]


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
    what representation losses (RMU, Circuit Breakers) need. A name the model lacks is one clear ``ValueError``
    before anything runs.
    """
    names = list(dict.fromkeys(names))
    require_hook_names(model, names)
    store = ActivationStore()
    hook_fn = capture(store, detach=detach)
    with model.hooks(fwd_hooks=[(name, hook_fn) for name in names]):
        yield store


@torch.no_grad()
def forward_capturing(model, tokens: Int[Tensor, "batch pos"], names: Iterable[str],
                      **forward_options: Any) -> tuple[Any, ActivationStore]:
    """One gradient-free forward pass ``model(tokens, **forward_options)`` with ``names`` captured (detached).

    ``forward_options`` go to the model's forward, e.g. ``stop_at_layer=l + 1`` when nothing after block ``l``
    is needed (the output is then the residual stream, not logits). Returns ``(output, store)``.
    """
    with capturing(model, names, detach=True) as store:
        output = model(tokens, **forward_options)
    return output, store

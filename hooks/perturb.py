"""Change activations at hook points: add a (learnable) perturbation, steer along a direction, scale.

Every factory moves its tensors to the activation's device and dtype inside the hook, so one hook serves a model
on any device and in any precision (a direction computed on the CPU in fp32 steers a bf16 model on CUDA). The cast
is differentiable: a ``delta`` that requires grad (LAT's adversary, a soft prompt) still receives its gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from jaxtyping import Float
from torch import Tensor

from mechunlearn.hooks.names import require_hook_names


def _like(tensor: Tensor, activation: Tensor) -> Tensor:
    return tensor.to(device=activation.device, dtype=activation.dtype)


def add_delta(delta: Float[Tensor, "... d"], mask: Tensor | None = None):
    """A hook adding ``delta`` (broadcast over batch/positions; may require grad, as LAT's adversary does).

    ``mask`` (``[batch, pos]`` bool) limits the perturbation to real tokens; a ``delta`` shaped like the
    activation but longer in ``pos`` is cropped to it.
    """

    def hook_fn(activation: Tensor, hook) -> Tensor:
        perturbation = delta
        if perturbation.dim() == activation.dim() and perturbation.shape[1] != activation.shape[1]:
            perturbation = perturbation[:, : activation.shape[1]]
        perturbation = _like(perturbation, activation)
        if mask is not None:
            perturbation = perturbation * _like(mask[:, : activation.shape[1], None], activation)
        return activation + perturbation

    return hook_fn


@contextmanager
def adding(model, name: str, delta: Tensor, mask: Tensor | None = None) -> Iterator[None]:
    """Add ``delta`` at hook ``name`` for the duration of the block."""
    require_hook_names(model, [name])
    with model.hooks(fwd_hooks=[(name, add_delta(delta, mask))]):
        yield


def steer(direction: Float[Tensor, " d"], coefficient: float = 1.0):
    """A hook adding ``coefficient * direction`` at every position (activation steering)."""

    def hook_fn(activation: Tensor, hook) -> Tensor:
        return activation + coefficient * _like(direction, activation)

    return hook_fn


def scale_activation(factor: float | Tensor):
    """A hook multiplying the activation by ``factor`` (a scalar or a tensor broadcast over the last axis)."""

    def hook_fn(activation: Tensor, hook) -> Tensor:
        return activation * (_like(factor, activation) if isinstance(factor, Tensor) else factor)

    return hook_fn

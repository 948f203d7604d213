"""Residual-stream layers as every activation analysis numbers them, and the rows of real tokens.

Layers follow Hugging Face's ``hidden_states`` numbering ``0..N``: layer 0 is ``blocks.0.hook_resid_pre`` (the
token embeddings; GPT-NeoX has rotary positions, so nothing is added), layer ``l + 1`` is
``blocks.{l}.hook_resid_post``. One difference from Hugging Face: its last hidden state has the final LayerNorm
applied, ours (``blocks.{N-1}.hook_resid_post``) does not, so layer N is the raw residual stream like every other
layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Bool, Float
from torch import Tensor

from mechunlearn.diagnostics.streaming import token_rows
from mechunlearn.hooks.names import resid_post, resid_pre

__all__ = ["residual_stream_hooks", "real_token_rows"]


def residual_stream_hooks(model, layers: Sequence[int] | None = None) -> list[tuple[int, str]]:
    """``(layer, hook)`` for HF's ``hidden_states`` 0..N (0 = embeddings = ``blocks.0.hook_resid_pre``)."""
    n_layers = model.cfg.n_layers
    chosen = range(n_layers + 1) if layers is None else layers
    hooks = []
    for layer in chosen:
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer {layer} is out of range: this model has residual-stream layers 0..{n_layers} "
                             "(0 = embeddings, l + 1 = output of block l)")
        hooks.append((layer, resid_pre(0) if layer == 0 else resid_post(layer - 1)))
    return hooks


def real_token_rows(activation: Float[Tensor, "batch pos ..."], mask: Bool[Tensor, "batch pos"]) -> Tensor:
    """The activations of real (non-pad) tokens as float32 rows, with the mask moved to the activation's device."""
    return token_rows(activation.float().flatten(2), mask.to(activation.device))

"""TransformerLens hook names, spelled once, and a check that a model has them."""

from __future__ import annotations

from collections.abc import Iterable


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def mlp_post(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def mlp_in(layer: int) -> str:
    """The MLP's LayerNorm output before its affine part: ``ln2.hook_normalized`` (TransformerLens 3.9 fires it on
    ``x / scale``; what ``W_in`` multiplies is ``normalized * ln2.w + ln2.b``, or ``mlp.hook_pre`` after W_in)."""
    return f"blocks.{layer}.ln2.hook_normalized"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def require_hook_names(model, names: Iterable[str]) -> None:
    """Raise one clear ``ValueError`` if ``model`` lacks any of ``names`` (e.g. GPT-NeoX has no hook_resid_mid)."""
    missing = [name for name in names if name not in model.hook_dict]
    if missing:
        layers = model.cfg.n_layers
        example = ", ".join(sorted(n for n in model.hook_dict if n.startswith("blocks.0."))[:8])
        raise ValueError(f"hook point(s) {', '.join(missing)} not in this model ({layers} layers, "
                         f"blocks.0..{layers - 1}); block hook names look like: {example}")

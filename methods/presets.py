"""Hyper-parameters tuned for the embedded world's tiny models.

Method ``Config`` defaults are the seed pipeline's, chosen for 7B-class models (lr 1e-5, one epoch, batch 4,
steering coefficient 20...). On the world's 4-layer, d_model-128 models those barely move the weights, so the
demo and ``mechunlearn unlearn --model base`` (a world model) start from these overrides instead. Each value was
chosen by the sweep recorded in docs/methods.md ("Tuning on the embedded world"); any flag given explicitly
still wins.
"""

from __future__ import annotations

from typing import Any

WORLD_PRESET: dict[str, dict[str, Any]] = {
    "ga_simple": dict(lr=1e-3, epochs=2, batch_size=8),
    "ga": dict(lr=1e-3, epochs=3, batch_size=8),
    "grad_diff": dict(lr=1e-3, epochs=3, batch_size=8),
    "dpo": dict(lr=1e-3, epochs=3, batch_size=8),
    "npo": dict(lr=1e-3, epochs=3, batch_size=8),
    "simnpo": dict(lr=1e-3, epochs=3, batch_size=8),
    "rmu": dict(lr=1e-3, epochs=3, batch_size=8, steering_coeff=5.0),
    "cb": dict(lr=1e-3, epochs=3, batch_size=8),
    "lat": dict(lr=1e-3, epochs=3, batch_size=8, lat_eps=0.5),
    "cb_lat": dict(lr=1e-3, epochs=3, batch_size=8, lat_eps=0.5),
    "wt_dist": dict(lr=1e-3, epochs=3, batch_size=8),
    "wt_dist_reg": dict(lr=1e-3, epochs=3, batch_size=8, reg_lambda=0.1),
    "whp": dict(lr=1e-3, epochs=3, batch_size=8),
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"world": WORLD_PRESET}


def preset_overrides(preset: str | None, method: str) -> dict[str, Any]:
    """The overrides of ``preset`` for ``method`` (``None`` -> none: the seed's defaults)."""
    if preset is None:
        return {}
    if preset not in PRESETS:
        raise ValueError(f"unknown hyper-parameter preset {preset!r}; known: {', '.join(PRESETS)} (or none)")
    return dict(PRESETS[preset].get(method, {}))

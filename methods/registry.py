"""The method registry: name -> class. Built-in methods are listed here (one line each) and imported lazily,
so importing ``mechunlearn.methods`` has no side effects; ``register`` adds a user's own method."""

from __future__ import annotations

import importlib
from typing import Any

from mechunlearn.methods.base import UnlearningMethod

# name -> "module:Class". Adding a method = one file in methods/ + one line here + its test.
BUILTIN_METHODS: dict[str, str] = {
    "ga_simple": "mechunlearn.methods.ga:GASimple",
    "ga": "mechunlearn.methods.ga:GA",
    "grad_diff": "mechunlearn.methods.grad_diff:GradDiff",
    "dpo": "mechunlearn.methods.dpo:DPO",
    "npo": "mechunlearn.methods.npo:NPO",
    "simnpo": "mechunlearn.methods.simnpo:SimNPO",
    "rmu": "mechunlearn.methods.rmu:RMU",
    "cb": "mechunlearn.methods.circuit_breakers:CircuitBreakers",
    "lat": "mechunlearn.methods.lat:LAT",
    "cb_lat": "mechunlearn.methods.cb_lat:CBLAT",
    "wt_dist": "mechunlearn.methods.weight_distortion:WeightDistortion",
    "wt_dist_reg": "mechunlearn.methods.weight_distance_reg:WeightDistanceReg",
    "whp": "mechunlearn.methods.whp:WHP",
}

_USER_METHODS: dict[str, type[UnlearningMethod]] = {}


def register(method_class: type[UnlearningMethod]) -> type[UnlearningMethod]:
    """Register a user-defined method class (usable as a decorator); a taken name is refused."""
    name = getattr(method_class, "name", "")
    if not name:
        raise ValueError(f"{method_class.__name__} has no `name`; set a class attribute name = '...'")
    if name in BUILTIN_METHODS or name in _USER_METHODS:
        raise ValueError(f"an unlearning method named {name!r} is already registered")
    _USER_METHODS[name] = method_class
    return method_class


def available() -> list[str]:
    return [*BUILTIN_METHODS, *_USER_METHODS]


def get_method(name: str) -> type[UnlearningMethod]:
    if name in _USER_METHODS:
        return _USER_METHODS[name]
    if name not in BUILTIN_METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; known methods: {', '.join(available())}")
    module_name, class_name = BUILTIN_METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create(name: str, preset: str | None = None, **overrides: Any) -> UnlearningMethod:
    """An instance of method ``name`` with its defaults, overridden by ``overrides`` (strings are parsed).

    ``preset="world"`` starts from the hyper-parameters tuned for the embedded world's tiny models
    (``mechunlearn.methods.presets``); explicit ``overrides`` still win.
    """
    from mechunlearn.methods.presets import preset_overrides

    method_class = get_method(name)
    values = {**preset_overrides(preset, name), **overrides}
    return method_class(method_class.Config.from_overrides(values, method=name))

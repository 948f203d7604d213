"""The attack registry: name -> class. Built-in attacks are listed here (one line each) and imported lazily, so
importing ``mechunlearn.attacks`` has no side effects; ``register_attack`` adds a user's own attack."""

from __future__ import annotations

import importlib
from typing import Any

from mechunlearn.attacks.base import Attack, AttackError

__all__ = ["BUILTIN_ATTACKS", "register_attack", "available_attacks", "get_attack", "create_attack"]

# name -> "module:Class". Adding an attack = one file in mechunlearn/attacks/ + one line here + its test.
BUILTIN_ATTACKS: dict[str, str] = {
    "relearn": "mechunlearn.attacks.finetune:Relearn",
    "retain_finetune": "mechunlearn.attacks.finetune:RetainFinetune",
    "gcg": "mechunlearn.attacks.gcg:GCG",
    "soft_prompt": "mechunlearn.attacks.soft_prompt:SoftPrompt",
    "quantize": "mechunlearn.attacks.quantize:Quantize",
    "direction_ablation": "mechunlearn.attacks.ablation:DirectionAblation",
}

_USER_ATTACKS: dict[str, type[Attack]] = {}


def register_attack(attack_class: type[Attack]) -> type[Attack]:
    """Register a user-defined attack class (usable as a decorator); a taken name is refused."""
    name = getattr(attack_class, "name", "")
    if not name:
        raise AttackError(f"{attack_class.__name__} has no `name`; set a class attribute name = '...'")
    if name in BUILTIN_ATTACKS or name in _USER_ATTACKS:
        raise AttackError(f"an attack named {name!r} is already registered")
    _USER_ATTACKS[name] = attack_class
    return attack_class


def available_attacks() -> list[str]:
    return [*BUILTIN_ATTACKS, *_USER_ATTACKS]


def get_attack(name: str) -> type[Attack]:
    if name in _USER_ATTACKS:
        return _USER_ATTACKS[name]
    if name not in BUILTIN_ATTACKS:
        raise AttackError(f"unknown attack {name!r}; known attacks: {', '.join(available_attacks())}")
    module_name, class_name = BUILTIN_ATTACKS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_attack(name: str, **overrides: Any) -> Attack:
    """An instance of attack ``name`` with its default budget, overridden by ``overrides`` (strings parsed)."""
    attack_class = get_attack(name)
    return attack_class(attack_class.Config.from_overrides(overrides, attack=name))

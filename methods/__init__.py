"""Unlearning methods: one small file each, one registry, one shared training loop (``mechunlearn.unlearn``).

``create("npo", beta=0.2)`` builds a method; ``available()`` lists them; ``register`` adds your own.
Classes are importable by name too: ``from mechunlearn.methods import NPO``.
"""

from mechunlearn.methods.base import MethodConfig, UnlearnContext, UnlearningMethod
from mechunlearn.methods.registry import BUILTIN_METHODS, available, create, get_method, register

__all__ = ["MethodConfig", "UnlearnContext", "UnlearningMethod", "available", "create", "get_method", "register",
           *sorted({path.split(":")[1] for path in BUILTIN_METHODS.values()})]

_CLASS_TO_NAME = {path.split(":")[1]: name for name, path in BUILTIN_METHODS.items()}


def __getattr__(attribute: str):
    """Lazy ``from mechunlearn.methods import NPO`` without importing every method file up front."""
    if attribute in _CLASS_TO_NAME:
        return get_method(_CLASS_TO_NAME[attribute])
    raise AttributeError(f"module 'mechunlearn.methods' has no attribute {attribute!r}")

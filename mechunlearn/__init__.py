"""mechunlearn: did an unlearned language model forget, or does it only hide?

Import what you need from the submodules (``mechunlearn.models``, ``mechunlearn.world``,
``mechunlearn.methods``, ``mechunlearn.diagnostics``...), or use the short API for notebooks
(:mod:`mechunlearn.api`)::

    import mechunlearn as mu
    world = mu.world("micro")
    base = mu.load("base", world=world)
    result = mu.unlearn(base, "npo", world=world)
    mu.evaluate({"base": base, "npo": result.model}, world)

Importing the package has no side effects and imports neither torch nor any submodule: the API's names are
resolved on first use (module ``__getattr__``).
"""

__version__ = "0.1.0"

# name -> "module:attribute", resolved on first access. ``world`` and ``unlearn`` are also submodules: they are
# callable modules (mechunlearn._callable), so ``mu.world(...)`` / ``mu.unlearn(...)`` work either way.
_API = {"load": "mechunlearn.api:load", "pretrain": "mechunlearn.api:pretrain", "evaluate": "mechunlearn.api:evaluate",
        "diagnose": "mechunlearn.api:diagnose", "attack": "mechunlearn.api:attack",
        "notebook_mode": "mechunlearn.api:notebook_mode", "world": "mechunlearn.world:",
        "unlearn": "mechunlearn.unlearn:"}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'mechunlearn' has no attribute {name!r}")
    import importlib

    module_name, attribute = _API[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})

"""Submodules that are also the short API's functions: ``mu.world(...)`` and ``mu.unlearn(...)``.

``mechunlearn.world`` (a package) and ``mechunlearn.unlearn`` (a module) share their names with functions of the
notebook API (:mod:`mechunlearn.api`). Once a submodule is imported, Python sets it as the package's attribute,
which would hide the function; so those two modules are made callable instead: calling the module calls the API
function, and everything else (``from mechunlearn.unlearn import unlearn``, ``mechunlearn.world.World``) stays as
it was.
"""

from __future__ import annotations

import importlib
import sys
import types

__all__ = ["make_callable"]


class _CallableModule(types.ModuleType):
    """A module whose call is ``__call_target__`` ("module:function", imported on the first call)."""

    def __call__(self, *args, **kwargs):
        module_name, function = self.__call_target__.split(":")
        return getattr(importlib.import_module(module_name), function)(*args, **kwargs)


def make_callable(module_name: str, target: str) -> None:
    """Make the (already imported) module ``module_name`` call ``target`` ("module:function")."""
    module = sys.modules[module_name]
    module.__class__ = _CallableModule
    module.__call_target__ = target

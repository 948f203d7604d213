"""One convention for numbers that are not ordinary: undefined ratios, infinities, values not computed.

In memory (floats):

* ``ratio(x, 0)`` is ``+inf`` / ``-inf`` for ``x != 0`` (a change of something relative to nothing);
* ``ratio(0, 0)`` is ``nan``: UNDEFINED (neither side changed; no ratio exists), never silently 0 or 1;
* a value that was not computed (no input for it, analysis not run) is ``None``.

In JSON (``to_json`` / ``from_json``) the three stay apart, because plain JSON has no NaN or Infinity:
``nan`` -> ``"undefined"``, ``+inf`` -> ``"infinite"``, ``-inf`` -> ``"-infinite"``, ``None`` -> ``null``
("not computed"). ``from_json`` turns them back into floats (``None`` stays ``None``), so a reader of a
``run.json`` or ``summary.json`` gets back exactly what was written.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ratio", "UNDEFINED", "INFINITE", "NEG_INFINITE", "to_python", "to_json", "from_json", "as_float"]

UNDEFINED = "undefined"
INFINITE = "infinite"
NEG_INFINITE = "-infinite"
_SPECIAL = {UNDEFINED: math.nan, INFINITE: math.inf, NEG_INFINITE: -math.inf}


def ratio(numerator: float | int, denominator: float | int) -> float:
    """``numerator / denominator``; ``x / 0`` = ``±inf`` for ``x != 0``, ``0 / 0`` = ``nan`` (undefined)."""
    numerator, denominator = float(numerator), float(denominator)
    if denominator == 0.0:
        if numerator == 0.0 or math.isnan(numerator):
            return math.nan
        return math.copysign(math.inf, numerator)
    return numerator / denominator


def _float_to_json(value: float) -> float | str:
    if math.isnan(value):
        return UNDEFINED
    if math.isinf(value):
        return INFINITE if value > 0 else NEG_INFINITE
    return value


def to_python(value: Any) -> Any:
    """``value`` with numpy / torch scalars and arrays turned into Python numbers and lists, recursively; NaN and
    inf stay floats (what a Python caller computes with). ``to_json`` is this plus the JSON names."""
    return _convert(value, lambda number: number)


def to_json(value: Any) -> Any:
    """A JSON-able copy of ``value``: numpy and torch scalars/arrays to Python, NaN/inf to their names, dict keys
    to strings, tuples to lists; anything else unknown as ``str``."""
    return _convert(value, _float_to_json)


def _convert(value: Any, on_float) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, dict):
        return {str(key): _convert(item, on_float) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_convert(item, on_float) for item in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return on_float(float(value))
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy arrays, torch tensors (torch not imported)
        return _convert(value.tolist(), on_float)
    if hasattr(value, "item") and callable(value.item):
        return _convert(value.item(), on_float)
    return str(value)


def from_json(value: Any) -> Any:
    """The inverse of ``to_json`` for numbers: ``"undefined"`` -> nan, ``"infinite"`` -> inf, recursively."""
    if isinstance(value, str):
        return _SPECIAL.get(value, value)
    if isinstance(value, dict):
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


def as_float(value: Any) -> float | None:
    """A number read from JSON as a float (``None`` -> ``None``, the special names -> nan/inf)."""
    if value is None:
        return None
    value = from_json(value)
    return float(value)

"""Method grids: a ``[methods.<name>]`` value given as a list is a grid axis; the study runs the product.

``lr = [1e-4, 3e-4]`` and ``beta = [0.05, 0.1]`` give four configurations, each run once per seed. A field that
is itself a sequence (``layer_ids = [1, 2]``) is one value; its grid is a list of lists
(``layer_ids = [[1], [1, 2]]``). Every configuration has a ``config key``: the digest of the method's name and
its full resolved hyper-parameters (preset and defaults filled in, the seed left out), so two spellings of one
configuration are one key, and the model id ``<method>-<config key>-s<seed>`` names the same run in every study.

A study whose grids make more than ``GRID_LIMIT`` unlearning runs (configurations x seeds, all methods) is
refused unless the caller says yes (``--yes``): a typo in a grid should not start a week of training.
"""

from __future__ import annotations

import itertools
import typing
from dataclasses import dataclass, field
from typing import Any

from mechunlearn.pipeline.errors import StudyError
from mechunlearn.storage import config_digest

__all__ = ["MethodVariant", "expand_methods", "GRID_LIMIT", "grid_axes"]

GRID_LIMIT = 100


@dataclass(frozen=True)
class MethodVariant:
    """One configuration of one method: what the study gives (``hyper``) and what the method runs (``config``)."""

    method: str
    config_key: str
    preset: str | None
    hyper: dict[str, Any]
    config: dict[str, Any]           # the method's resolved hyper-parameters, seed excluded
    seeds: tuple[int, ...]
    label: str = ""                  # the row name in tables: <method>, or <method>-<config key> in a grid
    grid_keys: tuple[str, ...] = field(default=())   # the hyper-parameters this method's grid varies

    def model_id(self, seed: int) -> str:
        return f"{self.method}-{self.config_key}-s{seed}"


def _is_sequence_field(hint: Any) -> bool:
    arguments = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    target = hint if typing.get_origin(hint) in (tuple, list) or not arguments else arguments[0]
    return typing.get_origin(target) in (tuple, list)


def grid_axes(method: str, hyper: dict[str, Any]) -> dict[str, list[Any]]:
    """``{hyper-parameter: [values]}``: a one-value list for a plain value, the given list for a grid axis."""
    from mechunlearn.methods import get_method

    config_class = get_method(method).Config
    hints = typing.get_type_hints(config_class)
    axes: dict[str, list[Any]] = {}
    for key, value in hyper.items():
        if key not in hints:
            raise StudyError(f"[methods.{method}] has an unknown hyper-parameter {key!r}; known: "
                             f"{', '.join(sorted(name for name in hints if name != 'seed'))} (and preset, seeds)")
        sequence = _is_sequence_field(hints[key])
        is_axis = isinstance(value, list) and (not sequence or (bool(value) and
                                                                all(isinstance(item, list) for item in value)))
        if is_axis and not value:
            raise StudyError(f"methods.{method}.{key} is an empty list: a grid axis needs at least one value")
        axes[key] = list(value) if is_axis else [value]
    return axes


def expand_methods(study, *, limit: int = GRID_LIMIT, allow_large: bool = False) -> list[MethodVariant]:
    """Every configuration of every method of ``study``, in file order (grid points in product order)."""
    from mechunlearn.methods import create

    variants: list[MethodVariant] = []
    runs: dict[str, int] = {}
    for name, spec in study.methods.items():
        axes = grid_axes(name, spec.hyper)
        varying = tuple(key for key, values in axes.items() if len(values) > 1)
        preset = study.preset_of(name)
        seen: dict[str, dict[str, Any]] = {}
        points = []
        for values in itertools.product(*axes.values()):
            point = dict(zip(axes, values))
            try:
                method = create(name, preset=preset, **point)
            except (ValueError, TypeError) as error:
                raise StudyError(f"[methods.{name}] {error}") from error
            config = method.config.to_dict()
            config.pop("seed", None)
            key = config_digest({"method": name, "config": config}, length=8)
            if key in seen:
                raise StudyError(f"[methods.{name}] the grid gives one configuration twice ({seen[key]} and {point}): "
                                 "drop the repeated value")
            seen[key] = point
            points.append((key, point, config))
        seeds = tuple(study.seeds_of(name))
        for key, point, config in points:
            label = f"{name}-{key}" if len(points) > 1 else name
            variants.append(MethodVariant(name, key, preset, point, config, seeds, label, varying))
        runs[name] = len(points) * len(seeds)
    total = sum(runs.values())
    if total > limit and not allow_large:
        breakdown = ", ".join(f"{name}: {count}" for name, count in runs.items())
        raise StudyError(f"the method grids make {total} unlearning runs ({breakdown}; configurations x seeds), more "
                         f"than the limit of {limit}: shrink the grids, or pass --yes to run them all")
    return variants

"""What every command shares: resolving ``--world`` and ``--model``, the common flags, extra ``--name value`` flags."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["resolve_world", "resolve_model_dir", "add_common", "parse_extra_flags", "LONG_METRICS"]


def resolve_world(spec: str | None, seed: int = 0):
    """``--world``: a world directory or a size preset (see ``mechunlearn.world.resolve_world``)."""
    from mechunlearn.world import resolve_world as resolve

    return resolve(spec, seed)


def resolve_model_dir(spec: str, world=None, progress: bool = True) -> Path:
    """``base``/``gold`` (the world's reference models, pretrained if needed) or a checkpoint directory/name."""
    from mechunlearn.models import resolve_checkpoint_dir
    from mechunlearn.reference import REFERENCE_KINDS, pretrain

    if spec in REFERENCE_KINDS:
        if world is None:
            raise ValueError(f"--model {spec} needs a world (--world default|micro|DIR)")
        return pretrain(world, spec, progress=progress)
    return resolve_checkpoint_dir(spec)


# Per-item lists kept in run.json but left out of the printed summary.
LONG_METRICS = ("generations", "forget_truth_ratios")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_extra_flags(extra: list[str]) -> dict[str, str]:
    """``--beta 0.2 --layer-ids 1-2`` -> ``{"beta": "0.2", "layer_ids": "1-2"}`` (typed later by the method)."""
    overrides: dict[str, str] = {}
    index = 0
    while index < len(extra):
        flag = extra[index]
        if not flag.startswith("--"):
            raise ValueError(f"unexpected argument {flag!r}: hyper-parameters are given as --name value")
        if "=" in flag:
            name, value = flag[2:].split("=", 1)
            index += 1
        else:
            if index + 1 >= len(extra):
                raise ValueError(f"{flag} needs a value")
            name, value = flag[2:], extra[index + 1]
            index += 2
        overrides[name.replace("-", "_")] = value
    return overrides

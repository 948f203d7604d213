"""What every command shares: resolving ``--world`` and ``--model``, the common flags (``--device``, ``--dtype``,
``--quiet``; ``--allow-download`` on commands that load a checkpoint), extra ``--name value`` flags."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

__all__ = ["resolve_world", "resolve_model_dir", "add_common", "add_download_flag", "quiet_output",
           "parse_extra_flags", "LONG_METRICS"]


def resolve_world(spec: str | None, seed: int = 0):
    """``--world``: a world directory or a size preset (see ``mechunlearn.world.resolve_world``)."""
    from mechunlearn.world import resolve_world as resolve

    return resolve(spec, seed)


def resolve_model_dir(spec: str, world=None, progress: bool = True, allow_download: bool = False) -> Path:
    """``base``/``gold`` (the world's reference models, pretrained if needed), a checkpoint directory, an
    unlearned run's directory (its ``model/``) or an HF hub name (from the local cache; fetched only when
    ``allow_download``)."""
    from mechunlearn.models import resolve_checkpoint_dir
    from mechunlearn.reference import REFERENCE_KINDS, pretrain

    if spec in REFERENCE_KINDS:
        if world is None:
            raise ValueError(f"--model {spec} needs a world (--world default|micro|DIR)")
        return pretrain(world, spec, progress=progress)
    run_model = Path(spec).expanduser() / "model"
    if not (Path(spec).expanduser() / "config.json").is_file() and (run_model / "config.json").is_file():
        return run_model  # an unlearned run: RUN/run.json + RUN/model/
    return resolve_checkpoint_dir(spec, allow_download=allow_download)


# Per-item lists kept in run.json but left out of the printed summary.
LONG_METRICS = ("generations", "forget_truth_ratios")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no library logging")


def add_download_flag(parser: argparse.ArgumentParser) -> None:
    """``--allow-download``, for commands that load a checkpoint: pass ``args.allow_download`` on to
    ``resolve_model_dir`` / ``models.load``."""
    parser.add_argument("--allow-download", action="store_true",
                        help="fetch an HF hub name missing from the local cache (default: never download)")


# Libraries whose log records (warnings included) --quiet silences; tqdm bars of our own follow ``progress``.
_QUIET_LOGGERS = ("transformers", "huggingface_hub", "sae_lens", "transformer_lens", "datasets", "accelerate")


@contextlib.contextmanager
def quiet_output(enabled: bool = True) -> Iterator[None]:
    """Inside: no transformers / huggingface_hub progress bars ("Loading weights", "Writing model shards",
    downloads) and no log records below ERROR from the libraries we call. Everything is restored on exit.

    transformers' and the hub's bars are switched by their own global toggles, so they are set and set back here;
    the toolkit's own tqdm bars are switched by each command's ``progress=not args.quiet``.
    """
    if not enabled:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    transformers_bars = hf_logging.is_progress_bar_enabled()
    hub_bars_disabled = are_progress_bars_disabled()
    transformers_verbosity = hf_logging.get_verbosity()
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    hf_logging.disable_progress_bar()  # also disables the hub's bars
    hf_logging.set_verbosity_error()
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        hf_logging.set_verbosity(transformers_verbosity)
        if transformers_bars:
            hf_logging.enable_progress_bar()
        if hub_bars_disabled:
            disable_progress_bars()
        else:
            enable_progress_bars()


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

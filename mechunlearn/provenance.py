"""What produced a result: versions, machine, device, dtype, threads and seeds, recorded in every record we write.

``environment(...)`` is the one dictionary that goes into every ``run.json``, ``pretrain.json``, ``step.json`` and
manifest, so a number can be traced to the machine and settings that made it (bitwise repeatability holds only
for the same machine, torch build and thread count: see README "Reproducibility").
"""

from __future__ import annotations

import platform
import socket
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

__all__ = ["environment", "package_versions"]

_PACKAGES = ("mechunlearn", "torch", "transformers", "transformer-lens", "sae-lens", "numpy", "scipy")


def package_versions(packages: Sequence[str] = _PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment(*, device: Any = None, dtype: Any = None, seeds: Sequence[int] | int | None = None,
                **extra: Any) -> dict[str, Any]:
    """Versions, python, platform, host, torch threads, device (and its name on CUDA), dtype, GPU count, seeds."""
    import torch

    record: dict[str, Any] = {
        "versions": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": _cpu_count(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "device": None if device is None else str(device),
        "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
        "seeds": [seeds] if isinstance(seeds, int) else (None if seeds is None else list(seeds)),
    }
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(str(device)).index or 0
        record["device_name"] = torch.cuda.get_device_name(index)
    record.update(extra)
    return record


def _cpu_count() -> int | None:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count()

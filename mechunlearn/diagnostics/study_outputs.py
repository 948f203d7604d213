"""Where ``diagnose`` writes, and the key that says whether an output is still current.

Every analysis folder holds a ``step.json`` (docs/study.md): ``{"step", "key", "config", "inputs",
"environment", "created", "wall_s"}``. The key hashes what produced the output:

* the models it describes, by their weight digests (``storage.checkpoint_digest``: config.json and every
  ``*.safetensors``, by content); one model for a per-model folder, both for a comparison folder;
* the data it read, by content: the texts (``storage.texts_digest`` of each split after ``max_samples``), the MCQ
  items, the world (its content hash) - only what the analysis declares in ``inputs`` or receives as options;
* its options (derived and given; items, texts, worlds and SAEs by digest), the batching and the dtype.

A folder whose recorded key matches is skipped; any other (another world, a retrained model, other texts or
options, or a folder from before keys existed) is recomputed and replaced atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechunlearn.diagnostics.base import AnalysisResult
from mechunlearn.storage import config_digest, read_json, texts_digest, write_json

__all__ = ["STEP_VERSION", "sanitise", "model_name_for", "result_for_model", "fingerprint", "step_record",
           "is_current", "write_manifest", "IGNORED_OPTIONS"]

STEP_VERSION = 1  # bump when an analysis' numbers change for the same inputs, so old outputs are recomputed
IGNORED_OPTIONS = frozenset({"progress", "cache_dir"})  # change how it runs, not what it computes


# ----------------------------------------------------------------------------------------------------- names
def sanitise(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("--", "_")).strip("._")
    return cleaned or "model"


def model_name_for(directory: str | Path) -> str:
    """A folder name for a checkpoint: its directory's name, or ``org_name`` for an HF-cache snapshot."""
    path = Path(directory)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return sanitise(path.parent.parent.name[len("models--"):])
    return sanitise(path.resolve().name)


def result_for_model(result: AnalysisResult, model_name: str, model_names: Sequence[str]) -> AnalysisResult:
    """The rows of ``model_name`` (frame and every table with a ``model`` column) and its part of the summary."""
    def rows(frame):
        return frame[frame["model"] == model_name].reset_index(drop=True) if "model" in frame.columns else frame

    others = set(model_names) - {model_name}
    summary: dict[str, Any] = {}
    for key, value in result.summary.items():
        if key in others:  # summaries keyed by model name (activation_separation)
            continue
        if key == "models" and isinstance(value, dict):  # or under "models" (probes, lenses)
            value = {name: entry for name, entry in value.items() if name not in others}
        summary[key] = value
    return AnalysisResult(result.name, rows(result.frame), {k: rows(t) for k, t in result.tables.items()},
                          summary | {"model": model_name}, result.plot, dict(result.labels))


# ------------------------------------------------------------------------------------------------------ keys
def fingerprint(value: Any) -> Any:
    """A JSON-able stand-in for an option value that changes whenever the value's content does."""
    from mechunlearn.storage import model_digest

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): fingerprint(item) for key, item in value.items() if key not in IGNORED_OPTIONS}
    if hasattr(value, "content_hash"):  # a World
        return {"world": value.content_hash}
    if hasattr(value, "named_parameters"):  # an SAE or any module: its parameters' bytes
        return {"module": type(value).__name__, "digest": model_digest(value)}
    if hasattr(value, "detach") and hasattr(value, "shape"):  # a tensor
        data = value.detach().cpu().contiguous()
        return {"tensor": hashlib.sha256(data.float().numpy().tobytes()).hexdigest()[:16],
                "shape": list(data.shape)}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(item, str) for item in value):
            return {"texts": texts_digest(value), "n": len(value)}
        if value and all(dataclasses.is_dataclass(item) for item in value):
            return {"records": config_digest([dataclasses.asdict(item) for item in value]), "n": len(value)}
        return [fingerprint(item) for item in value]
    if dataclasses.is_dataclass(value):
        return fingerprint(dataclasses.asdict(value))
    return f"<{type(value).__name__}>"


def step_record(name: str, *, models: Mapping[str, str], options: Mapping[str, Any], data: Mapping[str, Any],
                settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"step", "key", "config", "inputs"}`` of one output folder (environment and timing are added on save)."""
    config = {"options": fingerprint(dict(options)), **settings}
    inputs = {"models": dict(models), "data": dict(data)}
    key = config_digest({"step": name, "version": STEP_VERSION, "config": config, "inputs": inputs})
    return {"step": name, "key": key, "version": STEP_VERSION, "config": config, "inputs": inputs}


def is_current(folder: Path, key: str) -> bool:
    """Whether ``folder`` holds an output whose ``step.json`` records ``key``."""
    record = folder / "step.json"
    if not record.is_file():
        return False
    try:
        return read_json(record).get("key") == key
    except (json.JSONDecodeError, AttributeError, OSError):
        return False


# -------------------------------------------------------------------------------------------------- manifest
def write_manifest(path: Path, header: dict[str, Any], records: dict[str, dict[str, Any]],
                   last_run: dict[str, Any]) -> None:
    """Merge into an existing manifest: analyses skipped this time keep the record of the run that wrote them."""
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = read_json(path)
        except (json.JSONDecodeError, OSError):
            previous = {}
    analyses = dict(previous.get("analyses", {}))
    analyses.update(records)
    write_json(path, {**header, "analyses": analyses, "last_run": last_run,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})

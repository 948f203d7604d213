"""Running one step, in whatever process an executor chose: ``execute(task) -> step.json record``.

A task is plain data (the step, its finished inputs' ``step.json`` records, OUT, the study's settings), so it
pickles to a Ray worker or a SLURM job unchanged. ``execute`` sets the study's torch thread count for the step
(and puts the caller's back), writes the step into a staging directory that ``storage.atomic_directory`` renames
to ``OUT/<step id>/`` only when the step finished, ``step.json`` last: a killed step leaves a temporary, never a
half-written folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mechunlearn.pipeline.steps.base import InputRecord, Step, StepContext, get_step_kind
from mechunlearn.storage import atomic_directory, write_json

__all__ = ["execute", "make_task", "settings_of"]


def settings_of(study, *, progress: bool = True, executor: str | None = None) -> dict[str, Any]:
    """What a running step needs of the study besides its own config: unkeyed, recorded in ``step.json``."""
    tracking = getattr(study, "tracking", None)
    return {"device": study.study.device, "dtype": study.study.dtype, "threads": study.study.threads,
            "cache": str(study.cache_dir) if study.cache_dir else "", "progress": progress,
            "executor": executor or study.study.executor,
            # mechunlearn.tracking: unkeyed, so turning a tracker on or off reruns nothing
            "tracking": {"backend": tracking.backend, "experiment": tracking.experiment or study.study.name,
                         "run_prefix": tracking.run_prefix, "study": study.study.name} if tracking else {}}


def make_task(step: Step, out: Path, inputs: dict[str, tuple[str, dict[str, Any]]],
              settings: dict[str, Any]) -> dict[str, Any]:
    """``inputs``: ``{name: (step id, its step.json record)}``."""
    return {"step": step.to_dict(), "out": str(out), "settings": dict(settings),
            "inputs": {name: {"id": step_id, "record": record} for name, (step_id, record) in inputs.items()}}


def execute(task: dict[str, Any]) -> dict[str, Any]:
    """Run the step of ``task`` into ``OUT/<step id>/``; return its ``step.json`` record."""
    import torch

    from mechunlearn.models import resolve_device, resolve_dtype
    from mechunlearn.provenance import environment

    step = Step.from_dict(task["step"])
    kind = get_step_kind(step.kind)
    out = Path(task["out"])
    settings = task["settings"]
    inputs = {name: InputRecord(entry["id"], out / entry["id"], entry["record"])
              for name, entry in task["inputs"].items()}
    context = StepContext(out, dict(settings), inputs)
    previous_threads = torch.get_num_threads()
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    created = time.strftime("%Y-%m-%dT%H:%M:%S")
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        with atomic_directory(out / step.id) as staging:
            outputs = kind.run(step, context, staging)
            device = resolve_device(settings.get("device", "auto"))
            dtype = resolve_dtype(step.config.get("dtype", settings.get("dtype", "auto")), device)
            extras = {"executor": settings.get("executor"), "pid": os.getpid(), **context.provenance}
            seeds = extras.pop("seeds", None)
            record = {"step": step.kind, "id": step.id, "key": step.key, "model_id": step.model_id,
                      "config": step.config, "paths": step.paths,
                      "inputs": {name: {"id": entry.id, "key": entry.record["key"]} for name, entry in inputs.items()},
                      "outputs": outputs, "environment": environment(device=device, dtype=dtype, seeds=seeds, **extras),
                      "created": created, "wall_s": round(time.perf_counter() - started, 3),
                      # CPU seconds of this process (all its threads): on a shared machine, what the step would
                      # take alone on one core (one torch thread); wall_s there includes waiting for the CPU
                      "cpu_s": round(time.process_time() - started_cpu, 3)}
            write_json(staging / "step.json", record)
    finally:
        torch.set_num_threads(previous_threads)
    return record

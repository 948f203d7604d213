"""What a step is: one class per step kind (its plan, its key, its run, its outputs), and the registry.

A :class:`StepKind` turns the study into :class:`Step` instances (``plan``), and runs one of them (``run``) into a
staging directory that becomes ``OUT/<step.id>/`` atomically. A step's id is its folder under OUT
(``models/base``, ``evals/npo-3f2a1c9e-s0``), so ids are unique and readable. Its key hashes the kind, the kind's
``version``, the step's config and its inputs' keys (:func:`step_key`); a kind whose key comes from elsewhere
(a user's checkpoint: its bytes) overrides ``key``.

Adding a step kind = one module with one ``StepKind`` subclass + its name in ``BUILTIN_STEP_KINDS``; ``order``
places it in the study (data 10, models 20, unlearned 30, evals 40, attacks 50, native 60, diagnostics 70,
tables 80, report 90, figures 100). ``provides`` names the study features it serves (``"attacks"``,
``"native"``): a study asking for a feature no registered kind provides is refused with a clear error.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mechunlearn.pipeline.errors import StudyError
from mechunlearn.storage import config_digest

__all__ = ["Step", "StepKind", "StepContext", "Plan", "step_key", "BUILTIN_STEP_KINDS", "register_step_kind",
           "step_kinds", "get_step_kind", "STAGES"]

# The study's stages in order; ``--force STAGE`` reruns every kind of a stage.
STAGES = ("data", "models", "unlearned", "evals", "attacks", "native", "diagnostics", "tables", "report", "figures")


@dataclass
class Step:
    """One unit of work: ``id`` (= its folder under OUT), ``kind``, ``config`` (JSON-able, keyed), ``inputs``
    (``{name: step id}``), ``model_id`` (the model it makes or is about, if any), ``paths`` (where its
    external inputs lie: recorded, never keyed, so moving a checkpoint or a world reruns nothing) and ``key``
    (set by the plan)."""

    kind: str
    id: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None
    paths: dict[str, str] = field(default_factory=dict)
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "config": self.config, "inputs": dict(self.inputs),
                "model_id": self.model_id, "paths": dict(self.paths), "key": self.key}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Step":
        return cls(record["kind"], record["id"], record["config"], dict(record["inputs"]), record.get("model_id"),
                   dict(record.get("paths", {})), record.get("key", ""))


def step_key(kind: str, version: str, config: dict[str, Any], input_keys: dict[str, str]) -> str:
    """``config_digest({"step", "version", "config", "inputs": {name: key}})``: the contract of docs/study.md."""
    return config_digest({"step": kind, "version": version, "config": config, "inputs": input_keys})


@dataclass
class InputRecord:
    """A finished input step, as a running step sees it: its folder and its ``step.json``."""

    id: str
    folder: Path
    record: dict[str, Any]

    @property
    def outputs(self) -> dict[str, Any]:
        return self.record.get("outputs", {})


@dataclass
class StepContext:
    """What ``StepKind.run`` gets besides its step: the study's settings and its finished inputs."""

    out: Path
    settings: dict[str, Any]                 # device, dtype, threads, cache, progress (see worker.settings_of)
    inputs: dict[str, InputRecord]
    provenance: dict[str, Any] = field(default_factory=dict)   # a run's extras for step.json's environment
    _memo: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> bool:
        return bool(self.settings.get("progress", True))

    @property
    def device(self) -> str:
        return self.settings.get("device", "auto")

    @property
    def dtype(self) -> str:
        return self.settings.get("dtype", "auto")

    @property
    def cache_dir(self) -> Path | None:
        cache = self.settings.get("cache")
        return Path(cache) if cache else None

    def data(self):
        """The study's data (:class:`mechunlearn.pipeline.steps.data.StudyData`) from the ``data`` input."""
        from mechunlearn.pipeline.steps.data import StudyData

        if "data" not in self._memo:
            self._memo["data"] = StudyData.from_record(self.inputs["data"].record)
        return self._memo["data"]

    def model(self, name: str):
        """The :class:`~mechunlearn.pipeline.models.ModelRef` of input ``name`` (a model step)."""
        from mechunlearn.pipeline.models import ModelRef

        entry = self.inputs[name]
        return ModelRef.from_record(entry.folder, entry.record)


class StepKind:
    """Base class of a step kind. Subclasses set ``name``, ``stage``, ``order`` and implement ``plan`` and ``run``."""

    name: ClassVar[str] = ""
    stage: ClassVar[str] = ""
    order: ClassVar[int] = 0
    version: ClassVar[str] = "1"
    provides: ClassVar[tuple[str, ...]] = ()
    loads_models: ClassVar[bool] = True     # gets ray.num_gpus / a GPU under submitit; tables and data do not

    def plan(self, study, plan: "Plan") -> Iterable[Step]:
        """The steps of this kind for ``study``; earlier kinds' steps are in ``plan``."""
        raise NotImplementedError

    def key(self, step: Step, input_keys: dict[str, str], plan: "Plan") -> str:
        return step_key(self.name, self.version, step.config, input_keys)

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        """Whether a folder whose ``step.json`` has the step's key is really done (pointers still valid...)."""
        return True

    def run(self, step: Step, context: StepContext, staging: Path) -> dict[str, Any]:
        """Do the work, writing into ``staging``; return the ``outputs`` recorded in ``step.json``. Provenance
        beyond ``provenance.environment()`` (the layer placement, the seeds) goes into ``context.provenance``."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------- the plan
class Plan:
    """The steps of a study in dependency order, keyed; kinds read earlier steps (and ``facts``) while planning."""

    def __init__(self, study) -> None:
        self.study = study
        self.steps: dict[str, Step] = {}
        self.facts: dict[str, Any] = {}   # plan-time values kinds share (the world, the method variants)

    def add(self, step: Step) -> Step:
        if step.id in self.steps:
            raise StudyError(f"two steps would write {step.id}: rename one model or method")
        for other in self.steps:
            if step.id.startswith(other + "/") or other.startswith(step.id + "/"):
                raise StudyError(f"step folders {other} and {step.id} would nest")
        missing = [name for name, source in step.inputs.items() if source not in self.steps]
        if missing:
            raise RuntimeError(f"step {step.id} names inputs {missing} that are not planned yet")
        self.steps[step.id] = step
        return step

    def by_kind(self, kind: str) -> list[Step]:
        return [step for step in self.steps.values() if step.kind == kind]

    def model_steps(self) -> list[Step]:
        """Every step that makes a model (``model_id`` set and kind in a model-making stage), in plan order."""
        return [step for step in self.steps.values()
                if step.model_id is not None and get_step_kind(step.kind).stage in ("models", "unlearned", "native")]

    def __iter__(self):
        return iter(self.steps.values())

    def __len__(self) -> int:
        return len(self.steps)


# ------------------------------------------------------------------------------------------------- the registry
BUILTIN_STEP_KINDS: dict[str, str] = {
    "data": "mechunlearn.pipeline.steps.data:DataStep",
    "reference": "mechunlearn.pipeline.steps.models:ReferenceStep",
    "checkpoint": "mechunlearn.pipeline.steps.models:CheckpointStep",
    "unlearned": "mechunlearn.pipeline.steps.unlearned:UnlearnedStep",
    "evals": "mechunlearn.pipeline.steps.evals:EvalsStep",
    "attack": "mechunlearn.pipeline.steps.attacks:AttackStep",
    "diagnostics": "mechunlearn.pipeline.steps.diagnostics:DiagnosticsStep",
    "methods_table": "mechunlearn.pipeline.steps.tables:MethodsTableStep",
    "robustness_table": "mechunlearn.pipeline.steps.attacks:RobustnessTableStep",
    "signature_table": "mechunlearn.pipeline.steps.report:SignatureTableStep",
    "report": "mechunlearn.pipeline.steps.report:ReportStep",
    "figures": "mechunlearn.pipeline.steps.figures:FiguresStep",
    "native_model": "mechunlearn.pipeline.steps.native:NativeModelStep",
    "native_switch": "mechunlearn.pipeline.steps.native:NativeSwitchStep",
    "native": "mechunlearn.pipeline.steps.native:NativeTableStep",
}
_USER_KINDS: dict[str, type[StepKind]] = {}
_LOADED: dict[str, StepKind] = {}


def register_step_kind(kind_class: type[StepKind]) -> type[StepKind]:
    """Register a step kind (usable as a decorator); a taken name is refused."""
    name = kind_class.name
    if not name or kind_class.stage not in STAGES:
        raise ValueError(f"{kind_class.__name__} needs a name and a stage from {STAGES}")
    if name in BUILTIN_STEP_KINDS or name in _USER_KINDS:
        raise ValueError(f"a step kind named {name!r} is already registered")
    _USER_KINDS[name] = kind_class
    return kind_class


def get_step_kind(name: str) -> StepKind:
    if name not in _LOADED:
        if name in _USER_KINDS:
            _LOADED[name] = _USER_KINDS[name]()
        elif name in BUILTIN_STEP_KINDS:
            module_name, class_name = BUILTIN_STEP_KINDS[name].split(":")
            _LOADED[name] = getattr(importlib.import_module(module_name), class_name)()
        else:
            raise ValueError(f"unknown step kind {name!r}; known: {', '.join([*BUILTIN_STEP_KINDS, *_USER_KINDS])}")
    return _LOADED[name]


def step_kinds() -> list[StepKind]:
    """Every registered kind, in study order."""
    kinds = [get_step_kind(name) for name in [*BUILTIN_STEP_KINDS, *_USER_KINDS]]
    return sorted(kinds, key=lambda kind: kind.order)

"""The study: one TOML file -> keyed steps -> one output directory (docs/study.md is the contract).

>>> from mechunlearn.pipeline import load_study, run_study
>>> result = run_study(load_study("studies/micro.toml"))            # doctest: +SKIP
>>> result.out / "tables" / "methods" / "methods.csv"                # doctest: +SKIP

* :mod:`~mechunlearn.pipeline.config`: the study file's sections as validated dataclasses;
* :mod:`~mechunlearn.pipeline.grid`: method hyper-parameter grids, config keys;
* :mod:`~mechunlearn.pipeline.steps`: one class per step kind (plan, key, run, outputs) and their registry;
* :mod:`~mechunlearn.pipeline.models`: ``ModelRef``, every model of a study by its id;
* :mod:`~mechunlearn.pipeline.executors`: serial, Ray, submitit;
* :mod:`~mechunlearn.pipeline.run`: planning, skipping, running, the manifest.
"""

from mechunlearn.pipeline.config import Study, load_study, parse_study
from mechunlearn.pipeline.errors import StepFailed, StudyError
from mechunlearn.pipeline.grid import GRID_LIMIT, MethodVariant, expand_methods
from mechunlearn.pipeline.models import ModelRef
from mechunlearn.pipeline.run import StudyRun, plan_study, run_study, step_status
from mechunlearn.pipeline.steps import Step, StepKind, register_step_kind, step_kinds

__all__ = ["Study", "load_study", "parse_study", "StudyError", "StepFailed", "GRID_LIMIT", "MethodVariant",
           "expand_methods", "ModelRef", "StudyRun", "plan_study", "run_study", "step_status", "Step", "StepKind",
           "register_step_kind", "step_kinds"]

"""Step kinds of a study, one module each (data, models, unlearned, evals, diagnostics, tables) and the registry
(:mod:`mechunlearn.pipeline.steps.base`)."""

from mechunlearn.pipeline.steps.base import (BUILTIN_STEP_KINDS, STAGES, InputRecord, Plan, Step, StepContext,
                                             StepKind, get_step_kind, register_step_kind, step_key, step_kinds)

__all__ = ["BUILTIN_STEP_KINDS", "STAGES", "InputRecord", "Plan", "Step", "StepContext", "StepKind", "get_step_kind",
           "register_step_kind", "step_key", "step_kinds"]

"""The study's errors: bad input is a ``StudyError`` (a ValueError: the CLI prints one line, exit 2); a step that
raised while running is a ``StepFailed`` naming the step."""

from __future__ import annotations

__all__ = ["StudyError", "StepFailed"]


class StudyError(ValueError):
    """A study file, its inputs or its output directory cannot be used; the message names the input and the fix."""


class StepFailed(RuntimeError):
    """A step raised while it ran; ``step_id`` names it and ``details`` holds the worker's traceback text."""

    def __init__(self, step_id: str, message: str, details: str = "") -> None:
        super().__init__(f"step {step_id} failed: {message}")
        self.step_id, self.details = step_id, details

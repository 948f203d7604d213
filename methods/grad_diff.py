"""Gradient difference: descend on the retain NLL, ascend on the forget NLL with its own weight.

seed 003: ``grad_diff``  L = NLL_retain - forget_weight * NLL_forget  (the retain weight is fixed at 1; with
forget_weight = 1 this is ``ga``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mechunlearn.methods.base import MethodConfig, UnlearningMethod, nll


@dataclass
class GradDiffConfig(MethodConfig):
    forget_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.forget_weight >= 0:
            raise ValueError(f"grad_diff: forget_weight must be >= 0, got {self.forget_weight!r}")


class GradDiff(UnlearningMethod):
    """Gradient difference; a higher ``forget_weight`` unlearns more aggressively at the cost of retain quality."""

    name = "grad_diff"
    Config = GradDiffConfig
    summary = "L = NLL_retain - forget_weight * NLL_forget"

    def loss(self, model, forget, retain):
        forget_nll, retain_nll = nll(model, forget), nll(model, retain)
        loss = retain_nll - self.config.forget_weight * forget_nll
        return loss, {"forget_nll": forget_nll, "retain_nll": retain_nll}

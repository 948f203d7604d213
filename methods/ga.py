"""Gradient ascent (Jang et al. 2023): push the forget-set NLL up; ``ga`` adds a retain NLL anchor.

seed 003: ``ga_simple``  L = -NLL_forget;  ``ga``  L = -NLL_forget + retain_weight * NLL_retain.
"""

from __future__ import annotations

from dataclasses import dataclass

from mechunlearn.methods.base import MethodConfig, UnlearningMethod, nll


class GASimple(UnlearningMethod):
    """Pure gradient ascent on the forget set; no retain term, so general ability may collapse."""

    name = "ga_simple"
    needs_retain = False
    summary = "L = -NLL_forget"

    def loss(self, model, forget, retain):
        forget_nll = nll(model, forget)
        return -forget_nll, {"forget_nll": forget_nll}


@dataclass
class GAConfig(MethodConfig):
    retain_weight: float = 1.0


class GA(UnlearningMethod):
    """Gradient ascent on forget + gradient descent on retain."""

    name = "ga"
    Config = GAConfig
    summary = "L = -NLL_forget + retain_weight * NLL_retain"

    def loss(self, model, forget, retain):
        forget_nll, retain_nll = nll(model, forget), nll(model, retain)
        loss = -forget_nll + self.config.retain_weight * retain_nll
        return loss, {"forget_nll": forget_nll, "retain_nll": retain_nll}

"""Negative Preference Optimization (Zhang et al. 2024): make the forget data less likely than under a frozen
reference, with a bounded (log-sigmoid) loss, plus a retain NLL anchor.

seed 003: ``npo``  L = -(2/β) E_forget[log σ(-β (log πθ(y) - log πref(y)))] + retain_weight * NLL_retain,
with summed (not length-normalised) sequence log-probs, as open-unlearning's ``npo.py`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mechunlearn.batching import logits_of, sequence_logprobs
from mechunlearn.methods.base import MethodConfig, UnlearningMethod, nll


def npo_loss(policy_logp: Tensor, reference_logp: Tensor, beta: float) -> Tensor:
    """-(2/β) mean log σ(-β (policy - reference)) over sequences; equals (2/β) log 2 when policy == reference."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (policy_logp - reference_logp)).mean()


def check_positive(method: str, **values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{method}: {key} must be > 0, got {value!r}")


def check_non_negative(method: str, **values: float) -> None:
    for key, value in values.items():
        if not value >= 0:
            raise ValueError(f"{method}: {key} must be >= 0, got {value!r}")


def require_reference(method: UnlearningMethod):
    reference = method.context.reference if method.context is not None else None
    if reference is None:
        raise RuntimeError(f"{method.name} needs a frozen reference model: run it through mechunlearn.unlearn.unlearn "
                           "or call setup(model, UnlearnContext(..., reference=frozen_copy(model))) first")
    return reference


def policy_and_reference_logprobs(model, reference, batch) -> tuple[Tensor, Tensor, Tensor]:
    """Summed sequence log-probs of ``batch`` under the policy (with grad) and the frozen reference, and the
    number of predicted tokens per sequence: what NPO and DPO both compare."""
    policy, counts = sequence_logprobs(logits_of(model(batch.tokens)), batch)
    with torch.no_grad():
        reference_logp, _ = sequence_logprobs(logits_of(reference(batch.tokens)), batch)
    return policy, reference_logp, counts


@dataclass
class NPOConfig(MethodConfig):
    beta: float = 0.1
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        check_positive("npo", beta=self.beta)
        check_non_negative("npo", retain_weight=self.retain_weight)


class NPO(UnlearningMethod):
    """NPO with a retain NLL term; the reference is the frozen pre-unlearning model (``context.reference``)."""

    name = "npo"
    Config = NPOConfig
    needs_reference = True
    summary = "L = -(2/beta) E_f[log sigmoid(-beta log(pi/pi_ref))] + retain_weight * NLL_retain"

    def loss(self, model, forget, retain):
        reference = require_reference(self)
        policy_logp, reference_logp, counts = policy_and_reference_logprobs(model, reference, forget)
        forget_loss = npo_loss(policy_logp, reference_logp, self.config.beta)
        retain_nll = nll(model, retain)
        forget_nll = -policy_logp.detach().sum() / counts.sum().clamp(min=1)
        return forget_loss + self.config.retain_weight * retain_nll, {
            "npo_loss": forget_loss, "forget_nll": forget_nll, "retain_nll": retain_nll,
            "forget_log_ratio": (policy_logp.detach() - reference_logp).mean()}

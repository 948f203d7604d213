"""SimNPO (Meng et al. 2024): reference-free NPO on the length-normalised forget log-probability, plus a retain
NLL anchor.

seed 003: ``simnpo``  L = -(2/β) E_forget[log σ(-β avg_logprob_θ(y))] + retain_weight * NLL_retain.
Deviation: adds Meng et al.'s reward margin γ (``gamma``), L = -(2/β) E[log σ(-β avg_logprob - γ)] + ...; the
seed omits it, and the default γ = 0 gives the seed's formula exactly. (open-unlearning's ``delta`` is γ/β.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mechunlearn.batching import logits_of, sequence_logprobs
from mechunlearn.methods.base import MethodConfig, UnlearningMethod, nll
from mechunlearn.methods.npo import check_non_negative, check_positive


def simnpo_loss(avg_logp: Tensor, beta: float, gamma: float = 0.0) -> Tensor:
    """-(2/β) mean log σ(-β avg_logp - γ) over sequences (avg_logp: per-token mean log-prob of each sequence)."""
    return -(2.0 / beta) * F.logsigmoid(-beta * avg_logp - gamma).mean()


@dataclass
class SimNPOConfig(MethodConfig):
    beta: float = 0.1
    gamma: float = 0.0
    retain_weight: float = 1.0

    def __post_init__(self) -> None:
        check_positive("simnpo", beta=self.beta)
        check_non_negative("simnpo", retain_weight=self.retain_weight)


class SimNPO(UnlearningMethod):
    """SimNPO: no reference model; penalises the model's own average log-prob on forget data (margin ``gamma``)."""

    name = "simnpo"
    Config = SimNPOConfig
    summary = "L = -(2/beta) E_f[log sigmoid(-beta avg_logprob - gamma)] + retain_weight * NLL_retain"

    def loss(self, model, forget, retain):
        summed, counts = sequence_logprobs(logits_of(model(forget.tokens)), forget)
        forget_loss = simnpo_loss(summed / counts.clamp(min=1), self.config.beta, self.config.gamma)
        retain_nll = nll(model, retain)
        return forget_loss + self.config.retain_weight * retain_nll, {
            "simnpo_loss": forget_loss, "forget_nll": -summed.detach().sum() / counts.sum().clamp(min=1),
            "retain_nll": retain_nll}

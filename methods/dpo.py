"""DPO (Rafailov et al. 2023) repurposed for unlearning: retain texts are "chosen" (y_w), forget texts
"rejected" (y_l), against a frozen reference copy of the model.

seed 003: ``dpo``  L = -log σ(β [(log πθ(y_w) - log πref(y_w)) - (log πθ(y_l) - log πref(y_l))]),
summed sequence log-probs; forget and retain sequences are paired elementwise (the larger batch is truncated).
Unlike open-unlearning's DPO there is no 2/β factor: the seed's formula is the plain DPO loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mechunlearn.batching import TokenBatch
from mechunlearn.methods.base import MethodConfig, UnlearningMethod
from mechunlearn.methods.npo import check_positive, policy_and_reference_logprobs, require_reference


def dpo_loss(chosen_logp: Tensor, chosen_reference_logp: Tensor, rejected_logp: Tensor,
             rejected_reference_logp: Tensor, beta: float) -> Tensor:
    """-mean log σ(β [(chosen - chosen_ref) - (rejected - rejected_ref)]); equals log 2 when policy == reference."""
    margin = (chosen_logp - chosen_reference_logp) - (rejected_logp - rejected_reference_logp)
    return -F.logsigmoid(beta * margin).mean()


@dataclass
class DPOConfig(MethodConfig):
    beta: float = 0.1

    def __post_init__(self) -> None:
        check_positive("dpo", beta=self.beta)


class DPO(UnlearningMethod):
    """DPO with retain = chosen, forget = rejected; the reference is the frozen pre-unlearning model."""

    name = "dpo"
    Config = DPOConfig
    needs_reference = True
    summary = "L = -log sigmoid(beta [log(pi/pi_ref)(retain) - log(pi/pi_ref)(forget)])"

    def loss(self, model, forget, retain):
        reference = require_reference(self)
        n = min(len(forget), len(retain))
        forget, retain = (TokenBatch(b.tokens[:n], b.mask[:n]) for b in (forget, retain))
        rejected, rejected_ref, forget_counts = policy_and_reference_logprobs(model, reference, forget)
        chosen, chosen_ref, retain_counts = policy_and_reference_logprobs(model, reference, retain)
        loss = dpo_loss(chosen, chosen_ref, rejected, rejected_ref, self.config.beta)
        return loss, {"forget_nll": -rejected.detach().sum() / forget_counts.sum().clamp(min=1),
                      "retain_nll": -chosen.detach().sum() / retain_counts.sum().clamp(min=1),
                      "forget_log_ratio": (rejected.detach() - rejected_ref).mean(),
                      "retain_log_ratio": (chosen.detach() - chosen_ref).mean()}

"""Weight Distance Regularisation (Siddiqui et al. 2025, "From Dormant to Deleted"): minimise the retain NLL
while maximising the squared L2 distance from the pretrained weights.

seed 003: ``wt_dist_reg``  L = NLL_retain - λ ||θ - θ_pretrained||²₂  (λ = ``reg_lambda``, default 0.1).
θ_pretrained is a detached copy, taken at setup, of exactly the parameters that train (``trainable``, minus
``unembed.b_U``); the distance is summed over them in float32. The term is unbounded below, as in the seed.
Both θ and θ_pretrained are the fp32 master weights (``context.weights``): in a bf16 model the rounded parameter
would sit exactly on θ_pretrained until an update crossed half a bf16 step, so the distance and its gradient
would stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechunlearn.methods.base import MethodConfig, UnlearningMethod, nll
from mechunlearn.methods.npo import check_non_negative


@dataclass
class WeightDistanceRegConfig(MethodConfig):
    reg_lambda: float = 0.1

    def __post_init__(self) -> None:
        check_non_negative("wt_dist_reg", reg_lambda=self.reg_lambda)


class WeightDistanceReg(UnlearningMethod):
    """Retain NLL minus λ times the squared distance to the weights the run started from."""

    name = "wt_dist_reg"
    Config = WeightDistanceRegConfig
    summary = "L = NLL_retain - reg_lambda * ||theta - theta_pretrained||^2"

    def setup(self, model, context) -> None:
        super().setup(model, context)
        self.anchors = [(master, master.detach().clone()) for master in self.trainable_weights(model).masters]

    def release(self) -> None:
        super().release()
        self.anchors = []

    def distance(self) -> torch.Tensor:
        """||θ - θ_pretrained||²₂ over the trained parameters (differentiable)."""
        return sum(((p.float() - p0.float()) ** 2).sum() for p, p0 in self.anchors)

    def loss(self, model, forget, retain):
        if not getattr(self, "anchors", None):
            raise RuntimeError("wt_dist_reg: call setup(model, context) before loss (the shared loop does)")
        retain_nll, distance = nll(model, retain), self.distance()
        with torch.no_grad():
            forget_nll = nll(model, forget)
        return retain_nll - self.config.reg_lambda * distance, {
            "retain_nll": retain_nll, "forget_nll": forget_nll, "weight_distance_sq": distance}

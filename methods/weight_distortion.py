"""Weight Distortion (Siddiqui et al. 2025, "From Dormant to Deleted"): add isotropic Gaussian noise to the
weights once, then fine-tune on the retain set only.

seed 003: ``wt_dist``  θ0 <- θ_pretrained + N(0, σ² I) (σ = ``noise_std``, default 0.02), then L = NLL_retain.
"All weights" means every parameter that trains: all of them by default, only those matching ``trainable`` when
it is set (the others stay bitwise equal), never TransformerLens' ``unembed.b_U`` (GPT-NeoX has no such bias).
The noise comes from a CPU generator seeded with ``seed``, so it is the same on every device. It is added to the
fp32 master weights (``context.weights``) and written back, so a bf16 model gets the bf16 rounding of
``θ + noise`` and trains on from the unrounded fp32 value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechunlearn.methods.base import MethodConfig, UnlearningMethod, nll
from mechunlearn.methods.npo import check_non_negative


@dataclass
class WeightDistortionConfig(MethodConfig):
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        check_non_negative("wt_dist", noise_std=self.noise_std)


class WeightDistortion(UnlearningMethod):
    """Gaussian weight noise at setup, then retain-only fine-tuning; the forget set is only monitored."""

    name = "wt_dist"
    Config = WeightDistortionConfig
    summary = "theta <- theta + N(0, noise_std^2); L = NLL_retain"

    def setup(self, model, context) -> None:
        super().setup(model, context)
        generator = torch.Generator().manual_seed(self.config.seed)
        weights = self.trainable_weights(model)
        with torch.no_grad():
            for master in weights.masters:
                noise = torch.randn(master.shape, generator=generator, dtype=torch.float32)
                master.add_((self.config.noise_std * noise).to(master.device, master.dtype))
        weights.write_back()

    def loss(self, model, forget, retain):
        retain_nll = nll(model, retain)
        with torch.no_grad():
            forget_nll = nll(model, forget)
        return retain_nll, {"retain_nll": retain_nll, "forget_nll": forget_nll}

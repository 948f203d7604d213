"""Weight Distortion (Siddiqui et al. 2025, "From Dormant to Deleted"): add isotropic Gaussian noise to the
weights once, then fine-tune on the retain set only.

seed 003: ``wt_dist``  θ0 <- θ_pretrained + N(0, σ² I) (σ = ``noise_std``, default 0.02), then L = NLL_retain.
"All weights" means every parameter that trains: all of them by default, only those matching ``trainable`` when
it is set (the others stay bitwise equal), never TransformerLens' ``unembed.b_U`` (GPT-NeoX has no such bias).
The noise comes from a CPU generator seeded with ``seed``, so it is the same on every device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from mechunlearn.methods.base import MethodConfig, UnlearningMethod, nll
from mechunlearn.methods.npo import check_non_negative


def trainable_named_parameters(model, pattern: str | None) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters the shared loop will train: matching ``pattern`` (all if None), minus the fixed ones."""
    from mechunlearn.models import FIXED_PARAMETERS

    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as error:
        raise ValueError(f"trainable-parameter pattern {pattern!r} is not a valid regex: {error}") from error
    return [(name, p) for name, p in model.named_parameters()
            if name not in FIXED_PARAMETERS and (regex is None or regex.search(name))]


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
        with torch.no_grad():
            for _, parameter in trainable_named_parameters(model, self.trainable_pattern(model)):
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.add_((self.config.noise_std * noise).to(parameter.device, parameter.dtype))

    def loss(self, model, forget, retain):
        retain_nll = nll(model, retain)
        with torch.no_grad():
            forget_nll = nll(model, forget)
        return retain_nll, {"retain_nll": retain_nll, "forget_nll": forget_nll}

"""Step 12, local Lipschitzness: did the intervention make outputs more or less sensitive to input noise?

This analysis runs EXTRA forward passes of its own (``extra_passes = True``): the runner's shared pass gives
activations, but this needs the models' outputs under perturbed inputs and a gradient. For each of the first
``max_texts`` texts of a split (default 64, to keep it cheap) and each model (base, other) it runs

* one clean pass with gradients enabled: the logits, and the gradient of each text's mean next-token NLL with
  respect to its input embeddings (``hook_embed``); ``grad_norm`` is that gradient's Frobenius norm;
* ``n_samples`` perturbed passes (no gradient): every real token's embedding ``e_t`` gets Gaussian noise
  rescaled to norm ``epsilon * ||e_t||`` (pads get none). ``lipschitz`` is
  ``||logits(e + delta) - logits(e)||_F / ||delta||_F`` over a text's real positions, averaged (and maxed)
  over texts and draws: a finite-difference estimate of the local Lipschitz constant in an epsilon-ball;
  ``output_variance`` is the variance of the logits across draws, averaged over real tokens and vocabulary.

Both models see the same noise draws (seeded by ``seed``, split and batch; drawn on the CPU so the numbers do not
depend on the device), so identical models give identical numbers and ratios of exactly 1. Results: one row per
(split, model) and a ``ratios`` table of other / base per split. Noise and gradients live in hooks added with
``model.hooks(...)``, so nothing stays attached to the models and their parameters get no ``.grad``.

Run it on fp32 models: in bf16 the logits' rounding (about 0.4 % of their size) is as large as the shift an
``epsilon`` of 0.01 causes, so the estimate would measure rounding; ``start`` warns otherwise.
"""

from __future__ import annotations

import warnings
import zlib
from collections import defaultdict
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from mechunlearn.batching import TokenBatch, token_logprobs
from mechunlearn.diagnostics.activation_norms import ordered_splits, require_started, require_updates
from mechunlearn.diagnostics.base import ActivationAnalysis, AnalysisResult

__all__ = ["LocalLipschitz", "perturbation_sensitivity"]

MODELS = ("base", "other")
METRICS = ("lipschitz_mean", "lipschitz_max", "grad_norm_mean", "output_variance")
EMBED_HOOK = "hook_embed"


def _noise_directions(shape: torch.Size, seed: int, n_samples: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(n_samples):
        noise = torch.randn(shape, generator=generator)
        draws.append(noise / noise.norm(dim=-1, keepdim=True).clamp(min=1e-12))
    return draws


def perturbation_sensitivity(model, batch: TokenBatch, *, epsilon: float, n_samples: int, seed: int
                             ) -> dict[str, Tensor]:
    """Per text of ``batch``: Lipschitz ratios ``[n_samples, batch]``, NLL-gradient norms ``[batch]``, the summed
    (over real tokens) vocabulary-mean logit variance ``[batch]`` and the number of predicted tokens ``[batch]``."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    captured: dict[str, Tensor] = {}

    def embed_as_leaf(activation: Tensor, hook) -> Tensor:
        captured["embed"] = activation.detach().clone().requires_grad_(True)
        return captured["embed"]

    with torch.enable_grad(), model.hooks(fwd_hooks=[(EMBED_HOOK, embed_as_leaf)]):
        clean_logits = model(batch.tokens)
        predicted = batch.mask[:, 1:].sum(dim=1)
        per_text_nll = -token_logprobs(clean_logits, batch).sum(dim=1) / predicted.clamp(min=1)
        (gradient,) = torch.autograd.grad(per_text_nll.sum(), captured["embed"])
    embedding = captured["embed"].detach()
    clean_logits = clean_logits.detach().float()
    token_mask = batch.mask[..., None].float()
    grad_norm = (gradient.float() * token_mask).flatten(1).norm(dim=1)
    scale = epsilon * embedding.float().norm(dim=-1, keepdim=True) * token_mask

    ratios, shift_sum, shift_square_sum = [], torch.zeros_like(clean_logits), torch.zeros_like(clean_logits)
    for direction in _noise_directions(embedding.shape, seed, n_samples):
        delta = (direction.to(device) * scale).to(embedding.dtype)
        with torch.no_grad(), model.hooks(fwd_hooks=[(EMBED_HOOK, lambda activation, hook: activation + delta)]):
            shift = (model(batch.tokens).float() - clean_logits) * token_mask
        ratios.append(shift.flatten(1).norm(dim=1) / delta.float().flatten(1).norm(dim=1).clamp(min=1e-30))
        # Running sums of the shift (not of the logits): the variance is the same and loses fewer digits.
        shift_sum += shift
        shift_square_sum += shift * shift
    variance = (shift_square_sum - shift_sum ** 2 / n_samples) / (n_samples - 1)
    token_variance = (variance.clamp(min=0).mean(dim=-1) * batch.mask).sum(dim=1)
    return {"lipschitz": torch.stack(ratios).cpu(), "grad_norm": grad_norm.cpu(),
            "variance_sum": token_variance.cpu(), "tokens": batch.mask.sum(dim=1).cpu(),
            "predicted": predicted.cpu()}


class LocalLipschitz(ActivationAnalysis):
    """Finite-difference local Lipschitz estimate, NLL-gradient norm and output variance under embedding noise.

    Options: ``epsilon`` (noise norm relative to each token's embedding norm; 0.01), ``n_samples`` (draws; 8),
    ``max_texts`` (texts per split; 64), ``seed`` (0).
    """

    name = "lipschitzness"
    scope = "pair"
    extra_passes = True
    description = "local Lipschitz estimate, input-gradient norm and output variance under embedding noise"

    def __init__(self, epsilon: float = 0.01, n_samples: int = 8, max_texts: int = 64, seed: int = 0) -> None:
        if epsilon <= 0:
            raise ValueError(f"epsilon must be a positive relative noise size (e.g. 0.01), got {epsilon}")
        if n_samples < 2:
            raise ValueError(f"n_samples must be at least 2 (a variance needs two draws), got {n_samples}")
        if max_texts < 1:
            raise ValueError(f"max_texts must be at least 1, got {max_texts}")
        self.epsilon, self.n_samples, self.max_texts, self.seed = epsilon, n_samples, max_texts, seed
        self.models = None
        self.extra_forward_passes = 0

    def hook_names(self, model) -> list[str]:
        return []  # nothing from the shared pass: this analysis runs its own (perturbed) passes

    def start(self, models: dict[str, Any]) -> None:
        for name in MODELS:
            if EMBED_HOOK not in models[name].hook_dict:
                raise ValueError(f"{self.name} perturbs {EMBED_HOOK!r}, which the {name} model lacks")
            if models[name].cfg.dtype not in (torch.float32, torch.float64):
                warnings.warn(f"{self.name}: the {name} model runs in {models[name].cfg.dtype}; its logit rounding "
                              f"is comparable to the shift epsilon={self.epsilon} causes: load it with dtype='fp32'",
                              stacklevel=2)
        self.models = models
        self._texts: dict[str, int] = defaultdict(int)
        self._batches: dict[str, int] = defaultdict(int)
        self._values: dict[tuple[str, str], dict[str, list[Tensor]]] = defaultdict(lambda: defaultdict(list))

    def update(self, split: str, activations: dict[str, dict[str, Tensor]], batch) -> None:
        require_started(self)
        room = self.max_texts - self._texts[split]
        if room <= 0:
            return
        subset = TokenBatch(batch.tokens[:room], batch.mask[:room])
        # The same seed for both models: identical models must see identical noise.
        seed = zlib.crc32(f"{self.seed}/{split}/{self._batches[split]}".encode())
        for model_name in MODELS:
            values = perturbation_sensitivity(self.models[model_name], subset, epsilon=self.epsilon,
                                              n_samples=self.n_samples, seed=seed)
            for key, value in values.items():
                self._values[(split, model_name)][key].append(value)
            self.extra_forward_passes += 1 + self.n_samples
        self._texts[split] += len(subset)
        self._batches[split] += 1

    def result(self) -> AnalysisResult:
        require_updates(self.name, bool(self._values))
        splits = ordered_splits(list(self._texts))
        rows = []
        for split in splits:
            for model_name in MODELS:
                values = {key: torch.cat(parts, dim=-1).double() for key, parts in
                          self._values[(split, model_name)].items()}
                has_target = values["predicted"] > 0  # a one-token text has no next-token NLL to differentiate
                rows.append({
                    "split": split, "model": model_name,
                    "lipschitz_mean": float(values["lipschitz"].mean()),
                    "lipschitz_max": float(values["lipschitz"].max()),
                    "grad_norm_mean": float(values["grad_norm"][has_target].mean()) if has_target.any()
                    else float("nan"),
                    "output_variance": float(values["variance_sum"].sum() / values["tokens"].sum()),
                    "n_texts": int(values["tokens"].numel()), "n_draws": self.n_samples,
                })
        frame = pd.DataFrame(rows)
        ratio_rows = []
        for split in splits:
            base = frame[(frame["split"] == split) & (frame["model"] == "base")].iloc[0]
            other = frame[(frame["split"] == split) & (frame["model"] == "other")].iloc[0]
            ratio_rows.append({"split": split} | {f"{metric}_ratio": _ratio(other[metric], base[metric])
                                                  for metric in METRICS})
        ratios = pd.DataFrame(ratio_rows)
        summary: dict[str, Any] = {"epsilon": self.epsilon, "n_samples": self.n_samples, "max_texts": self.max_texts,
                                   "extra_forward_passes": self.extra_forward_passes,
                                   "ratios": {row["split"]: {k: v for k, v in row.items() if k != "split"}
                                              for row in ratio_rows}}
        return AnalysisResult(self.name, frame, tables={"ratios": ratios}, summary=summary, plot=plot_lipschitz)


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return 1.0 if numerator == 0 else float("nan")
    return float(numerator / denominator)


def plot_lipschitz(result: AnalysisResult):
    """Grouped bars: split on the x axis, one trace per model, one panel per metric."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [("lipschitz_mean", "local Lipschitz (mean)"), ("grad_norm_mean", "||dNLL/d embedding||"),
              ("output_variance", "logit variance under noise")]
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for _, title in panels])
    for column_index, (column, _) in enumerate(panels, start=1):
        for model_name, group in result.frame.groupby("model", sort=False):
            figure.add_trace(go.Bar(x=group["split"], y=group[column], name=model_name, legendgroup=model_name,
                                    showlegend=column_index == 1), row=1, col=column_index)
    figure.update_layout(title="Local Lipschitzness under embedding noise", barmode="group")
    return figure

"""Step 12, local Lipschitzness: did the intervention make outputs more or less sensitive to input changes?

Two numbers with different meanings, both per text, split and model (base, other):

* ``jacobian_spectral_norm``: a real local Lipschitz estimate, ``sigma_1`` of the Jacobian of the centred
  log-probabilities w.r.t. the input embeddings (``hook_embed``), by power iteration with Jacobian-vector
  products (``mechunlearn.diagnostics.jacobian``): the largest first-order gain over EVERY input direction. For
  the first ``jacobian_texts`` texts of a split (default 16, power iteration is ~2 backward passes per step).
* ``directional_gain``: ``||logits(e + delta) - logits(e)||_F / ||delta||_F`` for RANDOM ``delta``: every real
  token's embedding ``e_t`` gets Gaussian noise rescaled to norm ``epsilon * ||e_t||`` (pads get none), over a
  text's real positions, averaged (``_mean``) and maxed (``_max``) over texts and draws. This is the seed's number,
  under an honest name: a random direction's gain, about ``||J||_F / sqrt(dim)`` (an RMS gain over directions),
  far below the Lipschitz constant ``sigma_1`` whenever the gains of ``J`` are uneven. ``directional_gain_centred``
  is the same on centred logits (the function ``jacobian_spectral_norm`` is of), so the two compare directly:
  ``directional_gain_centred <= jacobian_spectral_norm`` up to the finite ``epsilon``.

Also, from the seed: ``grad_norm``, the Frobenius norm of the gradient of each text's mean next-token NLL w.r.t.
its input embeddings, and ``output_variance``, the variance of the logits across noise draws, averaged over real
tokens and vocabulary. For each of the first ``max_texts`` texts of a split (default 64) it runs one clean pass
with gradients and ``n_samples`` perturbed passes (``extra_passes = True``: the runner's shared pass gives
activations, this needs outputs under perturbed inputs and gradients).

Both models see the same noise draws and start vectors (seeded by ``seed``, split and batch; drawn on the CPU so
the numbers do not depend on the device), so identical models give identical numbers and ratios of exactly 1.
Results: one row per (split, model) and a ``ratios`` table of other / base per split
(``mechunlearn.numeric.ratio``). Noise and gradients live in hooks added with ``model.hooks(...)``, so nothing
stays attached to the models and their parameters get no ``.grad``.

Run it on fp32 models: in bf16 the logits' rounding (about 0.4 % of their size) is as large as the shift an
``epsilon`` of 0.01 causes, so the directional gain would measure rounding; ``start`` warns otherwise.
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
from mechunlearn.diagnostics.base import (ActivationAnalysis, AnalysisResult, ordered_splits, require_started,
                                          require_updates)
from mechunlearn.diagnostics.figures import Legend, color_for
from mechunlearn.diagnostics.jacobian import EMBED_HOOK, jacobian_spectral_norms
from mechunlearn.numeric import ratio

__all__ = ["Lipschitzness", "perturbation_sensitivity", "METRICS"]

MODELS = ("base", "other")
METRICS = ("jacobian_spectral_norm_mean", "jacobian_spectral_norm_max", "directional_gain_mean",
           "directional_gain_max", "directional_gain_centred_mean", "grad_norm_mean", "output_variance")


def _noise_directions(shape: torch.Size, seed: int, n_samples: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(n_samples):
        noise = torch.randn(shape, generator=generator)
        draws.append(noise / noise.norm(dim=-1, keepdim=True).clamp(min=1e-12))
    return draws


def perturbation_sensitivity(model, batch: TokenBatch, *, epsilon: float, n_samples: int, seed: int
                             ) -> dict[str, Tensor]:
    """Per text of ``batch``: random-direction gains of the logits (``gain``) and of the centred logits
    (``gain_centred``) ``[n_samples, batch]``, NLL-gradient norms ``[batch]``, the summed (over real tokens)
    vocabulary-mean logit variance ``[batch]`` and the number of predicted tokens ``[batch]``."""
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

    gains, centred_gains = [], []
    shift_sum, shift_square_sum = torch.zeros_like(clean_logits), torch.zeros_like(clean_logits)
    for direction in _noise_directions(embedding.shape, seed, n_samples):
        delta = (direction.to(device) * scale).to(embedding.dtype)
        with torch.no_grad(), model.hooks(fwd_hooks=[(EMBED_HOOK, lambda activation, hook: activation + delta)]):
            shift = (model(batch.tokens).float() - clean_logits) * token_mask
        delta_norm = delta.float().flatten(1).norm(dim=1).clamp(min=1e-30)
        gains.append(shift.flatten(1).norm(dim=1) / delta_norm)
        centred_shift = (shift - shift.mean(dim=-1, keepdim=True)) * token_mask
        centred_gains.append(centred_shift.flatten(1).norm(dim=1) / delta_norm)
        # Running sums of the shift (not of the logits): the variance is the same and loses fewer digits.
        shift_sum += shift
        shift_square_sum += shift * shift
    variance = (shift_square_sum - shift_sum ** 2 / n_samples) / (n_samples - 1)
    token_variance = (variance.clamp(min=0).mean(dim=-1) * batch.mask).sum(dim=1)
    return {"gain": torch.stack(gains).cpu(), "gain_centred": torch.stack(centred_gains).cpu(),
            "grad_norm": grad_norm.cpu(),
            "variance_sum": token_variance.cpu(), "tokens": batch.mask.sum(dim=1).cpu(),
            "predicted": predicted.cpu()}


class Lipschitzness(ActivationAnalysis):
    """Jacobian spectral norm (a local Lipschitz constant), random-direction gain, input-gradient norm and output
    variance under embedding noise.

    Options: ``epsilon`` (noise norm relative to each token's embedding norm; 0.01), ``n_samples`` (draws; 8),
    ``max_texts`` (texts per split; 64), ``jacobian_texts`` (texts per split for the Jacobian; 16, at most
    ``max_texts``; 0 skips it), ``power_iterations`` (at most; 30), ``power_tol`` (relative; 1e-4), ``seed`` (0).
    """

    name = "lipschitzness"
    scope = "pair"
    extra_passes = True
    description = "Jacobian spectral norm (local Lipschitz) and random-direction gain w.r.t. input embeddings"

    def __init__(self, epsilon: float = 0.01, n_samples: int = 8, max_texts: int = 64, jacobian_texts: int = 16,
                 power_iterations: int = 30, power_tol: float = 1e-4, seed: int = 0) -> None:
        if jacobian_texts < 0:
            raise ValueError(f"jacobian_texts must be >= 0 (0 skips the Jacobian), got {jacobian_texts}")
        if power_iterations < 1 or power_tol <= 0:
            raise ValueError(f"power_iterations must be >= 1 and power_tol > 0, got {power_iterations}, {power_tol}")
        self.jacobian_texts = min(jacobian_texts, max_texts)
        self.power_iterations, self.power_tol = power_iterations, power_tol
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
        self._power: dict[str, list[int]] = defaultdict(list)  # model -> iterations run per batch
        self._unconverged = 0

    def update(self, split: str, activations: dict[str, dict[str, Tensor]], batch) -> None:
        require_started(self)
        room = self.max_texts - self._texts[split]
        if room <= 0:
            return
        subset = TokenBatch(batch.tokens[:room], batch.mask[:room])
        # The same seed for both models: identical models must see identical noise.
        seed = zlib.crc32(f"{self.seed}/{split}/{self._batches[split]}".encode())
        jacobian_room = self.jacobian_texts - min(self._texts[split], self.jacobian_texts)
        for model_name in MODELS:
            values = perturbation_sensitivity(self.models[model_name], subset, epsilon=self.epsilon,
                                              n_samples=self.n_samples, seed=seed)
            if jacobian_room > 0:
                jacobian = jacobian_spectral_norms(
                    self.models[model_name], TokenBatch(subset.tokens[:jacobian_room], subset.mask[:jacobian_room]),
                    iterations=self.power_iterations, tol=self.power_tol, seed=seed)
                values["jacobian"] = jacobian.norms
                self._power[model_name].append(jacobian.iterations)
                self._unconverged += not jacobian.converged
                self.extra_forward_passes += 1
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
                jacobian = values.get("jacobian", torch.zeros(0, dtype=torch.float64))
                rows.append({
                    "split": split, "model": model_name,
                    # None = not computed (jacobian_texts=0), as numeric's convention has it, not NaN (undefined)
                    "jacobian_spectral_norm_mean": float(jacobian.mean()) if len(jacobian) else None,
                    "jacobian_spectral_norm_max": float(jacobian.max()) if len(jacobian) else None,
                    "directional_gain_mean": float(values["gain"].mean()),
                    "directional_gain_max": float(values["gain"].max()),
                    "directional_gain_centred_mean": float(values["gain_centred"].mean()),
                    "grad_norm_mean": float(values["grad_norm"][has_target].mean()) if has_target.any() else None,
                    "output_variance": ratio(float(values["variance_sum"].sum()), float(values["tokens"].sum())),
                    "n_texts": int(values["tokens"].numel()), "n_draws": self.n_samples,
                    "n_jacobian_texts": len(jacobian),
                })
        frame = pd.DataFrame(rows)
        ratio_rows = []
        for split in splits:
            base = frame[(frame["split"] == split) & (frame["model"] == "base")].iloc[0]
            other = frame[(frame["split"] == split) & (frame["model"] == "other")].iloc[0]
            ratio_rows.append({"split": split} | {f"{metric}_ratio": ratio(other[metric], base[metric])
                                                  for metric in METRICS})
        ratios = pd.DataFrame(ratio_rows)
        summary: dict[str, Any] = {"epsilon": self.epsilon, "n_samples": self.n_samples, "max_texts": self.max_texts,
                                   "jacobian_texts": self.jacobian_texts, "power_tol": self.power_tol,
                                   "power_iterations": {name: counts for name, counts in self._power.items()},
                                   "power_batches_not_converged": self._unconverged,
                                   "extra_forward_passes": self.extra_forward_passes,
                                   "by_model": {f"{row['split']}/{row['model']}": {
                                       metric: row[metric] for metric in METRICS} for row in rows},
                                   "ratios": {row["split"]: {k: v for k, v in row.items() if k != "split"}
                                              for row in ratio_rows}}
        return AnalysisResult(self.name, frame, tables={"ratios": ratios}, summary=summary, plot=plot_lipschitz)


def plot_lipschitz(result: AnalysisResult):
    """Grouped bars: split on the x axis, one colour per model (its real name), one panel per metric."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [("jacobian_spectral_norm_mean", "sigma_1(J): local Lipschitz (mean)"),
              ("directional_gain_centred_mean", "random-direction gain (mean)"),
              ("grad_norm_mean", "||dNLL/d embedding||"), ("output_variance", "logit variance under noise")]
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[title for _, title in panels])
    legend = Legend()
    for column_index, (column, _) in enumerate(panels, start=1):
        for role, group in result.frame.groupby("model", sort=False):
            name = result.label(role)
            legend.add(figure, go.Bar(x=group["split"].tolist(), y=group[column].tolist(),
                                      marker_color=color_for(name)), name, row=1, col=column_index)
    figure.update_layout(title="Local Lipschitzness w.r.t. input embeddings", barmode="group")
    return figure

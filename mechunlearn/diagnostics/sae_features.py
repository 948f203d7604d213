"""SAE feature diff: which sparse-autoencoder features of the base model stop firing on forget text?

A sparse autoencoder (sae-lens' ``StandardTrainingSAE``, trained by sae-lens' ``SAETrainer``; nothing is
hand-written) is fitted to the BASE model's activations at one hook (default the middle
``blocks.{n_layers // 2}.hook_resid_post``) over forget + retain text. Then every model is encoded with that
same SAE, per split: each feature's firing frequency (share of real tokens with activation > ``fire_threshold``)
and mean activation (over all real tokens, zeros included), and its top ``top_k`` activating tokens.

Status of a feature, per non-base model (thresholds are options):

* forget-specific in a model: fires on >= ``min_frequency`` of forget tokens and at least ``specificity`` times
  as often on forget as on retain tokens;
* **dies**: forget-specific in base, and the other model's forget frequency fell below ``death_fraction`` of
  the base's;
* **survives**: forget-specific in base and does not die;
* **appears**: forget-specific in the other model but not in base.

Two phases (the design): phase 1, ``fit_sae(base_model, texts, hook_name)`` (``sae_training``: streamed,
bounded, cached). ``SAEFeatures`` runs phase 1 in ``start`` when no ``sae`` is given (on ``fit_texts``, or the
world's forget + retain texts), so phase 2 (the statistics) runs inside the runner's one fused pass with
``hook_names = [the SAE hook]``. Every statistic streams: float64 counters and a per-feature top-k merged batch
by batch (``torch.topk`` over the kept k and the batch: a bounded heap, vectorised over features).

Frames: ``sae_features.csv`` (one row per feature with a status, per non-base model), ``feature_stats.csv``
(model, split, feature, frequency, mean_activation) and ``reconstruction.csv`` (model, split, mse, variance,
fvu = mse / variance: how well the base's SAE reconstructs each model's activations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mechunlearn.diagnostics.base import ActivationAnalysis, AnalysisResult
from mechunlearn.diagnostics.figures import Legend, color_for
from mechunlearn.diagnostics.sae_training import default_hook_name, fit_sae
from mechunlearn.diagnostics.streaming import RunningMoments, token_rows
from mechunlearn.numeric import ratio

__all__ = ["SAEFeatures", "classify_features", "STATUSES"]

STATUSES = ("dies", "survives", "appears")


# ------------------------------------------------------------------------------------ feature classification
def classify_features(base_forget: np.ndarray, base_retain: np.ndarray, other_forget: np.ndarray,
                      other_retain: np.ndarray, *, min_frequency: float = 0.01, specificity: float = 2.0,
                      death_fraction: float = 0.1) -> np.ndarray:
    """Per feature "dies" / "survives" / "appears" / "" from firing frequencies (see the module docstring)."""
    base_forget, base_retain, other_forget, other_retain = (np.asarray(a, dtype=float) for a in
                                                            (base_forget, base_retain, other_forget, other_retain))

    def specific(forget, retain):
        return (forget >= min_frequency) & (forget >= specificity * retain)

    in_base, in_other = specific(base_forget, base_retain), specific(other_forget, other_retain)
    dies = in_base & (other_forget < death_fraction * base_forget)
    status = np.full(base_forget.shape, "", dtype=object)
    status[in_base & ~dies] = "survives"
    status[dies] = "dies"
    status[in_other & ~in_base] = "appears"
    return status


# --------------------------------------------------------------------------------- phase 2: the streamed diff
class SAEFeatures(ActivationAnalysis):
    """Per-feature firing statistics of the base model's SAE in every model, and the forget features that die.

    Options: ``sae`` (a trained sae-lens SAE) or ``fit_texts`` / ``world`` (train one in ``start`` with
    ``fit_sae``; ``fit_options`` go to it), ``hook_name`` (default the SAE's hook, else the middle resid_post),
    ``base`` (model name; default the first), ``fire_threshold`` (0.0), ``min_frequency`` (0.01),
    ``specificity`` (2.0), ``death_fraction`` (0.1), ``top_k`` (5 tokens per feature).
    """

    name = "sae_features"
    scope = "model"
    description = "SAE features (trained on the base) whose forget-specific firing dies, survives or appears"

    def __init__(self, sae=None, hook_name: str | None = None, fit_texts: Sequence[str] | None = None, world=None,
                 fit_options: dict[str, Any] | None = None, base: str | None = None, fire_threshold: float = 0.0,
                 min_frequency: float = 0.01, specificity: float = 2.0, death_fraction: float = 0.1,
                 top_k: int = 5) -> None:
        if sae is None and fit_texts is None and world is None:
            raise ValueError("sae_features needs an SAE or texts to train one: pass sae= (a sae-lens SAE), "
                             "fit_texts= (forget + retain texts) or world=")
        if fit_texts is None and world is not None:
            fit_texts = world.forget_texts() + world.retain_texts()
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.sae, self.fit_texts, self.fit_options = sae, fit_texts, dict(fit_options or {})
        self.hook_name = hook_name or (sae.cfg.metadata.hook_name if sae is not None else None)
        self.base, self.fire_threshold, self.top_k = base, fire_threshold, top_k
        self.thresholds = dict(min_frequency=min_frequency, specificity=specificity, death_fraction=death_fraction)
        self.models = None

    def hook_names(self, model) -> list[str]:
        return [self.hook_name or default_hook_name(model)]

    def start(self, models: dict[str, Any]) -> None:
        self.models = models
        self.base_name = self.base or next(iter(models))
        if self.base_name not in models:
            raise ValueError(f"sae_features: base model {self.base_name!r} not among {list(models)}")
        base_model = models[self.base_name]
        self.hook = self.hook_names(base_model)[0]
        if self.sae is None:
            self.sae = fit_sae(base_model, self.fit_texts, self.hook, **self.fit_options)
        self.sae.to(next(base_model.parameters()).device).eval()
        d_sae = self.sae.cfg.d_sae
        zeros = lambda: torch.zeros(d_sae, dtype=torch.float64)  # noqa: E731
        self._stats: dict[tuple[str, str], dict[str, Any]] = {}
        self._new_stats = lambda: {"tokens": 0, "fired": zeros(), "summed": zeros(), "squared_error": 0.0,
                                   "moments": RunningMoments(diagonal_only=True),
                                   "top_values": torch.full((self.top_k, d_sae), -torch.inf),
                                   "top_tokens": torch.full((self.top_k, d_sae), -1, dtype=torch.long)}

    @torch.no_grad()
    def update(self, split: str, activations: dict[str, dict[str, Tensor]], batch) -> None:
        if self.models is None:
            raise ValueError("sae_features: start(models) was not called; run it through "
                             "mechunlearn.diagnostics.run_activation_analyses")
        sae_device = self.sae.W_enc.device
        for model_name in self.models:
            activation = activations[model_name][self.hook]
            rows = token_rows(activation.flatten(2), batch.mask.to(activation.device)).to(sae_device).float()
            if rows.shape[-1] != self.sae.cfg.d_in:
                raise ValueError(f"sae_features: the SAE reads d_in={self.sae.cfg.d_in} but {self.hook} of "
                                 f"{model_name!r} has width {rows.shape[-1]}; train the SAE on this hook")
            features = self.sae.encode(rows)
            stats = self._stats.setdefault((model_name, split), self._new_stats())
            stats["tokens"] += rows.shape[0]
            stats["fired"] += (features > self.fire_threshold).sum(0).double().cpu()
            stats["summed"] += features.double().sum(0).cpu()
            stats["squared_error"] += float(((self.sae.decode(features) - rows).double() ** 2).sum())
            stats["moments"].update(rows)
            # merge this batch's top-k per feature into the kept top-k (bounded: k x d_sae values)
            token_ids = batch.tokens[batch.mask.to(batch.tokens.device)].to(sae_device)  # same row order as token_rows
            k = min(self.top_k, rows.shape[0])
            values, where = features.topk(k, dim=0)
            merged_values = torch.cat([stats["top_values"], values.cpu()])
            merged_tokens = torch.cat([stats["top_tokens"], token_ids[where].cpu()])
            stats["top_values"], keep = merged_values.topk(self.top_k, dim=0)
            stats["top_tokens"] = merged_tokens.gather(0, keep)

    def _top_tokens(self, model_name: str, split: str) -> list[str]:
        stats = self._stats.get((model_name, split))
        if stats is None:
            return [""] * self.sae.cfg.d_sae
        tokenizer = self.models[self.base_name].tokenizer
        fired = stats["top_values"] > self.fire_threshold
        return [" | ".join(repr(tokenizer.decode([int(token)])) for token, on in zip(column_tokens, column_fired)
                           if on) for column_tokens, column_fired in zip(stats["top_tokens"].T, fired.T)]

    def result(self) -> AnalysisResult:
        if self.models is None or not self._stats:
            raise ValueError("sae_features: no batches were fed; run it through "
                             "mechunlearn.diagnostics.run_activation_analyses with forget and retain texts")
        splits = sorted({split for _, split in self._stats}, key=lambda s: (s != "forget", s != "retain", s))
        if not {"forget", "retain"} <= set(splits):
            raise ValueError(f"sae_features contrasts splits 'forget' and 'retain'; it was fed {splits}")
        stat_rows, reconstruction = [], []
        frequency: dict[tuple[str, str], np.ndarray] = {}
        mean: dict[tuple[str, str], np.ndarray] = {}
        for (model_name, split), stats in self._stats.items():
            count = max(stats["tokens"], 1)
            frequency[(model_name, split)] = (stats["fired"] / count).numpy()
            mean[(model_name, split)] = (stats["summed"] / count).numpy()
            stat_rows.append(pd.DataFrame({"model": model_name, "split": split,
                                           "feature": np.arange(len(stats["fired"])),
                                           "frequency": frequency[(model_name, split)],
                                           "mean_activation": mean[(model_name, split)], "n_tokens": stats["tokens"]}))
            mse = stats["squared_error"] / (count * self.sae.cfg.d_in)
            variance = float(stats["moments"].covariance.mean()) if stats["tokens"] > 1 else float("nan")
            reconstruction.append({"model": model_name, "split": split, "mse": mse, "variance": variance,
                                   "fvu": ratio(mse, variance)})
        base = self.base_name
        base_tokens = self._top_tokens(base, "forget")
        rows, summary = [], {"hook": self.hook, "base": base, "d_sae": self.sae.cfg.d_sae, **self.thresholds,
                             "fire_threshold": self.fire_threshold, "models": {}}
        for model_name in self.models:
            if model_name == base:
                continue
            status = classify_features(frequency[(base, "forget")], frequency[(base, "retain")],
                                       frequency[(model_name, "forget")], frequency[(model_name, "retain")],
                                       **self.thresholds)
            other_tokens = self._top_tokens(model_name, "forget")
            for feature in np.flatnonzero(status != ""):
                rows.append({"model": model_name, "feature": int(feature), "status": status[feature],
                             **{f"{who}_{stat}_{split}": table[(name, split)][feature]
                                for who, name in (("base", base), ("other", model_name))
                                for stat, table in (("freq", frequency), ("mean", mean))
                                for split in ("forget", "retain")},
                             "top_tokens_base": base_tokens[feature], "top_tokens_other": other_tokens[feature]})
            summary["models"][model_name] = {name: int((status == name).sum()) for name in STATUSES}
        columns = ["model", "feature", "status"] + [f"{who}_{stat}_{split}" for who in ("base", "other")
                                                   for stat in ("freq", "mean") for split in ("forget", "retain")]
        frame = pd.DataFrame(rows, columns=columns + ["top_tokens_base", "top_tokens_other"])
        tables = {"feature_stats": pd.concat(stat_rows, ignore_index=True),
                  "reconstruction": pd.DataFrame(reconstruction)}
        return AnalysisResult(self.name, frame, tables=tables, summary=summary, plot=_plot)


def _plot(result: AnalysisResult):
    """Base vs other forget firing frequency per feature: colour = model, marker = status; hover shows tokens."""
    import plotly.graph_objects as go

    figure = go.Figure()
    symbols = {"dies": "x", "survives": "circle", "appears": "diamond"}
    legend = Legend()
    for (model_name, status), group in result.frame.groupby(["model", "status"], sort=False):
        hover = [f"feature {f}<br>base: {b}<br>other: {o}" for f, b, o in
                 zip(group["feature"], group["top_tokens_base"], group["top_tokens_other"])]
        legend.add(figure, go.Scatter(x=group["base_freq_forget"].tolist(), y=group["other_freq_forget"].tolist(),
                                      mode="markers", text=hover, hoverinfo="text+x+y",
                                      marker=dict(color=color_for(model_name), symbol=symbols.get(status))),
                   f"{model_name} / {status}")
    base = result.summary.get("base", "base")
    figure.update_layout(title=f"SAE features at {result.summary.get('hook')}: forget firing frequency",
                         xaxis_title=f"{base}: firing frequency on forget", yaxis_title="other model: firing "
                         "frequency on forget")
    return figure

"""Step 9, activation covariance: did the intervention change the *shape* of the activation distribution?

Per residual-stream layer (0 = embeddings, ``l + 1`` = ``blocks.{l}.hook_resid_post``), split and model, the
token covariance is accumulated with streaming moments (Chan's merge, float64) and its eigenvalues give:

* ``effective_rank``: ``exp(H(p))`` with ``p_i = lambda_i / sum_j lambda_j`` and ``H`` the Shannon entropy in
  nats (Roy & Vetterli, 2007): ``d`` for an isotropic covariance, 1 when one direction holds all variance;
* ``spectral_entropy``: that ``H(p)`` itself (nats; ``log d`` at most);
* ``wasserstein``: ``scipy.stats.wasserstein_distance`` between the base and the other model's eigenvalue
  spectra seen as two empirical distributions of ``d`` values (in units of variance, so layers with larger
  activations give larger distances: compare splits within a layer);
* ``selectivity`` (table ``selectivity``): ``W(forget) / W(retain)`` per layer, by ``mechunlearn.numeric.ratio``:
  NaN (undefined) when both are 0, inf when only retain's is.

Memory: a ``d_model x d_model`` float64 matrix per (model, split, layer). When ``layers`` is not given, every
layer is kept if that fits ``memory_budget_gb`` (default 2 GB), otherwise evenly spaced layers (first and last
included) that fit; the layers used are in the summary.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechunlearn.diagnostics.base import (ActivationAnalysis, AnalysisResult, contrast_splits, ordered_splits,
                                          require_started, require_updates)
from mechunlearn.diagnostics.figures import layer_figure
from mechunlearn.diagnostics.layers import real_token_rows, residual_stream_hooks
from mechunlearn.diagnostics.streaming import RunningMoments
from mechunlearn.numeric import ratio

__all__ = ["ActivationCovariance", "effective_rank", "spectral_entropy", "covariance_eigenvalues"]

MODELS = ("base", "other")


def spectral_entropy(eigenvalues: Float[np.ndarray, " d"]) -> float:
    """Shannon entropy (nats) of the normalised non-negative spectrum; 0 for an all-zero spectrum."""
    values = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    total = values.sum()
    if total <= 0:
        return 0.0
    shares = values[values > 0] / total
    return float(-(shares * np.log(shares)).sum())


def effective_rank(eigenvalues: Float[np.ndarray, " d"]) -> float:
    """Roy & Vetterli's effective rank ``exp(spectral entropy)``: d for a flat spectrum, 1 for a spike."""
    return float(np.exp(spectral_entropy(eigenvalues)))


def covariance_eigenvalues(covariance: Float[Tensor, "d d"]) -> Float[np.ndarray, " d"]:
    """Eigenvalues of a symmetric PSD matrix, descending; float-rounding negatives clipped to 0."""
    values = torch.linalg.eigvalsh(covariance.double().cpu()).flip(0).numpy()
    return np.clip(values, 0.0, None)


def _layers_within_budget(model, budget_gb: float) -> list[int]:
    n_layers, d_model = model.cfg.n_layers + 1, model.cfg.d_model
    per_layer = len(MODELS) * 2 * d_model * d_model * 8  # two models x two splits x float64 matrix
    fits = max(2, int(budget_gb * 1e9 // per_layer))
    if fits >= n_layers:
        return list(range(n_layers))
    return sorted({round(i * (n_layers - 1) / (fits - 1)) for i in range(fits)})


class ActivationCovariance(ActivationAnalysis):
    """Eigen-spectrum of the token covariance per layer, split and model; base-vs-other Wasserstein distance.

    Options: ``layers`` (residual-stream layers 0..N; default all that fit ``memory_budget_gb``),
    ``spectrum_top_k`` (eigenvalues per row kept in the ``spectra`` table; default 64).
    """

    name = "activation_covariance"
    scope = "pair"
    description = "effective rank, spectral entropy and Wasserstein distance of activation covariance spectra"

    def __init__(self, layers: Sequence[int] | None = None, memory_budget_gb: float = 2.0,
                 spectrum_top_k: int = 64) -> None:
        if memory_budget_gb <= 0:
            raise ValueError(f"memory_budget_gb must be positive, got {memory_budget_gb}")
        self.layers = None if layers is None else list(layers)
        self.memory_budget_gb, self.spectrum_top_k = memory_budget_gb, spectrum_top_k
        self.models = None

    def _chosen_layers(self, model) -> list[int]:
        return self.layers if self.layers is not None else _layers_within_budget(model, self.memory_budget_gb)

    def hook_names(self, model) -> list[str]:
        return [hook for _, hook in residual_stream_hooks(model, self._chosen_layers(model))]

    def start(self, models: dict[str, Any]) -> None:
        self.models = models
        self._hooks = residual_stream_hooks(models["base"], self._chosen_layers(models["base"]))
        self._moments: dict[tuple[str, int, str], RunningMoments] = defaultdict(RunningMoments)
        self._splits: list[str] = []

    def update(self, split: str, activations: dict[str, dict[str, Tensor]], batch) -> None:
        require_started(self)
        if split not in self._splits:
            self._splits.append(split)
        for model_name in MODELS:
            for layer, hook in self._hooks:
                rows = real_token_rows(activations[model_name][hook], batch.mask)
                self._moments[(model_name, layer, split)].update(rows)

    def result(self) -> AnalysisResult:
        require_updates(self.name, bool(self._moments))
        splits = ordered_splits(self._splits)
        rows, spectra_rows = [], []
        for layer, _ in self._hooks:
            for split in splits:
                row: dict[str, Any] = {"layer": layer, "split": split}
                spectra = {}
                for model_name in MODELS:
                    moments = self._moments[(model_name, layer, split)]
                    if moments.count < 2:
                        raise ValueError(f"{self.name}: split {split!r} has {moments.count} real token(s); a "
                                         "covariance needs at least two: pass longer or more texts")
                    eigenvalues = covariance_eigenvalues(moments.covariance)
                    spectra[model_name] = eigenvalues
                    row[f"{model_name}_effective_rank"] = effective_rank(eigenvalues)
                    row[f"{model_name}_spectral_entropy"] = spectral_entropy(eigenvalues)
                    row[f"{model_name}_total_variance"] = float(eigenvalues.sum())
                    row[f"{model_name}_top_eigenvalue"] = float(eigenvalues[0])
                    spectra_rows += [{"layer": layer, "split": split, "model": model_name, "index": index,
                                      "eigenvalue": float(value)}
                                     for index, value in enumerate(eigenvalues[: self.spectrum_top_k])]
                from scipy.stats import wasserstein_distance

                row["wasserstein"] = float(wasserstein_distance(spectra["base"], spectra["other"]))
                row["n_tokens"] = self._moments[("base", layer, split)].count
                rows.append(row)
        frame = pd.DataFrame(rows)
        tables = {"spectra": pd.DataFrame(spectra_rows)}
        summary: dict[str, Any] = {"layers": [layer for layer, _ in self._hooks], "splits": splits}
        pair = contrast_splits(splits)
        if pair is not None:
            tables["selectivity"] = _selectivity_table(frame, *pair)
            selectivity = tables["selectivity"]["selectivity"].replace([np.inf, -np.inf], np.nan)
            summary["mean_selectivity"] = float(selectivity.mean()) if selectivity.notna().any() else None
        for split in splits:
            part = frame[frame["split"] == split]
            summary[f"{split}_mean_wasserstein"] = float(part["wasserstein"].mean())
            summary[f"{split}_effective_rank_change"] = float(
                (part["other_effective_rank"] - part["base_effective_rank"]).mean())
        return AnalysisResult(self.name, frame, tables=tables, summary=summary, plot=plot_covariance)


def _selectivity_table(frame: pd.DataFrame, target: str, control: str) -> pd.DataFrame:
    wide = frame.pivot(index="layer", columns="split", values="wasserstein")
    selectivity = [ratio(forget, retain) for forget, retain in zip(wide[target], wide[control])]
    return pd.DataFrame({"layer": wide.index, f"wasserstein_{target}": wide[target].to_numpy(),
                         f"wasserstein_{control}": wide[control].to_numpy(),
                         "selectivity": selectivity}).reset_index(drop=True)


def plot_covariance(result: AnalysisResult):
    """Each model's effective rank and spectral entropy, and the distance between the two spectra, per layer."""
    frame = result.frame
    distance = f"W({result.label('base')}, {result.label('other')})"
    long = pd.concat([frame.assign(model=result.label(name), effective_rank=frame[f"{name}_effective_rank"],
                                   spectral_entropy=frame[f"{name}_spectral_entropy"], wasserstein=np.nan)
                      for name in MODELS] + [frame.assign(model=distance, effective_rank=np.nan,
                                                          spectral_entropy=np.nan, wasserstein=frame["wasserstein"])])
    panels = [("effective_rank", "effective rank"), ("spectral_entropy", "spectral entropy (nats)"),
              ("wasserstein", "Wasserstein distance between the spectra")]
    return layer_figure(long, panels, "Activation covariance spectra per layer", color_by="model", dash_by="split")

"""One forward pass per (model, split), feeding every activation analysis from it.

For each batch of a split the runner runs each model exactly once with the union of all analyses' hooks
attached (observe-only hooks that store detached activations of that batch), then hands the batch's
activations to every analysis. Only one batch of activations is alive at a time: analyses keep streaming
accumulators, never a dataset-sized cache. Pair analyses receive ``{"base": ..., "other": ...}`` of the same
batch; model-scope analyses receive every model's activations under the model names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from mechunlearn.batching import iter_batches
from mechunlearn.diagnostics.base import ActivationAnalysis, AnalysisResult, WeightAnalysis, get_analysis
from mechunlearn.hooks import require_hook_names

__all__ = ["RunStats", "run_activation_analyses", "run_analyses", "check_comparable", "build_analyses"]


@dataclass
class RunStats:
    """How many forward passes (and texts) each (model, split) took: the fused runner's promise is one pass."""

    forward_passes: Counter = field(default_factory=Counter)  # (model, split) -> batches run
    texts: Counter = field(default_factory=Counter)


def check_comparable(base, other) -> None:
    """Raise a clear error unless the two models have the same architecture and shapes."""
    fields = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab")
    differences = [f"{name}: {getattr(base.cfg, name)} vs {getattr(other.cfg, name)}" for name in fields
                   if getattr(base.cfg, name) != getattr(other.cfg, name)]
    if differences:
        raise ValueError("cannot compare models of different shapes (" + "; ".join(differences) + "); compare "
                         "checkpoints of the same architecture, e.g. a base model and its unlearned version")


def build_analyses(names: Sequence[str], options: Mapping[str, dict[str, Any]] | None = None) -> list:
    """Instances of the named analyses (unknown names raise, listing the known ones)."""
    options = options or {}
    return [get_analysis(name)(**options.get(name, {})) for name in names]


def _validate_splits(splits: Mapping[str, Sequence[str]], max_samples: int | None) -> dict[str, list[str]]:
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be a positive number of texts, got {max_samples}")
    if not splits:
        raise ValueError("no splits given: pass forget and retain texts")
    limited = {}
    for name, texts in splits.items():
        texts = [text for text in texts if text.strip()]
        if not texts:
            raise ValueError(f"split {name!r} is empty: pass at least one non-empty text")
        limited[name] = texts[:max_samples] if max_samples else texts
    return limited


@torch.no_grad()
def _forward_capture(model, tokens: torch.Tensor, hook_names: Sequence[str]) -> dict[str, torch.Tensor]:
    store: dict[str, torch.Tensor] = {}

    def keep(activation, hook):
        store[hook.name] = activation.detach()

    with model.hooks(fwd_hooks=[(name, keep) for name in hook_names]):
        model(tokens)
    return store


def run_activation_analyses(analyses: Sequence[ActivationAnalysis], models: Mapping[str, Any],
                            splits: Mapping[str, Sequence[str]], *, batch_size: int = 16, max_length: int = 128,
                            max_samples: int | None = 500, progress: bool = True,
                            stats: RunStats | None = None) -> dict[str, AnalysisResult]:
    """Feed ``analyses`` from one pass per (model, split). ``models``: name -> HookedTransformer, base first."""
    if not analyses:
        return {}
    splits = _validate_splits(splits, max_samples)
    model_names = list(models)
    pair_names = model_names[:2]
    if any(analysis.scope == "pair" for analysis in analyses):
        if len(model_names) < 2:
            raise ValueError("pair analyses need two models (a base and another model)")
        check_comparable(models[pair_names[0]], models[pair_names[1]])
    hooks_by_model: dict[str, list[str]] = {}
    for name, model in models.items():
        wanted = sorted({hook for analysis in analyses for hook in analysis.hook_names(model)})
        require_hook_names(model, wanted)
        hooks_by_model[name] = wanted
    for analysis in analyses:
        if analysis.scope == "pair":
            analysis.start({"base": models[pair_names[0]], "other": models[pair_names[1]]})
        else:
            analysis.start(dict(models))
    stats = stats if stats is not None else RunStats()
    tokenizer = models[model_names[0]].tokenizer
    if tokenizer is None:
        raise ValueError("the base model has no tokenizer attached: load it with mechunlearn.models.load")
    for split, texts in splits.items():
        batches = iter_batches(tokenizer, texts, batch_size, max_length)
        total = -(-len(texts) // batch_size)
        for batch in tqdm(batches, total=total, desc=f"diagnostics {split}", disable=not progress, leave=False):
            activations = {}
            for name, model in models.items():
                device = next(model.parameters()).device
                activations[name] = _forward_capture(model, batch.tokens.to(device), hooks_by_model[name])
                stats.forward_passes[(name, split)] += 1
                stats.texts[(name, split)] += len(batch)
            for analysis in analyses:
                if analysis.scope == "pair":
                    fed = {"base": activations[pair_names[0]], "other": activations[pair_names[1]]}
                else:
                    fed = activations
                analysis.update(split, fed, batch)
            del activations
    return {analysis.name: analysis.result() for analysis in analyses}


def run_analyses(analyses: Sequence[Any], models: Mapping[str, Any], splits: Mapping[str, Sequence[str]] | None = None,
                 **runner_options: Any) -> dict[str, AnalysisResult]:
    """Run weight analyses on the first two models and every activation analysis in one fused pass."""
    model_names = list(models)
    results: dict[str, AnalysisResult] = {}
    weight_analyses = [a for a in analyses if isinstance(a, WeightAnalysis)]
    activation_analyses = [a for a in analyses if isinstance(a, ActivationAnalysis)]
    others = [a for a in analyses if not isinstance(a, (WeightAnalysis, ActivationAnalysis))]
    if weight_analyses:
        if len(model_names) < 2:
            raise ValueError("weight analyses compare two models: pass a base and another model")
        base, other = models[model_names[0]], models[model_names[1]]
        check_comparable(base, other)
        for analysis in weight_analyses:
            results[analysis.name] = analysis.run(base, other)
    if activation_analyses:
        if splits is None:
            raise ValueError("activation analyses need forget and retain texts (splits)")
        results.update(run_activation_analyses(activation_analyses, models, splits, **runner_options))
    for analysis in others:  # self-contained analyses (lenses on MCQ items) run per model on their own data
        results[analysis.name] = analysis.run(models)
    return results

"""One forward pass per (model, split), feeding every activation analysis from it.

For each batch of a split the runner runs each model exactly once with the union of all analyses' hooks
attached (``mechunlearn.hooks.forward_capturing``: observe-only hooks that keep detached activations of that
batch), then hands every analysis the activations of the hooks IT declared, and no others (an analysis that
forgets to declare a hook gets a KeyError at once, not a silent dependence on another analysis' hooks). Only one
batch of activations is alive at a time: analyses keep streaming accumulators, never a dataset-sized cache. Pair
analyses receive ``{"base": ..., "other": ...}`` of the same batch; model-scope analyses receive every model's
activations under the model names. A hook an analysis asks for that a model lacks is one clear error, naming the
analysis, before any pass runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from mechunlearn.batching import iter_batches
from mechunlearn.diagnostics.base import (ActivationAnalysis, AnalysisResult, WeightAnalysis, check_comparable,
                                          get_analysis)
from mechunlearn.hooks import forward_capturing

__all__ = ["RunStats", "run_activation_analyses", "run_analyses", "check_comparable", "build_analyses"]


@dataclass
class RunStats:
    """How many forward passes (and texts) each (model, split) took: the fused runner's promise is one pass."""

    forward_passes: Counter = field(default_factory=Counter)  # (model, split) -> batches run
    texts: Counter = field(default_factory=Counter)


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


def _declared_hooks(analyses: Sequence[ActivationAnalysis], models: Mapping[str, Any],
                    pair_names: Sequence[str]) -> dict[int, dict[str, list[str]]]:
    """``{id(analysis): {model name: its hooks}}``; a hook a model lacks is one error naming the analysis."""
    declared: dict[int, dict[str, list[str]]] = {}
    for analysis in analyses:
        fed = pair_names if analysis.scope == "pair" else list(models)
        per_model = {}
        for name in fed:
            hooks = list(dict.fromkeys(analysis.hook_names(models[name])))
            missing = [hook for hook in hooks if hook not in models[name].hook_dict]
            if missing:
                layers = models[name].cfg.n_layers
                example = ", ".join(sorted(h for h in models[name].hook_dict if h.startswith("blocks.0."))[:8])
                raise ValueError(f"analysis {analysis.name!r} asks for hook point(s) {', '.join(missing)}, which "
                                 f"model {name!r} does not have ({layers} layers, blocks.0..{layers - 1}); its "
                                 f"block hook names look like: {example}")
            per_model[name] = hooks
        declared[id(analysis)] = per_model
    return declared


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
    declared = _declared_hooks(analyses, models, pair_names)
    hooks_by_model = {name: sorted({hook for per_model in declared.values() for hook in per_model.get(name, [])})
                      for name in model_names}
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
                if not hooks_by_model[name]:
                    continue  # no analysis reads this model's activations (it may still run passes of its own)
                device = next(model.parameters()).device
                _, activations[name] = forward_capturing(model, batch.tokens.to(device), hooks_by_model[name])
                stats.forward_passes[(name, split)] += 1
                stats.texts[(name, split)] += len(batch)
            for analysis in analyses:
                wanted = declared[id(analysis)]
                fed = {name: {hook: activations[name][hook] for hook in hooks} if hooks else {}
                       for name, hooks in wanted.items()}
                if analysis.scope == "pair":
                    fed = {"base": fed[pair_names[0]], "other": fed[pair_names[1]]}
                analysis.update(split, fed, batch)
            del activations
    results = {analysis.name: analysis.result() for analysis in analyses}
    for analysis in analyses:
        if analysis.scope == "pair" and isinstance(results[analysis.name], AnalysisResult):
            results[analysis.name].labels = {"base": pair_names[0], "other": pair_names[1]}
    return results


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
            results[analysis.name].labels = {"base": model_names[0], "other": model_names[1]}
    if activation_analyses:
        if splits is None:
            raise ValueError("activation analyses need forget and retain texts (splits)")
        results.update(run_activation_analyses(activation_analyses, models, splits, **runner_options))
    for analysis in others:  # self-contained analyses (lenses on MCQ items) run per model on their own data
        results[analysis.name] = analysis.run(models)
    return results

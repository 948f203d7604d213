"""The short API for notebooks: ``import mechunlearn as mu``.

>>> import mechunlearn as mu
>>> world = mu.world("micro")                                     # doctest: +SKIP
>>> base = mu.load("base", world=world)                           # pretrained once, then from the cache
>>> result = mu.unlearn(base, "npo", world=world, max_steps=20)    # a copy is trained; base stays as it was
>>> mu.evaluate({"base": base, "npo": result.model}, world)       # one row per model, intervals as columns
>>> mu.diagnose({"base": base, "npo": result.model}, world, ["weight_comparison"])["weight_comparison"]
>>> mu.attack(result.model, "relearn", world=world, gold="gold", lrs=[1e-3], eval_steps=[0, 5])

Every function is a thin wrapper over the library's own (nothing here computes anything itself):

* ``mu.world(spec)``: ``world.resolve_world`` (a preset built once into the cache, or a directory) -> ``World``;
* ``mu.pretrain(world, which)``: ``reference.pretrain`` -> the checkpoint directory;
* ``mu.load(model)``: ``models.load`` of what ``mechunlearn <command> --model`` accepts -> ``HookedTransformer``;
* ``mu.unlearn(model, method)``: ``methods.create`` + ``unlearn.unlearn`` (on a copy unless ``inplace``) ->
  ``UnlearnResult`` (``.model``, ``.training``);
* ``mu.evaluate(model, world)``: ``evals.evaluate_model`` -> its dict (one model) or a DataFrame (a mapping);
* ``mu.diagnose(models, world)``: ``diagnostics.build_analyses`` + ``run_analyses`` -> ``{name: AnalysisResult}``;
* ``mu.attack(model, name)``: ``attacks.create_attack(name, **budget).run`` -> ``AttackResult``;
* ``mu.notebook_mode()``: ``views.notebook_mode`` (plotly figures kept when a notebook is exported to HTML).

Models may be given in memory (a ``HookedTransformer``, hooks and spliced modules kept) or as anything
``mechunlearn <command> --model`` takes: ``"base"`` / ``"gold"`` (the world's reference models), a checkpoint
directory, an unlearned run's directory, an HF-cache name. Worlds may be given as a ``World``, a preset name
(``"micro"``, ``"default"``) or a saved world's directory.

``mechunlearn.world`` and ``mechunlearn.unlearn`` are also submodules; they are callable modules (see
``mechunlearn._callable``), so ``mu.world(...)`` and ``mu.unlearn(...)`` call the functions below whether or not
the submodule was imported, and ``from mechunlearn.unlearn import unlearn`` is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["world", "pretrain", "load", "unlearn", "evaluate", "diagnose", "attack", "notebook_mode"]

ModelSpec = Any  # a HookedTransformer, or str / PathLike naming one (see the module docstring)


# ----------------------------------------------------------------------------------------------------- inputs
def _is_model(value: Any) -> bool:
    from transformer_lens import HookedTransformer

    return isinstance(value, HookedTransformer)


def world(spec: Any, seed: int = 0):
    """A ``World``: ``spec`` as is when it already is one, else ``mechunlearn.world.resolve_world(spec, seed)``
    (a size preset, built once into the cache, or a world directory)."""
    from mechunlearn.world import World, resolve_world

    if isinstance(spec, World):
        return spec
    if spec is None:
        raise ValueError("no world given: pass a preset name ('micro', 'default'), a world directory or a World")
    return resolve_world(spec, seed)


def _world_or_none(spec: Any):
    return None if spec is None else world(spec)


def pretrain(world_spec: Any, which: str = "base", *, progress: bool = False, **options: Any) -> Path:
    """``reference.pretrain(world, which, **options)``: reference model ``which`` (``base``, ``gold``) of the
    world, pretrained unless the cache holds it; returns its checkpoint directory (``mu.load`` it)."""
    from mechunlearn.reference import pretrain as pretrain_reference

    return pretrain_reference(world(world_spec), which, progress=progress, **options)


def load(model: ModelSpec, *, world: Any = None, device: str = "auto", dtype: str = "auto",
         allow_download: bool = False, progress: bool = False, **options: Any):
    """A ``HookedTransformer``: ``model`` itself when it is one (nothing copied), else loaded with
    ``models.load`` from what ``mechunlearn.cli.common.resolve_model_dir`` makes of it (``base`` / ``gold``
    need ``world=``); ``progress=False`` also silences transformers' loading bars."""
    if _is_model(model):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"cannot load a model from a {type(model).__name__}: pass a HookedTransformer, 'base' / "
                         "'gold' (with world=), a checkpoint directory or an HF-cache name")
    from mechunlearn import models
    from mechunlearn.cli.common import quiet_output, resolve_model_dir

    directory = resolve_model_dir(str(model), _world_or_none(world), progress=progress,
                                  allow_download=allow_download)
    with quiet_output(not progress):  # no "Loading weights" bars from transformers in a notebook's outputs
        return models.load(directory, device=device, dtype=dtype, allow_download=allow_download, **options)


def _texts(value: Any) -> list[str] | None:
    if value is None:
        return None
    from mechunlearn.data import load_texts

    return load_texts(value) if isinstance(value, (str, os.PathLike)) else list(value)


# --------------------------------------------------------------------------------------------------- unlearn
def unlearn(model: ModelSpec, method: Any, *, world: Any = None, forget: Any = None, retain: Any = None,
            preset: str | None = "auto", inplace: bool = False, progress: bool = False, device: str = "auto",
            reference: Any = None, **hyperparameters: Any):
    """Unlearn with ``method`` (a registry name with ``hyperparameters``, or an ``UnlearningMethod``); returns
    ``mechunlearn.unlearn.unlearn``'s ``UnlearnResult`` (``.model``, ``.training``).

    ``forget`` / ``retain``: texts or .txt / .jsonl files (default: the world's). ``preset="auto"`` starts from
    the world-tuned hyper-parameters when the world gives the data (as ``mechunlearn unlearn`` does). A model
    given in memory is copied first (the tokenizer shared) unless ``inplace=True``, so the base stays usable.
    """
    from mechunlearn.methods import UnlearningMethod, create
    from mechunlearn.unlearn import unlearn as run_unlearning

    the_world = _world_or_none(world)
    forget_texts, retain_texts = _texts(forget), _texts(retain)
    if the_world is not None:
        forget_texts = forget_texts if forget_texts is not None else the_world.forget_texts()
        retain_texts = retain_texts if retain_texts is not None else the_world.retain_texts()
    if forget_texts is None:
        raise ValueError("no forget texts: pass world= (its forget target) or forget= (texts or a .txt / .jsonl "
                         "file) and retain=")
    if isinstance(method, UnlearningMethod):
        if hyperparameters:
            raise ValueError(f"hyper-parameters {sorted(hyperparameters)} given with a method object: set them "
                             "on its config, or pass the method's name instead")
        chosen = method
    else:
        if preset == "auto":
            preset = "world" if the_world is not None and forget is None and retain is None else None
        chosen = create(str(method), preset=None if preset == "none" else preset, **hyperparameters)
    if _is_model(model):
        hooked = model if inplace else _copy(model)
    else:
        hooked = load(model, world=the_world, device=device)
    return run_unlearning(hooked, chosen, forget_texts, retain_texts or (), world=the_world,
                          reference=None if reference is None else load(reference, world=the_world),
                          progress=progress)


def _copy(model):
    """A trainable deep copy (``attacks.working_copy`` shares the tokenizer; requires_grad and mode restored)."""
    from mechunlearn.attacks.base import working_copy

    duplicate = working_copy(model)
    for original, copied in zip(model.parameters(), duplicate.parameters()):
        copied.requires_grad_(original.requires_grad)
    return duplicate.train(model.training)


# -------------------------------------------------------------------------------------------------- evaluate
def evaluate(model: ModelSpec | Mapping[str, ModelSpec], world: Any = None, *, gold: ModelSpec | bool | None = None,
             **options: Any):
    """``evals.evaluate_model(model, world, **options)``: its flat metrics dict for one model.

    For a mapping ``{name: model}``, a DataFrame with one row per model (index ``model``) of the scalar metrics
    and each interval as ``<metric>/low``, ``<metric>/high``, ``<metric>/n``. ``gold`` (a model, or the
    mapping's ``"gold"`` entry) gives ``forget_quality`` against gold's forget Truth Ratios (its bootstrap
    interval takes seconds per model); ``gold=False`` leaves it out.
    """
    from mechunlearn.evals import evaluate_model

    the_world = _world_or_none(world)
    if gold is None and isinstance(model, Mapping) and "gold" in model:
        gold = model["gold"]
    if gold is not None and gold is not False and "gold_truth_ratios" not in options:
        options["gold_truth_ratios"] = load(gold, world=the_world)  # evaluate_model scores its Truth Ratios
    if not isinstance(model, Mapping):
        return evaluate_model(load(model, world=the_world), the_world, **options)
    rows = {name: _metric_row(evaluate_model(load(spec, world=the_world), the_world, **options))
            for name, spec in model.items()}
    import pandas as pd

    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "model"
    return frame


def _metric_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    row = {key: value for key, value in metrics.items()
           if value is None or isinstance(value, (bool, int, float, str))}
    for key, interval in (metrics.get("intervals") or {}).items():
        for bound in ("low", "high", "n"):
            row[f"{key}/{bound}"] = interval.get(bound)
    return row


# -------------------------------------------------------------------------------------------------- diagnose
def diagnose(models: Mapping[str, ModelSpec] | Sequence[ModelSpec], world: Any = None,
             analyses: Sequence[str] | None = None, *, forget: Any = None, retain: Any = None,
             options: Mapping[str, dict[str, Any]] | None = None, max_samples: int | None = 200,
             progress: bool = False, **runner_options: Any):
    """``run_analyses(build_analyses(analyses, options), models, splits)``: ``{name: AnalysisResult}``.

    ``models``: ``{name: model}`` (the first is the base of pair analyses) or a (base, other) pair, named
    ``base`` and ``other``. ``analyses``: default the study's (``pipeline.sections.DEFAULT_ANALYSES``), minus
    the MCQ lenses without MCQ items. The analyses get the options ``mechunlearn diagnose`` derives from the
    inputs (MCQ items for the lenses, the world for the knowledge probe), then ``options`` on top.
    """
    from mechunlearn.diagnostics import build_analyses, run_analyses
    from mechunlearn.diagnostics.study_inputs import (EVALS, NEEDS_MCQ, derived_options, load_mcq_items,
                                                      select_analyses)

    the_world = _world_or_none(world)
    if not isinstance(models, Mapping):
        models = list(models)
        if len(models) != 2:
            raise ValueError(f"pass {{name: model}} or a (base, other) pair, got {len(models)} models")
        models = {"base": models[0], "other": models[1]}
    hooked = {name: load(spec, world=the_world) for name, spec in models.items()}
    forget_texts, retain_texts = _texts(forget), _texts(retain)
    if (forget_texts is None or retain_texts is None) and the_world is None:
        raise ValueError("diagnose needs forget and retain texts: pass world= or both forget= and retain=")
    splits = {"forget": forget_texts if forget_texts is not None else the_world.forget_texts(),
              "retain": retain_texts if retain_texts is not None else the_world.retain_texts()}
    items = load_mcq_items(the_world, None, None)
    if analyses is None:
        from mechunlearn.pipeline.sections import DEFAULT_ANALYSES

        analyses = [name for name in DEFAULT_ANALYSES if any(items.values()) or name not in NEEDS_MCQ]
    names, _ = select_analyses(list(analyses), any(items.values()), the_world is not None, options or {})
    names = [name for name in names if name != EVALS]  # evals: mu.evaluate
    from mechunlearn.diagnostics import get_analysis

    constructor_options = {name: derived_options(name, get_analysis(name), dict((options or {}).get(name, {})),
                                                 world=the_world, items=items, splits=splits, progress=progress)
                           for name in names}
    return run_analyses(build_analyses(names, constructor_options), hooked, splits, max_samples=max_samples,
                        progress=progress, **runner_options)


# ---------------------------------------------------------------------------------------------------- attack
def attack(model: ModelSpec, name: str = "relearn", *, world: Any = None, data: Any = None,
           gold: ModelSpec | None = None, base: ModelSpec | None = None, progress: bool = False, **budget: Any):
    """``create_attack(name, **budget).run(model, data, reference={"gold": gold, "base": base})``: the
    ``AttackResult`` (with gold: attacked with the same budget, compared per fact). ``data``: an
    ``AttackData`` (default: ``AttackData.from_world(world)``)."""
    from mechunlearn.attacks import AttackData, create_attack

    the_world = _world_or_none(world)
    if data is None:
        if the_world is None:
            raise ValueError("an attack needs its facts: pass world= or data=AttackData.from_files(...)")
        data = AttackData.from_world(the_world)
    reference = {"gold": None if gold is None else load(gold, world=the_world),
                 "base": None if base is None else load(base, world=the_world)}
    return create_attack(name, **budget).run(load(model, world=the_world), data, reference=reference,
                                             progress=progress)


def notebook_mode(renderer: str | None = None) -> str:
    """``views.notebook_mode()``: plotly renders so notebooks exported to HTML keep their figures."""
    from mechunlearn.views import notebook_mode as set_mode

    return set_mode() if renderer is None else set_mode(renderer)

"""``diagnose``: every analysis of one model pair, written in the seed's output layout (seed 003), keyed.

>>> from mechunlearn.diagnostics.study import diagnose
>>> diagnose("models/base", "models/unlearned", out="outputs", world=world)          # doctest: +SKIP

Layout under ``out`` (``<base>``/``<other>`` = ``base_name``/``other_name``, or the checkpoint directories' names,
sanitised; ``<comparison>`` = ``<base>__to__<other>``)::

    plotly-<version>.min.js              the one copy of plotly.js every figure below loads (relatively, offline)
    <comparison>/manifest.json           what ran: analyses, keys, texts per split, forward passes, timings, models
    <comparison>/<analysis>/             pair analyses (weight_comparison, activation_comparison, ...) and
                                         sae_features (the base's SAE, read in both models: a comparison)
    <base>/<analysis>/, <other>/<analysis>/
                                         per-model analyses (linear_probes, knowledge_probe, activation_separation,
                                         logit_lens, tuned_lens): the result's rows of that model only
    <base>/evals/, <other>/evals/        step 0, capabilities: ``evaluate_model``'s metrics (summary.json)

Each analysis folder is ``AnalysisResult.save``: ``<name>.csv`` (+ one CSV per extra table), ``summary.json``,
``<name>.html`` (the interactive figure) and ``step.json``, whose key hashes the models' weights, the data and the
options (``study_outputs``). A folder whose key matches is skipped; a changed key (another world, a retrained
model, other texts or options) recomputes it and replaces it atomically; ``force=True`` recomputes everything. A
per-model result is shared between comparisons: ``base -> gold`` then ``base -> unlearned`` in one ``out``
computes the base's probes once.

Inputs (``study_inputs``): the world's texts and MCQ items or the user's files; every analysis sees at most
``max_samples`` texts per split (the SAE is fitted and the tuned lens trained on those texts too). All activation
analyses share ONE forward pass per (model, split) (``run_analyses``); ``lipschitzness`` adds its own perturbed
passes and Jacobian-vector products (see its summary).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from mechunlearn.diagnostics.base import ActivationAnalysis, AnalysisResult, WeightAnalysis, get_analysis
from mechunlearn.diagnostics.figures import shared_plotlyjs
from mechunlearn.diagnostics.runner import RunStats, build_analyses, check_comparable, run_analyses
from mechunlearn.diagnostics.study_inputs import (EVALS, derived_options, load_mcq_items, load_splits,
                                                  select_analyses)
from mechunlearn.diagnostics.study_outputs import (is_current, model_name_for, result_for_model, sanitise,
                                                   step_record, write_manifest)
from mechunlearn.numeric import to_python
from mechunlearn.storage import checkpoint_digest, config_digest, texts_digest

__all__ = ["diagnose", "result_for_model", "model_name_for", "EVALS", "COMPARISON_OUTPUT", "SEED_CSV"]

# Model-scope analyses whose result is a comparison with the base (the SAE is fitted on the base model and its
# frame holds one row per feature per NON-base model), so they are written to the comparison folder.
COMPARISON_OUTPUT = frozenset({"sae_features"})
# The seed's file name for an analysis' main frame, where Appendix A fixes one: written as an extra table too.
SEED_CSV = {"weight_comparison": "per_matrix"}
EVALS_INPUTS = ("texts", "mcq", "world")


class _Tracked(ActivationAnalysis):
    """Feeds an activation analysis only the models it still has to compute, and times its own work.

    The runner hands every model-scope analysis all models of the fused pass; a model whose output is current is
    filtered out here, so its statistics are not accumulated again. ``seconds`` is the time spent in the
    analysis itself (start/update/result); the shared forward passes are accounted separately.
    """

    def __init__(self, inner: ActivationAnalysis, only: Mapping[str, Any] | None = None) -> None:
        self.inner, self.only, self.seconds = inner, dict(only) if only is not None else None, 0.0
        self.name, self.scope = inner.name, inner.scope

    def _timed(self, call, *args):
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.seconds += time.perf_counter() - started

    def hook_names(self, model) -> list[str]:
        if self.only is not None and not any(model is kept for kept in self.only.values()):
            return []
        return self.inner.hook_names(model)

    def start(self, models: dict[str, Any]) -> None:
        kept = models if self.only is None or self.scope == "pair" else {k: v for k, v in models.items()
                                                                          if k in self.only}
        self._timed(self.inner.start, kept)

    def update(self, split, activations, batch) -> None:
        if self.only is not None and self.scope != "pair":
            activations = {name: activations[name] for name in self.only}
        self._timed(self.inner.update, split, activations, batch)

    def result(self) -> AnalysisResult:
        return self._timed(self.inner.result)


def _data_fingerprint(inputs: Sequence[str], *, splits, items, world, batch_size: int,
                      max_length: int) -> dict[str, Any]:
    """The content of the data an analysis declares it reads (``Analysis.inputs``)."""
    data: dict[str, Any] = {}
    if "texts" in inputs:
        data["texts"] = {split: texts_digest(texts) for split, texts in splits.items()}
        data["batching"] = {"batch_size": batch_size, "max_length": max_length}
    if "mcq" in inputs:
        data["mcq"] = {domain: config_digest([item.__dict__ for item in domain_items])
                       for domain, domain_items in items.items()}
    if "world" in inputs or "facts" in inputs:
        data["world"] = getattr(world, "content_hash", None)
    return data


# --------------------------------------------------------------------------------------------------- the entry point
def diagnose(base_dir: str | Path, other_dir: str | Path, *, out: str | Path = "outputs",
             analyses: Sequence[str] | None = None, world=None, forget_file: str | Path | None = None,
             retain_file: str | Path | None = None, mcq_forget_file: str | Path | None = None,
             mcq_retain_file: str | Path | None = None, max_samples: int = 500, device: str = "auto",
             dtype: str = "auto", progress: bool = True, base_name: str | None = None, other_name: str | None = None,
             options: Mapping[str, dict[str, Any]] | None = None, force: bool = False, batch_size: int = 16,
             max_length: int = 128) -> list[Path]:
    """Run the analyses of ``base_dir`` -> ``other_dir`` and write them under ``out`` (layout: module docstring).

    ``analyses``: names (default: ``evals`` and every registered analysis the inputs allow); ``options``:
    ``{analysis name: constructor options}`` on top of what diagnose derives (e.g. ``{"tuned_lens": {"steps":
    50}, "sae_features": {"fit_options": {"training_tokens": 20_000}}}``; a given key replaces the derived one).
    ``mcq_retain_file``: the general-knowledge MCQ file (MMLU analogue; ``--mcq-general`` on the command line).
    Returns the directories written by this call (outputs whose key was current are not listed).
    """
    from mechunlearn import models as model_io
    from mechunlearn.provenance import environment

    started = time.perf_counter()
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples <= 0:
        raise ValueError(f"max_samples must be a positive number of texts per split, got {max_samples!r}")
    options = {name: dict(value) for name, value in (options or {}).items()}
    directories = {role: model_io.resolve_checkpoint_dir(path).resolve()
                   for role, path in (("base", base_dir), ("other", other_dir))}
    names = {"base": sanitise(base_name) if base_name else model_name_for(directories["base"]),
             "other": sanitise(other_name) if other_name else model_name_for(directories["other"])}
    if names["base"] == names["other"]:
        raise ValueError(f"both models are named {names['base']!r} in the output layout; give them different names "
                         "(base_name= / other_name=, --base-name / --other-name)")
    splits = load_splits(world, forget_file, retain_file, max_samples)
    items = load_mcq_items(world, mcq_forget_file, mcq_retain_file)
    mcq_from_files = mcq_forget_file is not None or mcq_retain_file is not None
    selected, notes = select_analyses(analyses, any(items.values()), world is not None, options)
    out = Path(out)
    comparison = f"{names['base']}__to__{names['other']}"
    log = (lambda message: tqdm.write(f"diagnose: {message}")) if progress else (lambda message: None)
    digests = {names[role]: checkpoint_digest(directories[role]) for role in ("base", "other")}
    settings = {"dtype": dtype, "max_samples": max_samples}

    # ---- what is still to do: (analysis, folder, key); current folders are skipped
    classes = {name: (None if name == EVALS else get_analysis(name)) for name in selected}
    constructor_options = {name: derived_options(name, cls, options.get(name, {}), world=world, items=items,
                                                 splits=splits, progress=progress)
                           for name, cls in classes.items() if cls is not None}
    todo: dict[str, dict[str, Path]] = {}  # analysis -> {model name or "" for the pair: folder}
    steps: dict[tuple[str, str], dict[str, Any]] = {}
    skipped: list[str] = []
    for name, cls in classes.items():
        per_model = name == EVALS or (cls.scope == "model" and name not in COMPARISON_OUTPUT)
        targets = ({names[r]: out / names[r] / name for r in ("base", "other")} if per_model
                   else {"": out / comparison / name})
        inputs = EVALS_INPUTS if cls is None else cls.inputs
        data = _data_fingerprint(inputs, splits=splits, items=items, world=world, batch_size=batch_size,
                                 max_length=max_length)
        for key, folder in targets.items():
            model_digests = {key: digests[key]} if key else {names["base"]: digests[names["base"]],
                                                            names["other"]: digests[names["other"]]}
            step = step_record(name, models=model_digests, data=data, settings=settings,
                               options=options.get(EVALS, {}) if cls is None else constructor_options[name])
            steps[(name, key)] = step
            if not force and is_current(folder, step["key"]):
                skipped.append(str(folder.relative_to(out)))
                log(f"{folder} is current (key {step['key']}), skipped (force=True recomputes)")
            else:
                if folder.exists() and not force:
                    log(f"{folder} was computed from other inputs: recomputing")
                todo.setdefault(name, {})[key] = folder
    # constructed before any model is loaded, so bad options fail at once
    built = {name: build_analyses([name], {name: constructor_options[name]})[0] for name in todo if name != EVALS}
    needed = [role for role in ("base", "other")
              if any(key in ("", names[role]) for folders in todo.values() for key in folders)]
    loaded = {names[role]: model_io.load(directories[role], device=device, dtype=dtype) for role in needed}
    if len(loaded) == 2:
        check_comparable(*loaded.values())
    plotlyjs = shared_plotlyjs(out) if todo else None
    record_environment = environment(device=device, dtype=dtype)

    written: list[Path] = []
    records: dict[str, dict[str, Any]] = {}
    stats = RunStats()

    def save(name: str, result: AnalysisResult | None, seconds: float,
             per_model: dict[str, AnalysisResult] | None = None) -> None:
        if name in SEED_CSV:
            result = AnalysisResult(result.name, result.frame, {SEED_CSV[name]: result.frame, **result.tables},
                                    result.summary, result.plot, result.labels)
        for key, folder in todo[name].items():
            if per_model is not None:
                part = per_model[key]
            else:
                part = result if key == "" else result_for_model(result, key, list(loaded))
            step = steps[(name, key)] | {"environment": record_environment,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": round(seconds, 3)}
            written.append(part.save(folder, plotlyjs=plotlyjs, step=step))
        records[name] = {"outputs": [str(folder.relative_to(out)) for folder in todo[name].values()],
                         "keys": {str(folder.relative_to(out)): steps[(name, key)]["key"]
                                  for key, folder in todo[name].items()},
                         "seconds": round(seconds, 3), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def models_for(name: str) -> dict[str, Any]:
        keys = todo[name]
        return dict(loaded) if "" in keys else {k: v for k, v in loaded.items() if k in keys}

    # ---- step 0: capabilities of each model (evaluate_model: MCQ accuracy, NLL, collapse flags, ...)
    if EVALS in todo:
        clock = time.perf_counter()
        per_model = {}
        for model_name, model in models_for(EVALS).items():
            per_model[model_name] = _evaluate(model, model_name, world, splits, items, mcq_from_files,
                                              options.get(EVALS, {}))
            per_model[model_name].summary["model_dir"] = str(
                directories["base" if model_name == names["base"] else "other"])
        save(EVALS, None, time.perf_counter() - clock, per_model=per_model)

    # ---- weight analyses: one call each (no forward passes), so each is timed on its own
    for name, analysis in built.items():
        if isinstance(analysis, WeightAnalysis):
            clock = time.perf_counter()
            result = run_analyses([analysis], loaded)[name]
            save(name, result, time.perf_counter() - clock)

    # ---- activation analyses: ONE fused pass per (model, split) for all of them
    tracked = [_Tracked(analysis, None if "" in todo[name] else models_for(name))
               for name, analysis in built.items() if isinstance(analysis, ActivationAnalysis)]
    if tracked:
        pass_models = {k: v for k, v in loaded.items()
                       if any(t.only is None or k in t.only for t in tracked)}
        clock = time.perf_counter()
        results = run_analyses(tracked, pass_models, splits, batch_size=batch_size, max_length=max_length,
                               max_samples=max_samples, progress=progress, stats=stats)
        fused_seconds = time.perf_counter() - clock
        passes = _passes(stats)
        for analysis in tracked:
            save(analysis.name, results[analysis.name], analysis.seconds)
            records[analysis.name]["shared_forward_passes"] = passes
        notes.append(f"fused activation pass: {fused_seconds:.2f} s in all, of which "
                     f"{fused_seconds - sum(t.seconds for t in tracked):.2f} s shared forward passes")

    # ---- self-contained analyses (lenses, knowledge probe): their own passes over their own data, per model
    for name, analysis in built.items():
        if not isinstance(analysis, (WeightAnalysis, ActivationAnalysis)):
            clock = time.perf_counter()
            result = run_analyses([analysis], models_for(name))[name]
            save(name, result, time.perf_counter() - clock)

    write_manifest(out / comparison / "manifest.json", {
        "comparison": comparison,
        "base": {"name": names["base"], "dir": str(directories["base"]), "digest": digests[names["base"]]},
        "other": {"name": names["other"], "dir": str(directories["other"]), "digest": digests[names["other"]]},
        "world": getattr(world, "content_hash", None),
        "texts": {"forget_file": str(forget_file) if forget_file else None,
                  "retain_file": str(retain_file) if retain_file else None,
                  "per_split": {split: len(texts) for split, texts in splits.items()},
                  "digests": {split: texts_digest(texts) for split, texts in splits.items()}},
        "mcq_items": {domain: len(domain_items) for domain, domain_items in items.items()},
        "settings": {"max_samples": max_samples, "batch_size": batch_size, "max_length": max_length,
                     "device": device, "dtype": dtype},
        "environment": record_environment,
    }, records, {
        "selected": selected, "written": [str(path.relative_to(out)) for path in written], "skipped": skipped,
        "forward_passes": _passes(stats), "notes": notes, "wall_s": round(time.perf_counter() - started, 3)})
    return written


def _evaluate(model, model_name: str, world, splits, items, mcq_from_files: bool, user: dict[str, Any]):
    """Step 0 as an ``AnalysisResult``: ``evaluate_model``'s metrics (scalars in the one-row frame, all in the
    summary). World items unless MCQ files were given; the texts are the ones the diagnostics read."""
    from mechunlearn.evals import evaluate_model

    given = {"mcq_forget": items.get("forget"), "mcq_general": items.get("retain")} if mcq_from_files else {}
    metrics = to_python(evaluate_model(model, world, forget_texts=splits["forget"],
                                        retain_texts=splits["retain"], **(given | user)))
    scalars = {key: value for key, value in metrics.items()
               if value is None or isinstance(value, (int, float, str, bool))}
    # the seed's step-0 headline: general (retain / MMLU-analogue) and forget (WMDP-analogue) MCQ accuracy
    capabilities = {"general_mcq_accuracy": metrics.get("mcq_general_acc"),
                    "general_mcq_chance": metrics.get("mcq_general_chance"),
                    "forget_mcq_accuracy": metrics.get("mcq_forget_acc"),
                    "forget_mcq_chance": metrics.get("mcq_forget_chance"), "collapsed": metrics.get("collapsed")}
    return AnalysisResult(EVALS, pd.DataFrame([{"model": model_name, **scalars}]),
                          summary={"model": model_name, "capabilities": capabilities, **metrics})


def _passes(stats: RunStats) -> dict[str, dict[str, dict[str, int]]]:
    """``{model: {split: {"batches": forward passes, "texts": texts}}}`` of the fused runner."""
    passes: dict[str, dict[str, dict[str, int]]] = {}
    for (model, split), batches in stats.forward_passes.items():
        passes.setdefault(model, {})[split] = {"batches": batches, "texts": stats.texts[(model, split)]}
    return passes

"""``diagnose``: every analysis of one model pair, written in the seed's output layout (seed 003).

>>> from mechunlearn.diagnostics.study import diagnose
>>> diagnose("models/base", "models/unlearned", out="outputs", world=world)          # doctest: +SKIP

Layout under ``out`` (``<base>``/``<other>`` = ``base_name``/``other_name``, or the checkpoint directories' names,
sanitised; ``<comparison>`` = ``<base>__to__<other>``)::

    <comparison>/manifest.json           what ran: analyses, texts per split, forward passes, timings, models
    <comparison>/<analysis>/             pair analyses (weight_comparison, activation_comparison, ...) and
                                         sae_features (the base's SAE, read in both models: a comparison)
    <base>/<analysis>/, <other>/<analysis>/
                                         per-model analyses (linear_probes, activation_separation, logit_lens,
                                         tuned_lens): the result's rows of that model only
    <base>/evals/, <other>/evals/        step 0, capabilities: ``evaluate_model``'s metrics (summary.json)

Each analysis folder is ``AnalysisResult.save``: ``<name>.csv`` (+ one CSV per extra table), ``summary.json`` and
``<name>.html`` (the interactive figure). Steps whose folder already exists are skipped (the seed's "the pipeline
automatically skips steps whose output already exists"); ``force=True`` recomputes them. A per-model result is
shared between comparisons: ``base -> gold`` then ``base -> unlearned`` in one ``out`` computes the base's probes
once. Existence is the only test (as in the seed): after changing texts or settings, pass ``force=True`` or
another ``out``.

Inputs: the forget / retain texts are the world's, or ``forget_file`` / ``retain_file`` (``load_texts``; they
override the world's). MCQ items (the lenses and step 0): the world's forget / retain items, or
``mcq_forget_file`` / ``mcq_retain_file`` (``load_mcq``, WMDP / MMLU-style JSONL). Without items, the lenses and
``evals`` are left out of the default set (noted in the manifest); naming them explicitly is an error.
Every analysis sees at most ``max_samples`` texts per split (the SAE is fitted and the tuned lens trained on
those texts too). All activation analyses share ONE forward pass per (model, split)
(``run_analyses``); ``lipschitzness`` adds its own perturbed passes (see its summary).
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from mechunlearn.data import load_mcq, load_texts
from mechunlearn.numeric import to_python
from mechunlearn.storage import write_json
from mechunlearn.diagnostics.base import (ActivationAnalysis, AnalysisResult, WeightAnalysis,
                                          available_analyses, get_analysis)
from mechunlearn.diagnostics.runner import RunStats, build_analyses, check_comparable, run_analyses

__all__ = ["diagnose", "result_for_model", "model_name_for", "EVALS", "COMPARISON_OUTPUT", "SEED_CSV"]

EVALS = "evals"  # step 0: per-model capabilities, selectable like an analysis
# Model-scope analyses whose result is a comparison with the base (the SAE is fitted on the base model and its
# frame holds one row per feature per NON-base model), so they are written to the comparison folder.
COMPARISON_OUTPUT = frozenset({"sae_features"})
NEEDS_MCQ = frozenset({"logit_lens", "tuned_lens", EVALS})
# The seed's file name for an analysis' main frame, where Appendix A fixes one: written as an extra table too.
SEED_CSV = {"weight_comparison": "per_matrix"}


# ----------------------------------------------------------------------------------------------------- names
def _sanitise(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("--", "_")).strip("._")
    return cleaned or "model"


def model_name_for(directory: str | Path) -> str:
    """A folder name for a checkpoint: its directory's name, or ``org_name`` for an HF-cache snapshot."""
    path = Path(directory)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return _sanitise(path.parent.parent.name[len("models--"):])
    return _sanitise(path.resolve().name)


# ----------------------------------------------------------------------------------------- per-model results
def result_for_model(result: AnalysisResult, model_name: str, model_names: Sequence[str]) -> AnalysisResult:
    """The rows of ``model_name`` (frame and every table with a ``model`` column) and its part of the summary."""
    def rows(frame):
        return frame[frame["model"] == model_name].reset_index(drop=True) if "model" in frame.columns else frame

    others = set(model_names) - {model_name}
    summary: dict[str, Any] = {}
    for key, value in result.summary.items():
        if key in others:  # summaries keyed by model name (activation_separation)
            continue
        if key == "models" and isinstance(value, dict):  # or under "models" (probes, lenses)
            value = {name: entry for name, entry in value.items() if name not in others}
        summary[key] = value
    return AnalysisResult(result.name, rows(result.frame), {k: rows(t) for k, t in result.tables.items()},
                          summary | {"model": model_name}, result.plot)


class _Tracked(ActivationAnalysis):
    """Feeds an activation analysis only the models it still has to compute, and times its own work.

    The runner hands every model-scope analysis all models of the fused pass; a model whose output already
    exists is filtered out here, so its statistics are not accumulated again. ``seconds`` is the time spent in the
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


# ------------------------------------------------------------------------------------------------- inputs
def _texts(world, forget_file, retain_file, max_samples: int) -> dict[str, list[str]]:
    if forget_file is not None or retain_file is not None:
        if forget_file is None or retain_file is None:
            raise ValueError("diagnose needs both texts files: pass forget_file= and retain_file= (--forget and "
                             "--retain), or neither to use the world's texts")
        splits = {"forget": load_texts(forget_file), "retain": load_texts(retain_file)}
    elif world is not None:
        splits = {"forget": world.forget_texts(), "retain": world.retain_texts()}
    else:
        raise ValueError("diagnose needs forget and retain texts: pass world= (--world) or both forget_file= and "
                         "retain_file= (--forget F --retain R, .txt one text per line or .jsonl)")
    splits = {name: [text for text in texts if text.strip()][:max_samples] for name, texts in splits.items()}
    for name, texts in splits.items():
        if not texts:
            raise ValueError(f"the {name} texts are empty; pass at least one non-empty {name} text")
    return splits


def _mcq_items(world, mcq_forget_file, mcq_retain_file) -> dict[str, list]:
    if mcq_forget_file is not None or mcq_retain_file is not None:
        return {domain: load_mcq(path, domain=domain) for domain, path in
                (("forget", mcq_forget_file), ("retain", mcq_retain_file)) if path is not None}
    if world is not None:
        return {domain: list(world.mcq_items(domain)) for domain in ("forget", "retain")}
    return {}


def _select(analyses: Sequence[str] | None, have_items: bool,
            options: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    known = [EVALS, *available_analyses()]
    unknown_options = sorted(set(options) - set(known))
    if unknown_options:
        raise ValueError(f"options given for unknown analyses {unknown_options}; known: {', '.join(known)}")
    notes = []
    if analyses is None:
        names = [EVALS, *available_analyses()]
        if not have_items:
            names = [name for name in names if name not in NEEDS_MCQ]
            notes.append("no MCQ items (no world, no mcq files): skipped " + ", ".join(sorted(NEEDS_MCQ)))
        return names, notes
    names = list(dict.fromkeys(name.strip() for name in analyses if name and name.strip()))
    if not names:
        raise ValueError(f"no analyses named; choose from: {', '.join(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown analysis {', '.join(map(repr, unknown))}; known analyses: {', '.join(known)}")
    needing = [name for name in names if name in NEEDS_MCQ]
    if needing and not have_items:
        raise ValueError(f"{', '.join(needing)} need multiple-choice items: pass a world (--world) or "
                         "mcq_forget_file= / mcq_retain_file= (WMDP / MMLU-style .jsonl)")
    return names, notes


def _options_for(name: str, cls: type, user: dict[str, Any], *, items, splits, progress: bool) -> dict[str, Any]:
    """Constructor options: what the inputs give (items, texts), then the user's options on top."""
    defaults: dict[str, Any] = {}
    if name in ("logit_lens", "tuned_lens") and not {"items", "world"} & set(user):
        defaults["items"] = [item for domain in ("forget", "retain") for item in items.get(domain, [])]
    if name == "tuned_lens":
        defaults["train_texts"] = splits["retain"]  # tuned-lens' own choice: fit the lens on ordinary text
    if name == "sae_features" and not {"sae", "fit_texts", "world"} & set(user):
        defaults["fit_texts"] = splits["forget"] + splits["retain"]
    if "progress" in inspect.signature(cls.__init__).parameters:
        defaults["progress"] = progress
    return defaults | user


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
    Returns the directories written by this call (skipped steps are not listed).
    """
    from mechunlearn import models as model_io

    started = time.perf_counter()
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples <= 0:
        raise ValueError(f"max_samples must be a positive number of texts per split, got {max_samples!r}")
    options = {name: dict(value) for name, value in (options or {}).items()}
    directories = {role: model_io.resolve_checkpoint_dir(path).resolve()
                   for role, path in (("base", base_dir), ("other", other_dir))}
    names = {"base": _sanitise(base_name) if base_name else model_name_for(directories["base"]),
             "other": _sanitise(other_name) if other_name else model_name_for(directories["other"])}
    if names["base"] == names["other"]:
        raise ValueError(f"both models are named {names['base']!r} in the output layout; give them different names "
                         "(base_name= / other_name=, --base-name / --other-name)")
    splits = _texts(world, forget_file, retain_file, max_samples)
    items = _mcq_items(world, mcq_forget_file, mcq_retain_file)
    mcq_from_files = mcq_forget_file is not None or mcq_retain_file is not None
    selected, notes = _select(analyses, any(items.values()), options)
    out = Path(out)
    comparison = f"{names['base']}__to__{names['other']}"
    log = (lambda message: tqdm.write(f"diagnose: {message}")) if progress else (lambda message: None)

    # ---- what is still to do: (analysis, folder, models it needs); existing folders are skipped
    classes = {name: (None if name == EVALS else get_analysis(name)) for name in selected}
    todo: dict[str, dict[str, Path]] = {}  # analysis -> {model name or "" for the pair: folder}
    skipped: list[str] = []
    for name, cls in classes.items():
        per_model = name == EVALS or (cls.scope == "model" and name not in COMPARISON_OUTPUT)
        targets = ({names[r]: out / names[r] / name for r in ("base", "other")} if per_model
                   else {"": out / comparison / name})
        for key, folder in targets.items():
            if folder.is_dir() and not force:
                skipped.append(str(folder.relative_to(out)))
                log(f"{folder} exists, skipped (force=True recomputes)")
            else:
                todo.setdefault(name, {})[key] = folder
    # constructed before any model is loaded, so bad options fail at once
    built = {name: build_analyses([name], {name: _options_for(name, classes[name], options.get(name, {}), items=items,
                                                              splits=splits, progress=progress)})[0]
             for name in todo if name != EVALS}
    needed = [role for role in ("base", "other")
              if any(key in ("", names[role]) for folders in todo.values() for key in folders)]
    loaded = {names[role]: model_io.load(directories[role], device=device, dtype=dtype) for role in needed}
    if len(loaded) == 2:
        check_comparable(*loaded.values())

    written: list[Path] = []
    records: dict[str, dict[str, Any]] = {}
    stats = RunStats()
    evals_seconds: dict[str, float] = {}

    def save(name: str, result: AnalysisResult, seconds: float) -> None:
        if name in SEED_CSV:
            result = AnalysisResult(result.name, result.frame, {SEED_CSV[name]: result.frame, **result.tables},
                                    result.summary, result.plot)
        for key, folder in todo[name].items():
            part = result if key == "" else result_for_model(result, key, list(loaded))
            written.append(part.save(folder))
        records[name] = {"outputs": [str(folder.relative_to(out)) for folder in todo[name].values()],
                         "seconds": round(seconds, 3), "written": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def models_for(name: str) -> dict[str, Any]:
        keys = todo[name]
        return dict(loaded) if "" in keys else {k: v for k, v in loaded.items() if k in keys}

    # ---- step 0: capabilities of each model (evaluate_model: MCQ accuracy, NLL, collapse flags, ...)
    if EVALS in todo:
        for model_name, model in models_for(EVALS).items():
            clock = time.perf_counter()
            result = _evaluate(model, model_name, world, splits, items, mcq_from_files, options.get(EVALS, {}))
            result.summary["model_dir"] = str(directories["base" if model_name == names["base"] else "other"])
            written.append(result.save(todo[EVALS][model_name]))
            evals_seconds[model_name] = time.perf_counter() - clock
        records[EVALS] = {"outputs": [str(folder.relative_to(out)) for folder in todo[EVALS].values()],
                          "seconds": round(sum(evals_seconds.values()), 3),
                          "written": time.strftime("%Y-%m-%dT%H:%M:%S")}

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

    # ---- self-contained analyses (the lenses): their own passes over the MCQ items, per model
    for name, analysis in built.items():
        if not isinstance(analysis, (WeightAnalysis, ActivationAnalysis)):
            clock = time.perf_counter()
            result = run_analyses([analysis], models_for(name))[name]
            save(name, result, time.perf_counter() - clock)

    _write_manifest(out / comparison / "manifest.json", {
        "comparison": comparison,
        "base": {"name": names["base"], "dir": str(directories["base"])},
        "other": {"name": names["other"], "dir": str(directories["other"])},
        "world": getattr(world, "content_hash", None),
        "texts": {"forget_file": str(forget_file) if forget_file else None,
                  "retain_file": str(retain_file) if retain_file else None,
                  "per_split": {split: len(texts) for split, texts in splits.items()}},
        "mcq_items": {domain: len(domain_items) for domain, domain_items in items.items()},
        "settings": {"max_samples": max_samples, "batch_size": batch_size, "max_length": max_length,
                     "device": device, "dtype": dtype, "options": _describe(options)},
    }, records, {
        "selected": selected, "written": [str(path.relative_to(out)) for path in written], "skipped": skipped,
        "forward_passes": _passes(stats),
        "notes": notes, "wall_s": round(time.perf_counter() - started, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
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


def _describe(options: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Options as JSON: scalars and small lists as they are, anything else (items, SAEs, worlds) by its type."""
    def describe(value):
        if isinstance(value, dict):
            return {str(k): describe(v) for k, v in value.items()}
        if isinstance(value, (int, float, str, bool)) or value is None:
            return value
        if isinstance(value, (list, tuple)) and len(value) <= 16 and all(
                isinstance(v, (int, float, str, bool)) for v in value):
            return list(value)
        return f"<{type(value).__name__}>"
    return describe(options)


def _write_manifest(path: Path, header: dict[str, Any], records: dict[str, dict[str, Any]],
                    last_run: dict[str, Any]) -> None:
    """Merge into an existing manifest: analyses skipped this time keep the record of the run that wrote them."""
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = {}
    analyses = dict(previous.get("analyses", {}))
    analyses.update(records)
    manifest = {**header, "analyses": analyses, "last_run": last_run}
    write_json(path, manifest)

"""The study file: one TOML file (stdlib ``tomllib``), one dataclass per section, validated, defaults filled in.

An unknown section or key, or a value of the wrong type, is a :class:`StudyError` naming it and what is allowed.
``load_study(path)`` reads a file (or the name of a study shipped with the package, e.g. ``"default"``);
``overrides`` (nested dicts, or ``--set section.key=value`` on the command line) replace values before
validation. Relative paths (``out``, data files, checkpoints, ``cache``) are relative to the current directory,
as every command-line path is. ``Study.resolved()`` is the config with every default filled in
(``study.resolved.json``); method grids are expanded by :mod:`mechunlearn.pipeline.grid`.
"""

from __future__ import annotations

import copy
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from mechunlearn.pipeline.errors import StudyError
from mechunlearn.pipeline.sections import (DEFAULT_ANALYSES, DTYPES, EXECUTORS, AnalysesSection, AttacksScope,
                                           DataSection, EvalsSection, MethodSpec, ModelsSection, RaySection,
                                           ReportSection, StudySection, SubmititSection, TrackingSection)

__all__ = ["Study", "StudySection", "DataSection", "ModelsSection", "MethodSpec", "EvalsSection",
           "AnalysesSection", "AttacksScope", "ReportSection", "RaySection", "SubmititSection", "TrackingSection",
           "load_study", "parse_study", "shipped_studies", "parse_assignment", "merge_tables", "EXECUTORS", "DTYPES",
           "DEFAULT_ANALYSES"]

_NEED_MCQ = ("logit_lens", "tuned_lens")  # analyses that read MCQ items (diagnostics.study.NEEDS_MCQ)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


_SECTIONS: dict[str, type] = {"study": StudySection, "data": DataSection, "models": ModelsSection,
                              "evals": EvalsSection, "analyses": AnalysesSection, "report": ReportSection,
                              "ray": RaySection, "submitit": SubmititSection, "tracking": TrackingSection}
_TABLE_SECTIONS = ("methods", "attacks")  # one sub-table per method / attack
ALL_SECTIONS = (*_SECTIONS, *_TABLE_SECTIONS)


# ------------------------------------------------------------------------------------------------------ the study
@dataclass
class Study:
    study: StudySection
    data: DataSection
    models: ModelsSection
    methods: dict[str, MethodSpec]
    evals: EvalsSection
    attacks: dict[str, dict[str, Any]]
    analyses: AnalysesSection
    report: ReportSection
    ray: RaySection
    submitit: SubmititSection
    tracking: TrackingSection
    source: str = "<dict>"           # where it was read from
    text: str = ""                   # the file as given (written to OUT/study.toml)
    attack_scope: AttacksScope = field(default_factory=AttacksScope)   # [attacks] methods / seeds

    @property
    def out(self) -> Path:
        return Path(self.study.out or f"outputs/{self.study.name}").expanduser().absolute()

    @property
    def world_spec(self) -> str | None:
        """The world preset or directory, or None when the study brings its own files."""
        if self.data.forget:
            return None
        return self.data.world or "default"

    @property
    def cache_dir(self) -> Path | None:
        return Path(self.study.cache).expanduser().absolute() if self.study.cache else None

    def seeds_of(self, method: str) -> list[int]:
        spec = self.methods[method]
        return list(spec.seeds) if spec.seeds is not None else list(self.study.seeds)

    def preset_of(self, method: str) -> str | None:
        preset = self.methods[method].preset
        if preset == "auto":
            preset = "world" if self.models.base == "world" else "none"
        return None if preset == "none" else preset

    def resolved(self) -> dict[str, Any]:
        """The config with every default filled in (JSON-able): ``OUT/study.resolved.json``."""
        record: dict[str, Any] = {}
        for name in _SECTIONS:
            record[name] = asdict(getattr(self, name))
        record["study"]["out"] = str(self.out)
        record["data"]["world"] = self.world_spec or ""
        record["methods"] = {name: {"preset": spec.preset, "resolved_preset": self.preset_of(name) or "none",
                                    "seeds": self.seeds_of(name), **spec.hyper}
                             for name, spec in self.methods.items()}
        record["attacks"] = {**asdict(self.attack_scope), **{name: resolved_attack_config(name, config)
                                                              for name, config in self.attacks.items()}}
        return record


# ----------------------------------------------------------------------------------------------------- parsing
def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict or hint is dict:
        return "a table"
    if origin in (typing.Union, __import__("types").UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint) if arg is not type(None))
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(hint, str(hint))


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it has type ``hint`` (an int is accepted as a float), else a StudyError naming ``where``."""
    origin = typing.get_origin(hint)
    arguments = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if origin in (typing.Union, __import__("types").UnionType):
        return _check_type(value, arguments[0], where)
    ok: bool
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is list:
        ok = isinstance(value, list)
        if ok:
            return [_check_type(item, arguments[0], f"{where}[{index}]") for index, item in enumerate(value)]
    elif origin is dict or hint is dict:
        ok = isinstance(value, dict)
    else:  # pragma: no cover - a section field of a type this parser does not know
        raise TypeError(f"study field {where} has an unsupported type {hint}")
    if not ok:
        raise StudyError(f"{where} must be {_describe(hint)}, got {value!r} ({type(value).__name__})")
    return value


def _section(cls: type, table: Any, where: str, *, skip: tuple[str, ...] = ()):
    if not isinstance(table, dict):
        raise StudyError(f"[{where}] must be a table (a [{where}] section), got {table!r}")
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in fields(cls) if f.name not in skip]
    values = {}
    for key, value in table.items():
        if key not in allowed:
            raise StudyError(f"[{where}] has an unknown key {key!r}; allowed keys: {', '.join(allowed)}")
        values[key] = _check_type(value, hints[key], f"{where}.{key}")
    return cls(**values)


def _choice(value: str, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise StudyError(f"{where} = {value!r} is not one of: {', '.join(choices)}")


def _methods(table: Any) -> dict[str, MethodSpec]:
    from mechunlearn.methods import available

    if not isinstance(table, dict):
        raise StudyError(f"[methods] must hold one [methods.<name>] table per method, got {table!r}")
    known = available()
    specs = {}
    for name, entry in table.items():
        if name not in known:
            raise StudyError(f"[methods.{name}]: unknown unlearning method {name!r}; known: {', '.join(known)}")
        if not isinstance(entry, dict):
            raise StudyError(f"[methods.{name}] must be a table of hyper-parameters, got {entry!r}")
        entry = dict(entry)
        preset = _check_type(entry.pop("preset", "auto"), str, f"methods.{name}.preset")
        from mechunlearn.methods.presets import PRESETS

        _choice(preset, ("auto", "none", *PRESETS), f"methods.{name}.preset")
        seeds = entry.pop("seeds", None)
        if seeds is not None:
            seeds = _seeds(seeds, f"methods.{name}.seeds")
        if "seed" in entry:
            raise StudyError(f"[methods.{name}] sets 'seed': seeds come from study.seeds, or give this method "
                             f"its own list with seeds = [...]")
        specs[name] = MethodSpec(name, preset, seeds, entry)
    return specs


def _attacks(table: Any) -> tuple[dict[str, dict[str, Any]], AttacksScope]:
    """``[attacks]``: its plain keys (``methods``, ``seeds``: which unlearned models) and one ``[attacks.<name>]``
    table per attack (its config's fields, checked by building the attack)."""
    if not isinstance(table, dict):
        raise StudyError("[attacks] must hold one [attacks.<name>] table per attack (its config's fields)")
    scope_keys = [f.name for f in fields(AttacksScope)]
    configs = {name: entry for name, entry in table.items() if isinstance(entry, dict)}
    scope = _section(AttacksScope, {key: value for key, value in table.items() if key not in configs}, "attacks")
    for name in configs:
        if name in scope_keys:
            raise StudyError(f"[attacks.{name}]: {name!r} is a key of [attacks] ({', '.join(scope_keys)}), "
                             "not an attack")
    if not configs:
        return {}, scope
    from mechunlearn.attacks import AttackError, available_attacks

    for name, entry in configs.items():
        if name not in available_attacks():
            raise StudyError(f"[attacks.{name}]: unknown attack {name!r}; known: {', '.join(available_attacks())} "
                             f"(and the keys {', '.join(scope_keys)})")
        try:
            resolved_attack_config(name, entry)
        except AttackError as error:
            raise StudyError(f"[attacks.{name}]: {error}") from error
    return {name: dict(entry) for name, entry in configs.items()}, scope


def resolved_attack_config(name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Attack ``name``'s full config (defaults filled in, JSON types: lists, not tuples): what its steps key."""
    import json

    from mechunlearn.attacks import create_attack

    return json.loads(json.dumps(create_attack(name, **dict(overrides)).config.to_dict()))


def _seeds(value: Any, where: str) -> list[int]:
    seeds = _check_type(value, list[int], where)
    if not seeds:
        raise StudyError(f"{where} is empty: give at least one seed, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{where} = {seeds} repeats a seed")
    return seeds


def merge_tables(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
    return merged


def parse_study(table: Mapping[str, Any], *, source: str = "<dict>", text: str = "") -> Study:
    """Validate a parsed study (the dict ``tomllib`` gives) and fill in every default."""
    table = dict(table)
    unknown = [name for name in table if name not in ALL_SECTIONS]
    if unknown:
        raise StudyError(f"{source}: unknown section [{unknown[0]}]; allowed sections: {', '.join(ALL_SECTIONS)}")
    sections = {name: _section(cls, table.get(name, {}), name) for name, cls in _SECTIONS.items()}
    attacks, attack_scope = _attacks(table.get("attacks", {}))
    study = Study(**sections, methods=_methods(table.get("methods", {})), attacks=attacks, source=source, text=text,
                  attack_scope=attack_scope)
    if "names" not in table.get("analyses", {}) and study.data.forget and not (
            study.data.mcq_forget or study.data.mcq_general):
        # the default analyses, less the lenses, which read MCQ items the user's data does not have
        study.analyses.names = [name for name in study.analyses.names if name not in _NEED_MCQ]
    _validate(study)
    return study


def _validate(study: Study) -> None:
    s, data, models, analyses = study.study, study.data, study.models, study.analyses
    if not _NAME.match(s.name):
        raise StudyError(f"study.name = {s.name!r}: use letters, digits, '.', '_' or '-' (it names folders)")
    _choice(s.executor, EXECUTORS, "study.executor")
    _choice(s.dtype, DTYPES, "study.dtype")
    if not (s.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", s.device)):
        raise StudyError(f"study.device = {s.device!r} is not one of: auto, cpu, cuda, cuda:N")
    _seeds(s.seeds, "study.seeds")
    if s.threads < 0:
        raise StudyError(f"study.threads = {s.threads}: give 0 (torch's default) or a positive number")
    if data.forget and data.world:
        raise StudyError("[data] gives both world and forget files: use a world, or your own forget / retain "
                         "files, not both")
    if not data.forget and (data.retain or data.mcq_forget or data.mcq_general):
        raise StudyError("[data] gives retain or MCQ files without forget: give forget = \"FILE\" too "
                         "(or drop them and use a world)")
    if data.forget_sources and not study.world_spec:
        raise StudyError("data.forget_sources selects sources of a world; with your own files the forget set "
                         "is data.forget")
    world_only = [key for key, on in (("base = \"world\"", models.base == "world"),
                                      ("gold = \"world\"", models.gold == "world"), ("native = true", models.native),
                                      ("gold_sources", bool(models.gold_sources))) if on]
    if world_only and not study.world_spec:
        raise StudyError(f"[models] {world_only[0]} needs a world, but [data] gives your own files: name "
                         f"checkpoints for models.base and models.gold (or gold = \"none\")")
    if models.gold == "world" and models.base != "world":
        raise StudyError("models.gold = \"world\" is pretrained with the world's tokenizer, but models.base is a "
                         "checkpoint: give the gold standard's checkpoint (e.g. deep-ignorance's filtered model) "
                         "or gold = \"none\"")
    if analyses.max_samples <= 0:
        raise StudyError(f"analyses.max_samples = {analyses.max_samples}: give a positive number of texts")
    if study.evals.max_texts < 0 or study.evals.batch_size <= 0:
        raise StudyError("evals.max_texts must be >= 0 (0 = all) and evals.batch_size > 0")
    _check_analyses(study)
    from mechunlearn.pipeline.grid import expand_methods

    expand_methods(study, allow_large=True)  # every hyper-parameter named and typed right, before anything runs
    if study.ray.num_cpus < 0 or study.ray.num_gpus < 0:
        raise StudyError("ray.num_cpus and ray.num_gpus must be >= 0")
    if study.submitit.cluster:
        _choice(study.submitit.cluster, ("slurm", "local", "debug"), "submitit.cluster")
    from mechunlearn.tracking import TrackingError, require_backend

    try:  # the package is looked up, not imported: an unused tracker costs nothing
        require_backend(study.tracking.backend)
    except TrackingError as error:
        raise StudyError(str(error)) from None


def _check_analyses(study: Study) -> None:
    from mechunlearn.diagnostics.base import available_analyses

    known = available_analyses()
    analyses = study.analyses
    for name in analyses.names:
        if name not in known:
            raise StudyError(f"analyses.names: unknown analysis {name!r}; known: {', '.join(known)} (the evals "
                             "are a step of their own)")
    needing = [name for name in analyses.names if name in _NEED_MCQ]
    if needing and study.data.forget and not (study.data.mcq_forget or study.data.mcq_general):
        raise StudyError(f"analyses.names has {', '.join(needing)}, which read multiple-choice items: give "
                         "data.mcq_forget / data.mcq_general files, or drop them from analyses.names")
    for name, options in analyses.options.items():
        if name not in analyses.names:
            raise StudyError(f"analyses.options.{name}: {name!r} is not in analyses.names {analyses.names}")
        if not isinstance(options, dict):
            raise StudyError(f"analyses.options.{name} must be a table of that analysis' options")
    for name in analyses.methods:
        if name not in study.methods:
            raise StudyError(f"analyses.methods names {name!r}, which is not a method of this study "
                             f"({', '.join(study.methods) or 'none'})")
    all_seeds = {seed for name in study.methods for seed in study.seeds_of(name)}
    for seed in analyses.seeds:
        if seed not in all_seeds:
            raise StudyError(f"analyses.seeds names seed {seed}, which no method of this study runs")
    scope = study.attack_scope
    for name in scope.methods:
        if name not in study.methods:
            raise StudyError(f"attacks.methods names {name!r}, which is not a method of this study "
                             f"({', '.join(study.methods) or 'none'})")
    for seed in scope.seeds:
        if seed not in all_seeds:
            raise StudyError(f"attacks.seeds names seed {seed}, which no method of this study runs")
    if study.attacks and study.models.gold == "none":
        raise StudyError("[attacks] compares every model with the gold standard under the same attack, but "
                         "models.gold = \"none\": give a gold model, or remove [attacks]")
    if study.attacks and study.data.forget and not study.data.mcq_forget:
        raise StudyError("[attacks] on your own files needs data.mcq_forget (the facts an attack tries to "
                         "recover): give one, or remove [attacks]")


# ------------------------------------------------------------------------------------------------------ loading
def shipped_studies() -> dict[str, Path]:
    """The studies shipped with the package (``mechunlearn/studies/*.toml``), by name."""
    folder = resources.files("mechunlearn") / "studies"
    return {Path(str(entry)).stem: Path(str(entry)) for entry in folder.iterdir() if str(entry).endswith(".toml")}


def load_study(source: str | Path | Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None) -> Study:
    """A study from a TOML file, the name of a shipped study (``"default"``), or a dict; ``overrides`` (nested
    dicts) replace values before validation."""
    if isinstance(source, Mapping):
        table, origin, text = dict(source), "<dict>", ""
    else:
        path = Path(source).expanduser()
        shipped = shipped_studies()
        if not path.is_file() and str(source) in shipped:
            path = shipped[str(source)]
        if not path.is_file():
            raise StudyError(f"study file {source} does not exist: pass a .toml file or the name of a shipped "
                             f"study ({', '.join(sorted(shipped))})")
        text = path.read_text()
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise StudyError(f"{path} is not valid TOML: {error}") from error
        origin = str(path)
    if overrides:
        table = merge_tables(table, overrides)
    return parse_study(table, source=origin, text=text)


def parse_assignment(assignment: str) -> dict[str, Any]:
    """``"methods.npo.beta=0.1"`` -> ``{"methods": {"npo": {"beta": 0.1}}}``; the value is read as TOML (a bare
    word is a string)."""
    if "=" not in assignment:
        raise StudyError(f"--set {assignment!r}: write section.key=value, e.g. --set study.out=outputs/x")
    path, raw = assignment.split("=", 1)
    keys = [key.strip() for key in path.split(".")]
    if len(keys) < 2 or not all(keys):
        raise StudyError(f"--set {assignment!r}: name a section and a key, e.g. study.seeds=[0,1]")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    nested: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        nested = {key: nested}
    return nested

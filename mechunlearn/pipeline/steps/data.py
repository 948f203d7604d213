"""The ``data`` step: the world (keyed by its content hash) or the user's files (keyed by their bytes).

Its ``step.json`` outputs say where the data lie (``world_dir`` or ``files``), so every later step, in any
process, reads the same data: :class:`StudyData` (``context.data()``) serves the world, the forget / retain texts
and the MCQ files, and the arguments ``evaluate_model`` and ``diagnose`` take for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechunlearn.pipeline.errors import StudyError
from mechunlearn.pipeline.steps.base import Plan, Step, StepKind

__all__ = ["DataStep", "StudyData", "locate_world"]

_ROLES = ("forget", "retain", "mcq_forget", "mcq_general")
_WORLDS: dict[tuple[str, str], Any] = {}  # (world_dir, content hash) -> World, per process


def locate_world(spec: str, seed: int, cache: Path | None) -> Path:
    """A world directory: ``spec`` itself, or the preset ``spec`` built once into the cache, where
    ``mechunlearn.world.resolve_world`` keeps it too (``preset_cache_dir``: keyed by the preset's settings)."""
    from mechunlearn.world import build_world
    from mechunlearn.world.build import preset_cache_dir
    from mechunlearn.world.generator import PRESETS

    path = Path(spec).expanduser()
    if path.is_dir():
        return path.absolute()
    if spec in PRESETS:
        target = preset_cache_dir(spec, seed, cache)
        if not (target / "manifest.json").is_file():
            build_world(size=spec, seed=seed, out=target)
        return target.absolute()
    raise StudyError(f"data.world = {spec!r} is neither a world directory nor a preset ({', '.join(PRESETS)}); "
                     "build one with `mechunlearn world build --out DIR`")


def _load_world(directory: str, content_hash: str):
    from mechunlearn.world import load_world

    memo_key = (str(directory), content_hash)
    if memo_key not in _WORLDS:
        world = load_world(directory)
        if world.content_hash != content_hash:
            raise StudyError(f"the world at {directory} changed since the study's data step (hash "
                             f"{world.content_hash[:12]}, expected {content_hash[:12]}): rerun with --force data")
        _WORLDS[memo_key] = world
    return _WORLDS[memo_key]


@dataclass
class StudyData:
    """The study's data as a step sees it: a world and its forget sources, or the user's files."""

    world_dir: str | None = None
    world_hash: str | None = None
    forget_sources: list[str] | None = None
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "StudyData":
        outputs = record["outputs"]
        return cls(outputs.get("world_dir"), outputs.get("world_hash"), outputs.get("forget_sources"),
                   dict(outputs.get("files", {})))

    @property
    def world(self):
        return None if self.world_dir is None else _load_world(self.world_dir, self.world_hash)

    def texts(self) -> tuple[list[str], list[str]]:
        from mechunlearn.data import load_texts

        world = self.world
        if world is not None:
            return world.forget_texts(self.forget_sources), world.retain_texts(self.forget_sources)
        return (load_texts(self.files["forget"]),
                load_texts(self.files["retain"]) if "retain" in self.files else [])

    def eval_arguments(self) -> dict[str, Any]:
        """The data arguments of ``evaluate_model``."""
        if self.world_dir is not None:
            return {"world": self.world, "forget_sources": self.forget_sources}
        forget, retain = self.texts()
        return {"forget_texts": forget, "retain_texts": retain or None, "mcq_forget": self.files.get("mcq_forget"),
                "mcq_general": self.files.get("mcq_general")}

    def diagnose_arguments(self) -> dict[str, Any]:
        """The data arguments of ``diagnostics.study.diagnose``."""
        if self.world_dir is not None:
            return {"world": self.world}
        return {"forget_file": self.files["forget"], "retain_file": self.files.get("retain"),
                "mcq_forget_file": self.files.get("mcq_forget"), "mcq_retain_file": self.files.get("mcq_general")}


class DataStep(StepKind):
    name, stage, order = "data", "data", 10
    loads_models = False

    def plan(self, study, plan: Plan):
        from mechunlearn.storage import file_digest

        if study.world_spec is not None:
            from mechunlearn.data import DataError
            from mechunlearn.world import load_world

            directory = locate_world(study.world_spec, study.data.world_seed, study.cache_dir)
            world = load_world(directory)
            try:
                forget = list(world.resolve_forget(study.data.forget_sources or None))
            except DataError as error:
                raise StudyError(f"data.forget_sources: {error}") from error
            plan.facts.update(world=world, forget_sources=forget)
            yield Step(self.name, "data", {"world_hash": world.content_hash, "forget_sources": forget},
                       paths={"world_dir": str(directory)})
            return
        paths, digests = {}, {}
        for role in _ROLES:
            given = getattr(study.data, role)
            if not given:
                continue
            path = Path(given).expanduser().absolute()
            if not path.is_file():
                raise StudyError(f"data.{role} = {given!r}: no such file ({path})")
            paths[role], digests[role] = str(path), file_digest(path)
        plan.facts.update(world=None, forget_sources=None)
        yield Step(self.name, "data", {"files": digests}, paths=paths)

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        outputs = record.get("outputs", {})
        if "world_dir" in step.paths:
            return outputs.get("world_dir") == step.paths["world_dir"] and Path(step.paths["world_dir"]).is_dir()
        return outputs.get("files") == step.paths

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.data import load_mcq, load_texts

        if "world_dir" in step.paths:
            world = _load_world(step.paths["world_dir"], step.config["world_hash"])
            forget = step.config["forget_sources"]
            return {"world_dir": step.paths["world_dir"], "world_hash": world.content_hash,
                    "forget_sources": forget, "stats": world.stats(forget)}
        counts = {}
        for role, path in step.paths.items():
            items = load_mcq(path, domain="forget" if role == "mcq_forget" else "general") if role.startswith("mcq") \
                else load_texts(path)
            counts[role] = len(items)
        return {"files": dict(step.paths), "digests": step.config["files"], "counts": counts}

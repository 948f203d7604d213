"""Reading a study's outputs: which steps wrote what, the models and their labels, the analyses' tables.

Everything the report, the signature and the figures show comes through :class:`StudyOutputs`, built either
from a running step's inputs (``from_inputs``) or, for ``mechunlearn figures OUT``, from ``OUT/manifest.json``
(``from_out``): the manifest lists the study's current steps, so stale folders of an earlier configuration are
never read (docs/study.md: never glob).

Frames come back with a ``model_id`` column: for a pair analysis the compared model (``diagnostics/base__to__<id>``
holds ``base -> <id>``), for a per-model analysis the model itself (``base`` from the first comparison that has
it: every comparison computes the same base rows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mechunlearn.storage import read_json

__all__ = ["StepOutput", "ModelInfo", "StudyOutputs", "StudyOutputsError"]


class StudyOutputsError(ValueError):
    """An output directory that is not a study's (no manifest), named with the fix."""


@dataclass
class StepOutput:
    id: str
    kind: str
    folder: Path
    record: dict[str, Any]

    @property
    def model_id(self) -> str | None:
        return self.record.get("model_id")

    @property
    def config(self) -> dict[str, Any]:
        return self.record.get("config", {})


@dataclass
class ModelInfo:
    """A model of the study: ``id`` (its folder name everywhere), ``role`` (base | gold | unlearned | native),
    ``label`` (its row in the tables: the method, or ``<method>-<config key>`` in a grid), ``method``, ``seed``."""

    id: str
    role: str
    label: str
    method: str = ""
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)


_ROLE_ORDER = {"gold": 0, "base": 1, "native": 2, "unlearned": 3}


class StudyOutputs:
    def __init__(self, out: str | os.PathLike, steps: list[StepOutput]) -> None:
        self.out = Path(out)
        self.steps = {step.id: step for step in steps}
        self._frames: dict[tuple, pd.DataFrame | None] = {}
        self.models = self._models()

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_out(cls, out: str | os.PathLike) -> "StudyOutputs":
        """The finished steps that ``OUT/manifest.json`` lists."""
        out = Path(out)
        manifest = out / "manifest.json"
        if not manifest.is_file():
            raise StudyOutputsError(f"{out} holds no manifest.json: pass the output directory of a study "
                                    "(mechunlearn run STUDY.toml writes one; see docs/study.md)")
        steps = []
        for entry in read_json(manifest)["steps"]:
            folder = out / entry["id"]
            if (folder / "step.json").is_file():
                steps.append(StepOutput(entry["id"], entry["kind"], folder, read_json(folder / "step.json")))
        return cls(out, steps)

    @classmethod
    def from_inputs(cls, out: str | os.PathLike, inputs: dict[str, Any]) -> "StudyOutputs":
        """A step's finished inputs (``StepContext.inputs``: ``InputRecord`` with ``id``, ``folder``, ``record``)."""
        return cls(out, [StepOutput(entry.id, entry.record.get("step", ""), Path(entry.folder), entry.record)
                         for entry in inputs.values()])

    # ------------------------------------------------------------------------------------------------ models
    def by_kind(self, *kinds: str) -> list[StepOutput]:
        return [step for step in self.steps.values() if step.kind in kinds]

    def _models(self) -> dict[str, ModelInfo]:
        models: dict[str, ModelInfo] = {}
        table = self.steps.get("tables/methods")
        for entry in (table.config.get("models", []) if table else []):
            models[entry["id"]] = ModelInfo(entry["id"], entry.get("role", "unlearned"), entry.get("label", entry["id"]),
                                            entry.get("method", ""), entry.get("seed"), entry.get("hyper", {}))
        # models without evals (or studies whose table is not an input): from the model steps themselves
        unlearned = [step for step in self.by_kind("unlearned")]
        keys_per_method: dict[str, set[str]] = {}
        for step in unlearned:
            keys_per_method.setdefault(step.config.get("method", ""), set()).add(step.config.get("config_key", ""))
        for step in self.steps.values():
            model_id = step.model_id
            if model_id is None or model_id in models or step.kind not in ("reference", "checkpoint", "unlearned",
                                                                          "native", "native_model", "native_switch"):
                continue
            if step.kind == "unlearned":
                method, key = step.config.get("method", ""), step.config.get("config_key", "")
                label = f"{method}-{key}" if len(keys_per_method.get(method, ())) > 1 else method
                models[model_id] = ModelInfo(model_id, "unlearned", label, method, step.config.get("seed"),
                                             step.config.get("hyper", {}))
            else:
                role = step.config.get("role") or ("native" if model_id.startswith("native") else
                                                   "gold" if model_id.startswith("gold") else "base")
                models[model_id] = ModelInfo(model_id, role, model_id)
        for step in self.by_kind("diagnostics", "evals"):  # ids only seen as compared models
            if step.model_id and step.model_id not in models:
                models[step.model_id] = ModelInfo(step.model_id, "unlearned", step.model_id)
        return dict(sorted(models.items(), key=lambda item: (_ROLE_ORDER.get(item[1].role, 9), list(models).index(item[0]))))

    def label(self, model_id: str) -> str:
        model = self.models.get(model_id)
        return model.label if model else model_id

    # ---------------------------------------------------------------------------------------------- diagnostics
    @property
    def comparisons(self) -> dict[str, Path]:
        """``{compared model id: diagnostics folder}`` in model order (gold first)."""
        found = {step.model_id: step.folder for step in self.by_kind("diagnostics") if step.model_id}
        order = list(self.models)
        return dict(sorted(found.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))

    def analyses(self) -> list[str]:
        """Every analysis with an output in some comparison, in the study's order."""
        names: list[str] = []
        for step in self.by_kind("diagnostics"):
            for name in step.config.get("analyses", []):
                if name not in names:
                    names.append(name)
        present = []
        for name in names:
            for model_id, folder in self.comparisons.items():
                if (folder / name).is_dir() or (folder / model_id / name).is_dir() or (folder / "base" / name).is_dir():
                    present.append(name)
                    break
        return present

    def is_pair(self, analysis: str) -> bool:
        return any((folder / analysis).is_dir() for folder in self.comparisons.values())

    @staticmethod
    def _read(path: Path) -> pd.DataFrame | None:
        if not path.is_file():
            return None
        try:
            return pd.read_csv(path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def pair_frame(self, analysis: str, table: str | None = None) -> pd.DataFrame | None:
        """A pair analysis' table over every comparison, with ``model_id`` = the compared model."""
        key = ("pair", analysis, table)
        if key not in self._frames:
            frames = []
            for model_id, folder in self.comparisons.items():
                frame = self._read(folder / analysis / f"{table or analysis}.csv")
                if frame is not None:
                    frames.append(frame.assign(model_id=model_id))
            self._frames[key] = pd.concat(frames, ignore_index=True) if frames else None
        return self._frames[key]

    def model_frame(self, analysis: str, table: str | None = None, include_base: bool = True) -> pd.DataFrame | None:
        """A per-model analysis' table for base (once) and each compared model, with ``model_id``."""
        key = ("model", analysis, table, include_base)
        if key not in self._frames:
            frames, seen = [], set()
            for model_id, folder in self.comparisons.items():
                for name, subfolder in (("base", folder / "base"), (model_id, folder / model_id)):
                    if name in seen or (name == "base" and not include_base):
                        continue
                    frame = self._read(subfolder / analysis / f"{table or analysis}.csv")
                    if frame is not None:
                        frames.append(frame.assign(model_id=name))
                        seen.add(name)
            self._frames[key] = pd.concat(frames, ignore_index=True) if frames else None
        return self._frames[key]

    def analysis_folders(self, analysis: str) -> dict[str, Path]:
        """``{model id: folder}`` of one analysis (pair: the comparison's; per model: the model's own)."""
        folders: dict[str, Path] = {}
        for model_id, folder in self.comparisons.items():
            if (folder / analysis).is_dir():
                folders[model_id] = folder / analysis
            else:
                for name in ("base", model_id):
                    if name not in folders and (folder / name / analysis).is_dir():
                        folders[name] = folder / name / analysis
        return folders

    def summary(self, analysis: str, model_id: str) -> dict[str, Any]:
        folder = self.analysis_folders(analysis).get(model_id)
        path = folder / "summary.json" if folder else None
        return read_json(path) if path is not None and path.is_file() else {}

    # ------------------------------------------------------------------------------------- evals, tables, attacks
    def metrics(self, model_id: str) -> dict[str, Any]:
        step = self.steps.get(f"evals/{model_id}")
        path = step.folder / "metrics.json" if step else None
        return read_json(path) if path is not None and path.is_file() else {}

    def table_steps(self) -> dict[str, StepOutput]:
        """``{name: step}`` of every ``tables/<name>`` step (methods, robustness, signature, native...)."""
        return {step.id.split("/", 1)[1]: step for step in self.steps.values()
                if step.id.startswith("tables/") and step.folder.is_dir()}

    def table_csvs(self, name: str) -> dict[str, pd.DataFrame]:
        step = self.table_steps().get(name)
        if step is None:
            return {}
        return {path.stem: frame for path in sorted(step.folder.glob("*.csv"))
                if (frame := self._read(path)) is not None}

    def attack_folders(self) -> dict[str, dict[str, Path]]:
        """``{attack: {model id: folder}}`` of the ``attacks/<attack>/<model id>/`` steps."""
        found: dict[str, dict[str, Path]] = {}
        for step in self.steps.values():
            parts = step.id.split("/")
            if len(parts) == 3 and parts[0] == "attacks" and step.folder.is_dir():
                found.setdefault(parts[1], {})[parts[2]] = step.folder
        return found

    def attack_frame(self, attack: str, table: str) -> pd.DataFrame | None:
        frames = [frame.assign(model_id=model_id) for model_id, folder in self.attack_folders().get(attack, {}).items()
                  if (frame := self._read(folder / f"{table}.csv")) is not None]
        return pd.concat(frames, ignore_index=True) if frames else None

    def native_csvs(self) -> dict[str, pd.DataFrame]:
        """The native model's tables: ``tables/native/*.csv`` and the ``native/`` step's CSVs, when present."""
        found = dict(self.table_csvs("native"))
        step = self.steps.get("native")
        if step is not None:
            for path in sorted(step.folder.glob("*.csv")):
                frame = self._read(path)
                if frame is not None:
                    found.setdefault(path.stem, frame)
        return found

    def unlearned_steps(self, method: str | None = None) -> list[StepOutput]:
        return [step for step in self.by_kind("unlearned") if method is None or step.config.get("method") == method]

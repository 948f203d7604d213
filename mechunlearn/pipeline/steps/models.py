"""Reference-model steps: ``models/base``, ``models/gold``, ``models/gold-<source>``.

* ``reference``: a world model, pretrained by ``mechunlearn.reference.pretrain`` (content-keyed cache, shared by
  every study) and hard-linked (or copied) into ``models/<id>/model/``, so OUT holds every model it reports on.
  Its key hashes the reference kind, the forget sources and the cache entry's name (world hash, recipe, cache
  version) on top of the data step's key.
* ``checkpoint``: the user's checkpoint (a directory or an HF-cache name), pointed to, not copied; its key is
  ``storage.checkpoint_digest`` of its bytes, so a moved checkpoint reruns nothing and a changed one reruns all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from mechunlearn.pipeline.errors import StudyError
from mechunlearn.pipeline.models import ModelRef
from mechunlearn.pipeline.steps.base import Plan, Step, StepKind
from mechunlearn.storage import atomic_write_text, cache_root, checkpoint_digest

__all__ = ["ReferenceStep", "CheckpointStep", "checkpoint_key", "link_tree"]


def link_tree(source: Path, target: Path) -> None:
    """Hard-link every file of ``source`` into ``target`` (a copy where links are impossible: another disk)."""
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def checkpoint_key(directory: Path, cache: Path | None = None) -> str:
    """``storage.checkpoint_digest(directory)``, remembered across runs in ``CACHE/checkpoint-digests.json`` by
    (path, file sizes, modification times): hashing a 7B checkpoint takes a while, re-planning a study should not."""
    directory = Path(directory).absolute()
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and (p.name == "config.json" or p.name.endswith(".safetensors")))
    signature = json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    memo_path = (cache or cache_root()) / "checkpoint-digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    entry = memo.get(str(directory))
    if entry and entry.get("signature") == signature:
        return entry["digest"]
    digest = checkpoint_digest(directory)
    memo[str(directory)] = {"signature": signature, "digest": digest}
    try:
        atomic_write_text(memo_path, json.dumps(memo, indent=1))
    except OSError:  # a read-only cache only costs the next plan a re-hash
        pass
    return digest


class ReferenceStep(StepKind):
    """Pretrain (or take from the cache) a world reference model."""

    name, stage, order = "reference", "models", 20

    def plan(self, study, plan: Plan):
        from mechunlearn.reference import reference_dir

        world, forget = plan.facts["world"], plan.facts["forget_sources"]
        wanted = []
        if study.models.base == "world":
            wanted.append(("base", "base", "base", forget))
        if study.models.gold == "world":
            wanted.append(("gold", "gold", "gold", forget))
        for source in study.models.gold_sources:
            if source not in world.sources:
                raise StudyError(f"models.gold_sources names {source!r}, not a source of the world "
                                 f"({', '.join(world.sources)})")
            wanted.append((f"gold-{source}", "gold", "gold", [source]))
        for model_id, which, role, sources in wanted:
            entry = reference_dir(world, which, forget_sources=sources, cache_dir=study.cache_dir).name
            yield Step(self.name, f"models/{model_id}", {"which": which, "role": role, "forget_sources": sources,
                                                          "reference": entry},
                       inputs={"data": "data"}, model_id=model_id)

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return (folder / "model" / "config.json").is_file()

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        from mechunlearn.reference import pretrain

        world = context.data().world
        source = pretrain(world, step.config["which"], forget_sources=step.config["forget_sources"],
                          cache_dir=context.cache_dir, progress=context.progress)
        if source.name != step.config["reference"]:
            raise RuntimeError(f"pretrain wrote {source.name}, the plan expected {step.config['reference']}")
        link_tree(source, staging / "model")
        summary = json.loads((source / "pretrain.json").read_text())
        reference = ModelRef(step.model_id, step.config["role"], staging / "model", key="")
        return {"model": reference.to_record(staging), "cache": str(source),
                "pretrain": {k: summary.get(k) for k in ("n_texts", "steps", "final_loss", "wall_time_s")}}


class CheckpointStep(StepKind):
    """A user's checkpoint as the base or gold model."""

    name, stage, order = "checkpoint", "models", 21

    def plan(self, study, plan: Plan):
        for role in ("base", "gold"):
            spec = getattr(study.models, role)
            if spec in ("world", "none"):
                continue
            from mechunlearn.models import CheckpointError, resolve_checkpoint_dir

            try:
                directory = resolve_checkpoint_dir(spec).absolute()
            except CheckpointError as error:
                raise StudyError(f"models.{role} = {spec!r}: {error}") from error
            if not any(directory.glob("*.safetensors")):
                raise StudyError(f"models.{role} = {spec!r}: {directory} holds no *.safetensors weights")
            if not (directory / "tokenizer.json").is_file():
                raise StudyError(f"models.{role} = {spec!r}: {directory} has no tokenizer.json; a checkpoint is "
                                 "scored with its own tokenizer: save it beside the weights")
            yield Step(self.name, f"models/{role}", {"role": role, "checkpoint": checkpoint_key(directory,
                                                                                                  study.cache_dir)},
                       model_id=role, paths={"model_dir": str(directory)})

    def key(self, step: Step, input_keys: dict[str, str], plan: Plan) -> str:
        return step.config["checkpoint"]

    def complete(self, step: Step, folder: Path, record: dict[str, Any]) -> bool:
        return record["outputs"]["model"]["path"] == step.paths["model_dir"]

    def run(self, step: Step, context, staging: Path) -> dict[str, Any]:
        reference = ModelRef(step.model_id, step.config["role"], Path(step.paths["model_dir"]), key="")
        return {"model": reference.to_record()}

"""A world on disk: canonical JSON(L) files, the tokenizer directory and ``manifest.json``.

Layout of a saved world::

    config.json         format, version and the WorldConfig
    sources.jsonl       {"name", "kind", "title", "series"}
    entities.jsonl      {"name", "kind", "group", "home", "substitute"}
    facts.jsonl         {"fact_id", "subject", "relation", "object", "sources", "category", "premises"}
    documents.jsonl     {"source", "text"}            training documents of every source
    filler.jsonl        {"text"}                      generic filler documents (retain data)
    heldout.jsonl       {"fact_id", "text"}           each stated fact in its relation's held-out template
    heldout_filler.jsonl {"text"}                     filler documents not trained on
    probes.jsonl        raw cloze / MCQ / Truth-Ratio material of every fact
    templates.json      the paraphrase templates
    tokenizer/          tokenizer.json, tokenizer_config.json
    manifest.json       config, content_hash, sha256 of every file, statistics

Files are written canonically (sorted keys, ASCII), so the same (size, seed) gives byte-identical files. The
content hash is the sha256 over every file but the manifest (name and bytes), in name order. Saving writes the
whole tree into a temporary directory next to the target and renames it into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mechunlearn.data import DataError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CONTENT_FILES",
    "TOKENIZER_FILES",
    "json_bytes",
    "content_hash",
    "write_tree",
    "read_tree",
]

FORMAT = "mechunlearn.world"
FORMAT_VERSION = 2  # 2: sagas grouped in series (sources.jsonl "series"), place_share_fraction
CONTENT_FILES = (
    "config.json", "sources.jsonl", "entities.jsonl", "facts.jsonl", "documents.jsonl", "filler.jsonl",
    "heldout.jsonl", "heldout_filler.jsonl", "probes.jsonl", "templates.json",
)
TOKENIZER_FILES = ("tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json")


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, ensure_ascii=True, indent=1) + "\n").encode("ascii")


def _tokenizer_bytes(tokenizer_dir: Path) -> dict[str, bytes]:
    files = {}
    for name in TOKENIZER_FILES:
        path = tokenizer_dir / Path(name).name
        if not path.is_file():
            raise DataError(f"{path}: missing tokenizer file; rebuild the world with build_world(out=...)")
        files[name] = path.read_bytes()
    return files


def content_hash(files: dict[str, bytes], tokenizer_dir: Path) -> tuple[str, dict[str, str]]:
    """(overall sha256, per-file sha256) over the content files and the tokenizer files."""
    everything = {**files, **_tokenizer_bytes(tokenizer_dir)}
    per_file = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(everything.items())}
    overall = hashlib.sha256()
    for name, digest in per_file.items():
        overall.update(f"{name}\0{digest}\n".encode())
    return overall.hexdigest(), per_file


def write_tree(target: str | os.PathLike, files: dict[str, bytes], tokenizer_dir: Path,
               manifest: dict[str, Any]) -> Path:
    """Write the world into ``target`` atomically: build it in a sibling temporary directory, then rename.

    An existing saved world at ``target`` is replaced; any other non-empty directory is refused.
    """
    target = Path(target).resolve()
    if target.exists():
        if not target.is_dir():
            raise DataError(f"{target}: exists and is not a directory; choose another output path")
        if any(target.iterdir()) and not (target / "manifest.json").is_file():
            raise DataError(
                f"{target}: a non-empty directory that is not a saved world; refusing to overwrite it, "
                "choose an empty or new output path"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        (staging / "tokenizer").mkdir()
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_dir / Path(name).name, staging / name)
        (staging / "manifest.json").write_bytes(json_bytes(manifest))
        if target.exists():
            # a directory cannot be renamed over a non-empty one: move the old tree aside, and back on failure
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_tree(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, content files) of a saved world, every file checked against the manifest's hashes."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(
            f"{directory}: no manifest.json, so not a saved world; build one with "
            "mechunlearn.world.build_world(size, seed, out=...)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{manifest_path}: malformed JSON ({error.msg}); rebuild the world") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{manifest_path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}, "
            f"expected {FORMAT!r} version {FORMAT_VERSION}; rebuild the world with this version"
        )
    files: dict[str, bytes] = {}
    for name in CONTENT_FILES:
        path = directory / name
        if not path.is_file():
            raise DataError(f"{path}: missing from the saved world; rebuild it with build_world(out=...)")
        files[name] = path.read_bytes()
    overall, per_file = content_hash(files, directory / "tokenizer")
    bad = sorted(name for name, digest in per_file.items() if manifest.get("files", {}).get(name) != digest)
    if bad or overall != manifest.get("content_hash"):
        raise DataError(
            f"{directory}: contents do not match manifest.json (changed files: {', '.join(bad) or 'none'}); "
            "the world was edited or corrupted, rebuild it with build_world(out=...)"
        )
    return manifest, files

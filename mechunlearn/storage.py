"""Where the toolkit keeps things, and how it writes them: the cache root, content digests, atomic writes.

* ``cache_root()``: ``$MECHUNLEARN_CACHE`` or ``$XDG_CACHE_HOME/mechunlearn`` (default ``~/.cache/mechunlearn``):
  worlds, reference models, tuned lenses, SAEs.
* Digests name what produced a result, so nothing stale is reused: ``config_digest`` (any JSON-able config),
  ``texts_digest`` (an ordered list of texts), ``file_digest`` / ``checkpoint_digest`` (bytes on disk),
  ``model_digest`` (a model's parameters in memory). A step whose digest changed is recomputed.
* Writers never leave a half-written output: ``atomic_directory`` builds a directory under a temporary sibling name
  and renames it into place; ``atomic_write_bytes`` / ``atomic_write_text`` / ``write_json`` do the same for one
  file. Written files and directories get the permissions ``save_pretrained`` gives (0644 / 0755 under the usual
  umask), not ``mkstemp``'s private 0600 / 0700.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mechunlearn.numeric import to_json

__all__ = ["cache_root", "config_digest", "texts_digest", "file_digest", "checkpoint_digest", "model_digest",
           "atomic_directory", "atomic_write_bytes", "atomic_write_text", "write_json", "read_json"]

PathLike = str | os.PathLike


def cache_root() -> Path:
    """``$MECHUNLEARN_CACHE`` or ``~/.cache/mechunlearn`` (``$XDG_CACHE_HOME`` respected)."""
    configured = os.environ.get("MECHUNLEARN_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "mechunlearn"


# ------------------------------------------------------------------------------------------------------ digests
def config_digest(value: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys; numbers through ``numeric.to_json``)."""
    payload = json.dumps(to_json(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(payload.encode("ascii")).hexdigest()[:length]


def texts_digest(texts: Iterable[str], length: int = 16) -> str:
    """sha256 over an ordered list of texts (order matters; each text delimited, so ["ab"] != ["a", "b"])."""
    digest = hashlib.sha256()
    count = 0
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
        count += 1
    digest.update(count.to_bytes(8, "little"))
    return digest.hexdigest()[:length]


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: PathLike, length: int = 16) -> str:
    """sha256 of a file's bytes, streamed; memoised per (path, size, mtime) within the process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key][:length]


def checkpoint_digest(directory: PathLike, length: int = 16) -> str:
    """Digest of a model directory: its config.json and every weight file (``*.safetensors``), by content."""
    directory = Path(directory)
    names = sorted(p.name for p in directory.iterdir()
                   if p.is_file() and (p.name == "config.json" or p.name.endswith(".safetensors")))
    if not names:
        raise FileNotFoundError(f"{directory} holds no config.json or *.safetensors to digest")
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\0{file_digest(directory / name, 64)}\n".encode())
    return digest.hexdigest()[:length]


def model_digest(model, length: int = 16) -> str:
    """Digest of a model's parameters in memory (names, shapes, dtypes and bytes), e.g. a HookedTransformer."""
    import torch

    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        tensor = parameter.detach()
        digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\n".encode())
        data = tensor.contiguous().cpu()
        if data.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw 16-bit words
            data = data.view(torch.int16)
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:length]


# ------------------------------------------------------------------------------------------------ atomic writes
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_directory(target: PathLike) -> Iterator[Path]:
    """``with atomic_directory(out) as staging:`` write into ``staging``; on success it becomes ``out``.

    A failure (or an interrupt) while writing leaves the previous directory, or nothing, never a half-written one.
    An existing directory at ``target`` is replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        _publishable(staging)
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, backup / "previous")
            os.replace(staging, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publishable(root: Path) -> None:
    """Give a staged tree the permissions an ordinary write would (mkdtemp/mkstemp make them private)."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories:
            os.chmod(Path(directory) / name, 0o777 & ~mask)
        for name in files:
            path = Path(directory) / name
            if not path.is_symlink():
                os.chmod(path, 0o666 & ~mask)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, target)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return target


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, value: Any, indent: int = 2) -> Path:
    """``value`` as JSON (``numeric.to_json``: NaN -> "undefined", inf -> "infinite"), written atomically."""
    return atomic_write_text(path, json.dumps(to_json(value), indent=indent) + "\n")


def read_json(path: PathLike) -> Any:
    """Read JSON written by ``write_json``; the special numbers come back as floats (``numeric.from_json``)."""
    from mechunlearn.numeric import from_json

    return from_json(json.loads(Path(path).read_text()))

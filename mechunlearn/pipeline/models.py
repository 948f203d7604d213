"""``ModelRef``: every model of a study by its id, whatever made it, loadable as a ``HookedTransformer``.

Model ids are folder names used in every layout and table (docs/study.md "Model ids"): ``base``, ``gold``,
``gold-<source>``, ``native``..., and ``<method>-<config key>-s<seed>`` for unlearned models. A model step
records its ``ModelRef`` in ``step.json`` (``outputs.model``); every eval, attack and analysis step gets it from
its input and calls ``load()``, without knowing what the model is. For the natively unlearnable model's ids
``switch`` (``{"off": [...], "route": ...}``) is applied by ``mechunlearn.native.switch`` on load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelRef", "ROLES"]

ROLES = ("base", "gold", "unlearned", "native")


@dataclass(frozen=True)
class ModelRef:
    id: str
    role: str
    path: Path                       # an HF checkpoint directory
    key: str                         # the key of the step that made it
    method: str | None = None
    seed: int | None = None
    config: dict[str, Any] | None = None
    switch: dict[str, Any] | None = field(default=None)

    def load(self, device: str = "auto", dtype: str = "auto"):
        """The model as a ``HookedTransformer`` (with its own tokenizer attached, and its switch applied)."""
        from mechunlearn import models

        model = models.load(self.path, device=device, dtype=dtype)
        if self.switch:
            from mechunlearn.native import switch  # the natively unlearnable model's package

            model = switch(model, **self.switch)
        return model

    def to_record(self, folder: Path | None = None) -> dict[str, Any]:
        """As stored in ``step.json``: ``path`` relative to the step's ``folder`` when it lies inside it."""
        record = asdict(self)
        path = Path(self.path)
        if folder is not None and path.is_relative_to(folder):
            path = path.relative_to(folder)
        record["path"] = str(path)
        return record

    @classmethod
    def from_record(cls, folder: Path, step_record: dict[str, Any]) -> "ModelRef":
        """The ``ModelRef`` of a finished model step (its folder and ``step.json``)."""
        entry = dict(step_record["outputs"]["model"])
        path = Path(entry.pop("path"))
        return cls(path=path if path.is_absolute() else Path(folder) / path, key=step_record["key"],
                   **{k: v for k, v in entry.items() if k != "key"})

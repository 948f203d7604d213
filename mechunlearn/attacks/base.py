"""What every attack is: a config dataclass (its budget), ``run(model, data, *, reference=None)`` and a typed result.

* ``AttackConfig``: the budget and settings of an attack; the same config runs on every model, the gold standard
  included (an attack that "recovers" facts on the gold model measures teaching, not recovery). Bad values raise
  :class:`AttackError` (a ``ValueError``: exit status 2 on the command line) naming the field and the fix.
* ``Attack.run(model, data, reference=gold)``: attacks ``model`` and, when a gold model is given, the gold model
  with the same budget; the result then holds both and their paired differences over the same facts.
  ``reference`` may also be ``{"gold": ..., "base": ...}``: direction ablation's first variant needs the base
  model, and the curve attacks use it for "steps to recover half of the base-gold gap".
* Attacks work on a deep copy of the model (:func:`working_copy`): the model given is never modified and no
  hook is added to it. The copy keeps whatever the model carries (permanent hooks, modules spliced in place of
  hook points, e.g. the natively unlearnable model's sink masks), so it behaves exactly as the model given.
* ``AttackResult`` (an ``AnalysisResult``): ``.frame`` (the attack's main table), ``.tables`` (always
  ``"facts"``: one row per fact with ``before`` / ``after`` correctness under the headline variant),
  ``.summary`` (per category ``before`` / ``after`` intervals over facts, the headline variant and the rule that
  chose it), ``.figure()``, ``.save(dir)`` (atomic) and ``AttackResult.load(dir)``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mechunlearn.diagnostics import AnalysisResult
from mechunlearn.numeric import to_json

__all__ = ["AttackError", "AttackConfig", "Attack", "AttackResult", "References", "working_copy",
           "check_compatible", "hook_census", "FORGET_CATEGORIES", "RESULT_FORMAT"]

FORGET_CATEGORIES = ("unique", "shared", "inferred", "all")
RESULT_FORMAT = 1


class AttackError(ValueError):
    """Bad attack input (budget, folds, bits, an incompatible gold model, an unknown name); says how to fix it."""


# ------------------------------------------------------------------------------------------------------ config
@dataclass
class AttackConfig:
    """Settings every attack shares. Subclasses add their budget; ``validate`` checks it (called on creation)."""

    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``AttackError`` for a value the attack cannot run with."""

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any], attack: str = "") -> "AttackConfig":
        """Build from ``{name: value}``; strings (command line) are read as the field's type
        (``"1e-4,3e-4"`` for a tuple of floats, ``"none"`` for an optional field)."""
        known = {f.name for f in fields(cls)}
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in overrides.items():
            key = name.replace("-", "_")
            if key not in known:
                raise AttackError(f"unknown setting {name!r} for attack {attack or cls.__name__}; "
                                  f"known: {', '.join(sorted(known))}")
            values[key] = _coerce(value, hints[key], key, attack)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def positive(self, **values: float | int) -> None:
        """Raise unless every value is > 0 (budgets: steps, iterations, folds, batch sizes)."""
        for name, value in values.items():
            if not value > 0:
                raise AttackError(f"{type(self).__name__}.{name} must be > 0, got {value!r}: an attack with a "
                                  "budget of 0 does nothing; give a positive value")


def _coerce(value: Any, hint: Any, name: str, attack: str) -> Any:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    optional = type(None) in typing.get_args(hint)
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
        raise AttackError(f"setting {name!r} of {attack} cannot be None")
    target = hint
    if optional and len(args) == 1:
        target = args[0]
    try:
        origin = typing.get_origin(target)
        if origin in (tuple, list):
            item_type = (typing.get_args(target) or (str,))[0]
            items = [item for item in value.split(",") if item.strip()] if isinstance(value, str) else list(value)
            return tuple(_scalar(item, item_type) for item in items)
        return _scalar(value, target)
    except (TypeError, ValueError) as error:
        raise AttackError(f"setting {name!r} of {attack}: cannot read {value!r} as {target}") from error


def _scalar(value: Any, target: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
    if target is bool:
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return bool(value)
    if target is int:
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    if target is float:
        return float(value)
    return str(value)


# ------------------------------------------------------------------------------------------------------ result
@dataclass
class AttackResult(AnalysisResult):
    """An analysis-shaped result with the attack's ``config``; ``tables["facts"]`` is the per-fact headline."""

    config: dict[str, Any] = field(default_factory=dict)

    @property
    def facts(self) -> pd.DataFrame:
        return self.tables["facts"]

    def own(self, table: str = "facts") -> pd.DataFrame:
        """The attacked model's rows of a table (a result run with a gold reference also holds gold's rows, under
        ``model == "gold"``)."""
        rows = self.tables[table]
        return rows[rows["model"] == "model"].drop(columns="model") if "model" in rows.columns else rows

    def save(self, directory: str | os.PathLike, html: bool = True) -> Path:
        """``<name>.csv``, one CSV per table, ``summary.json``, ``attack.json`` (name, tables, config) and
        ``<name>.html``, written into ``directory`` atomically (a failure leaves the previous one or nothing)."""
        from mechunlearn.storage import atomic_directory

        target = Path(directory)
        with atomic_directory(target) as staging:
            self.write_files(staging, html=html)
        return target

    def write_files(self, directory: str | os.PathLike, html: bool = True) -> None:
        """``save``'s files, written into an existing ``directory`` that the caller makes atomic (a study's
        attack step writes them into its own staging folder, next to its ``step.json``)."""
        staging = Path(directory)
        self.frame.to_csv(staging / f"{self.name}.csv", index=False)
        for table_name, table in self.tables.items():
            table.to_csv(staging / f"{table_name}.csv", index=False)
        (staging / "summary.json").write_text(json.dumps(to_json(self.summary), indent=2))
        meta = {"format": RESULT_FORMAT, "name": self.name, "tables": list(self.tables), "config": self.config}
        (staging / "attack.json").write_text(json.dumps(to_json(meta), indent=2))
        if html:
            self.figure().write_html(staging / f"{self.name}.html", include_plotlyjs=True, full_html=True)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "AttackResult":
        """Read a result written by ``save`` (its figure is redrawn from the data by the attack's plot)."""
        from mechunlearn.numeric import from_json

        directory = Path(directory)
        meta_path = directory / "attack.json"
        if not meta_path.is_file():
            raise AttackError(f"{directory} holds no attack.json: pass a directory written by AttackResult.save")
        meta = from_json(json.loads(meta_path.read_text()))
        name = meta["name"]
        frame = pd.read_csv(directory / f"{name}.csv")
        tables = {table: pd.read_csv(directory / f"{table}.csv") for table in meta["tables"]}
        summary = from_json(json.loads((directory / "summary.json").read_text()))
        plot = None
        try:
            from mechunlearn.attacks.registry import get_attack

            plot = get_attack(name).plot
        except AttackError:
            pass  # a user's attack that is not registered in this process: the table view is drawn instead
        return cls(name=name, frame=frame, tables=tables, summary=summary, plot=plot, config=meta["config"])


# ------------------------------------------------------------------------------------------- models and copies
@dataclass
class References:
    """The models an attack compares against: ``gold`` (never saw the forget target) and ``base`` (before
    unlearning). Either may be None."""

    gold: Any = None
    base: Any = None

    @classmethod
    def of(cls, reference: Any) -> "References":
        if reference is None:
            return cls()
        if isinstance(reference, References):
            return reference
        if isinstance(reference, Mapping):
            unknown = set(reference) - {"gold", "base"}
            if unknown:
                raise AttackError(f"reference keys {sorted(unknown)} are unknown; pass {{'gold': model, "
                                  "'base': model}} (either may be left out) or the gold model itself")
            return cls(gold=reference.get("gold"), base=reference.get("base"))
        return cls(gold=reference)


def working_copy(model):
    """A deep copy of ``model`` to attack (the tokenizer is shared, not copied: attacks never change it).

    Hooks and spliced modules come along (the copy's hook handles point at the copy's own hook dictionaries,
    since torch's ``RemovableHandle`` pickles its dictionary and ``deepcopy`` maps it to the copy's): removing a
    hook from the copy never touches the original. Parameters of the copy do not require gradients; the
    fine-tuning attacks switch on the ones they train.
    """
    memo = {}
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        memo[id(tokenizer)] = tokenizer
    duplicate = copy.deepcopy(model, memo)
    duplicate.eval()
    for parameter in duplicate.parameters():
        parameter.requires_grad_(False)
    return duplicate


def hook_census(model) -> dict[str, tuple[int, int, int, int]]:
    """Per module: how many forward, forward-pre, backward and backward-pre hooks it carries (to check that an
    attack left none behind, and took none away)."""
    census = {}
    for name, module in model.named_modules():
        counts = (len(module._forward_hooks), len(module._forward_pre_hooks), len(module._backward_hooks),
                  len(getattr(module, "_backward_pre_hooks", {})))
        if any(counts):
            census[name] = counts
    return census


_SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "act_fn",
                 "positional_embedding_type", "rotary_dim", "parallel_attn_mlp", "normalization_type")


def check_compatible(model, other, role: str = "gold", name: str = "attacked") -> None:
    """Raise ``AttackError`` unless ``other`` has the architecture and tokenizer of ``model``: the same attack
    (token suffixes, facts' token ids, quantization groups, direction layers) must mean the same on both."""
    if other is None:
        return
    if model.tokenizer is None or other.tokenizer is None:
        raise AttackError(f"the {name} model and the {role} model must both carry their tokenizer (load them with "
                          "mechunlearn.models.load from directories that hold tokenizer files)")
    differences = [f"{name}: {getattr(model.cfg, name, None)!r} vs {getattr(other.cfg, name, None)!r}"
                   for name in _SHAPE_FIELDS if getattr(model.cfg, name, None) != getattr(other.cfg, name, None)]
    if differences:
        raise AttackError(f"the {role} model has another architecture than the {name} model "
                          f"({'; '.join(differences[:4])}): attack models trained from the same recipe")
    if model.tokenizer.get_vocab() != other.tokenizer.get_vocab():
        raise AttackError(f"the {role} model has another tokenizer than the {name} model: the same suffixes and "
                          "answers would be different tokens; use models that share one tokenizer")


# ------------------------------------------------------------------------------------------------------ attack
class Attack:
    """Base class. Subclasses set ``name``, ``Config``, ``description`` and implement ``attack``.

    ``attack(model, data, base=None)`` attacks one model (on a copy) and returns its ``AttackResult``;
    ``run`` adds the gold model under the same budget. ``plot(result)`` draws the figure from the data.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[AttackConfig]] = AttackConfig
    description: ClassVar[str] = ""

    def __init__(self, config: AttackConfig | None = None):
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{self.name} takes a {self.Config.__name__}, got {type(self.config).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def run(self, model, data, *, reference: Any = None, progress: bool = False) -> AttackResult:
        """Attack ``model``; with a gold reference, attack it too with the same budget and compare on the facts."""
        from mechunlearn.attacks.compare import with_gold

        references = References.of(reference)
        check_compatible(model, references.gold, "gold")
        check_compatible(model, references.base, "base")
        data.check_model(model)
        result = self.attack(model, data, base=references.base, progress=progress)
        if references.gold is None:
            return result
        gold_result = self.attack(references.gold, data, base=references.base, progress=progress)
        base_result = None
        if references.base is not None and self.uses_base_curve:
            base_result = self.attack(references.base, data, base=references.base, progress=progress)
        return with_gold(result, gold_result, base_result)

    #: whether ``run`` also attacks the base model (the curve attacks' "half of the base-gold gap" needs it)
    uses_base_curve: ClassVar[bool] = False
    #: whether ``attack`` reads the base model itself (``base=``): direction ablation's base direction
    needs_base: ClassVar[bool] = False

    def attack(self, model, data, *, base=None, progress: bool = False) -> AttackResult:
        raise NotImplementedError

    @staticmethod
    def plot(result: AttackResult):
        """The figure of a result; default: the headline accuracies before and after, per category."""
        from mechunlearn.attacks.compare import before_after_figure

        return before_after_figure(result)

    def result(self, frame: pd.DataFrame, facts: pd.DataFrame, summary: dict[str, Any],
               tables: dict[str, pd.DataFrame] | None = None) -> AttackResult:
        """Assemble the result: the per-fact headline table first, the category intervals added to ``summary``."""
        from mechunlearn.attacks.scoring import category_intervals
        from mechunlearn.provenance import environment

        all_tables = {"facts": facts, **(tables or {})}
        summary = {"attack": self.name, **category_intervals(facts), **summary,
                   "environment": environment(seeds=self.config.seed)}
        return AttackResult(name=self.name, frame=frame, tables=all_tables, summary=summary, plot=type(self).plot,
                            config=self.config.to_dict())


def best_variant(scores: Mapping[Any, float]) -> Any:
    """The variant with the highest score (the attacker's pick); ties go to the first in the given order,
    undefined (NaN) scores never win."""
    best, best_score = None, -np.inf
    for variant, score in scores.items():
        if score is not None and not np.isnan(score) and score > best_score:
            best, best_score = variant, score
    return best if best is not None else next(iter(scores))

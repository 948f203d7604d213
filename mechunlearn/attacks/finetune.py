"""The two fine-tuning attacks: relearning on known facts measured on held-out ones, and retain-only fine-tuning.

* ``relearn`` (Deeb & Roger 2024, "retraining on T"): the forget target's facts are split into ``k_folds`` folds
  of whole fact groups (``mechunlearn.attacks.data.split_folds``); for each fold in turn the model is fine-tuned
  on the texts of the other folds' facts only (each training text is checked not to give away a held-out fact)
  and the held-out fold is measured (cloze / MCQ / Truth Ratio) at ``eval_steps``; every fact is held out once.
  A small lr grid; the attacker keeps the lr whose held-out forget accuracy at the last step is highest.
* ``retain_finetune`` (Łucki et al. 2024; Siddiqui et al. 2025): the same curves, fine-tuning on retain texts
  only (the forget data is never shown); every forget fact is measured.

Both run the shared loop ``mechunlearn.training.train`` on a copy of the model (all parameters but the fixed
``unembed.b_U``; AdamW, constant lr by default, so the curve at step ``s`` does not depend on the budget).
Folds train one after another: the world's models are compute-bound on a CPU, so stacking the folds into one
``torch.func.vmap`` pass measured no faster (see ``benchmarks/bench_attacks.py``); a study gets its parallelism
from running models side by side instead (``mechunlearn.attacks.run_attacks(workers=...)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from mechunlearn.attacks.base import Attack, AttackConfig, AttackError, best_variant, working_copy
from mechunlearn.attacks.compare import curve_figure
from mechunlearn.attacks.data import AttackData, FactItem, assert_no_leak, split_folds
from mechunlearn.attacks.scoring import facts_table, forget_accuracy, score_data, score_items

__all__ = ["FinetuneConfig", "RelearnConfig", "RetainFinetuneConfig", "Relearn", "RetainFinetune", "fold_texts"]


@dataclass
class FinetuneConfig(AttackConfig):
    """The fine-tuning budget: an lr grid, the steps at which to measure (the last one is the budget)."""

    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    eval_steps: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50, 100)
    batch_size: int = 4
    max_length: int = 128
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 1.0  # 1.0: constant lr (cosine decay to lr * min_lr_ratio otherwise)
    curve_metrics: tuple[str, ...] = ("cloze", "mcq", "truth_ratio")

    def validate(self) -> None:
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise AttackError(f"lrs must be a non-empty list of positive learning rates, got {self.lrs!r}")
        if not self.eval_steps or any(step < 0 for step in self.eval_steps) or max(self.eval_steps) == 0:
            raise AttackError(f"eval_steps {self.eval_steps!r} gives a budget of 0 steps: list the optimiser steps "
                              "at which to measure, the largest > 0 (e.g. 0,1,2,5,10,20,50,100)")
        self.positive(batch_size=self.batch_size, max_length=self.max_length)
        unknown = set(self.curve_metrics) - {"cloze", "mcq", "truth_ratio"}
        if unknown:
            raise AttackError(f"unknown curve metric(s) {sorted(unknown)}; use cloze, mcq, truth_ratio")

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.eval_steps) | {0}))


@dataclass
class RelearnConfig(FinetuneConfig):
    k_folds: int = 5

    def validate(self) -> None:
        super().validate()
        if self.k_folds < 2:
            raise AttackError(f"k_folds must be >= 2 (train on k-1 folds, hold one out), got {self.k_folds}")


@dataclass
class RetainFinetuneConfig(FinetuneConfig):
    pass


def _nll_step(model, batch):
    from mechunlearn.batching import logits_of, mean_nll

    return mean_nll(logits_of(model(batch.tokens)), batch), {}


class _FinetuneAttack(Attack):
    """Shared curve machinery: ``runs(data)`` lists (fold, training texts, measured items) per lr."""

    uses_base_curve = True

    def runs(self, data: AttackData) -> list[tuple[int, list[str], list[FactItem]]]:
        raise NotImplementedError

    def attack(self, model, data: AttackData, *, base=None, progress: bool = False):
        config = self.config
        runs = self.runs(data)
        before = score_data(model, data)
        curve_rows, retain_rows = [], []
        for lr in config.lrs:
            for fold, texts, measured in runs:
                curve, retain = self._train_run(model, data, texts, measured, lr, before, progress,
                                                f"{self.name} lr={lr:g} fold {fold}")
                curve_rows.append(curve.assign(lr=lr, fold=fold))
                retain_rows.append(retain.assign(lr=lr, fold=fold))
        curve = pd.concat(curve_rows, ignore_index=True)
        retain = pd.concat(retain_rows, ignore_index=True)
        return self._assemble(curve, retain, before)

    def _train_run(self, model, data: AttackData, texts: list[str], measured: list[FactItem], lr: float,
                   before: pd.DataFrame, progress: bool, description: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        from mechunlearn.batching import TextBatchSource
        from mechunlearn.evals.nll import context_length
        from mechunlearn.models import FIXED_PARAMETERS
        from mechunlearn.training import TrainConfig, mark_trainable, select_parameters, train

        config = self.config
        working = working_copy(model)
        parameters = mark_trainable(working, select_parameters(working, None, exclude=FIXED_PARAMETERS))
        max_length = min(config.max_length, context_length(working))
        source = TextBatchSource(working.tokenizer, texts, config.batch_size, max_length, seed=config.seed)
        last = max(config.eval_steps)
        train_config = TrainConfig(lr=lr, epochs=math.ceil(last / len(source)), max_steps=last,
                                   batch_size=config.batch_size, max_length=max_length, grad_clip=config.grad_clip,
                                   warmup_ratio=config.warmup_ratio, weight_decay=config.weight_decay,
                                   min_lr_ratio=config.min_lr_ratio, eval_split=0.0, seed=config.seed,
                                   progress=progress)
        ids = {item.fact_id for item in measured}
        frames = [before[before["fact_id"].isin(ids)].assign(step=0)] if 0 in config.steps else []

        def measure(current, step: int) -> None:
            if step + 1 in config.steps:
                frames.append(score_items(current, data, measured, metrics=config.curve_metrics).assign(step=step + 1))

        train(working, _nll_step, source, train_config, parameters=parameters, after_step=measure,
              description=description)
        retain = score_items(working, data, data.retain_items(), metrics=(data.metric,)).assign(step=last)
        return pd.concat(frames, ignore_index=True), retain

    def _assemble(self, curve: pd.DataFrame, retain: pd.DataFrame, before: pd.DataFrame):
        config = self.config
        last = max(config.eval_steps)
        final = {lr: forget_accuracy(curve[(curve["lr"] == lr) & (curve["step"] == last)]) for lr in config.lrs}
        best_lr = best_variant(final)
        aggregated = _aggregate(curve)
        headline_curve = aggregated[aggregated["lr"] == best_lr][["step", "category", "accuracy", "n"]]
        after = curve[(curve["lr"] == best_lr) & (curve["step"] == last)]
        retain_best = (retain[retain["lr"] == best_lr].groupby(["fact_id", "domain", "category"], sort=False)
                       [["correct", "cloze", "mcq", "truth_ratio"]].mean().reset_index())
        facts = facts_table(before, pd.concat([after, retain_best], ignore_index=True))
        at_step = {int(step): {row.category: row.accuracy for row in rows.itertuples()}
                   for step, rows in headline_curve.groupby("step")}
        summary = {"headline": f"lr={best_lr:g}, step {last}", "best_lr": best_lr,
                   "headline_rule": "the lr with the highest held-out forget accuracy at the last step "
                                    "(the attacker's pick)",
                   "lr_grid": {f"{lr:g}": value for lr, value in final.items()}, "curve": at_step,
                   "budget_steps": last}
        tables = {"curve": curve, "retain": retain, "headline_curve": headline_curve.reset_index(drop=True)}
        return self.result(aggregated, facts, summary, tables)

    @staticmethod
    def plot(result):
        return curve_figure(result)


def _aggregate(curve: pd.DataFrame) -> pd.DataFrame:
    """Per (lr, step, category incl. "all"): accuracy (headline metric), MCQ accuracy, mean Truth Ratio, n."""
    forget = curve[curve["domain"] == "forget"]
    stacked = pd.concat([forget, forget.assign(category="all")], ignore_index=True)
    return (stacked.groupby(["lr", "step", "category"], sort=True)
            .agg(accuracy=("correct", "mean"), mcq_accuracy=("mcq", "mean"), truth_ratio=("truth_ratio", "mean"),
                 n=("correct", "size"))
            .reset_index())


class Relearn(_FinetuneAttack):
    name = "relearn"
    Config = RelearnConfig
    description = ("Deeb & Roger 'retraining on T': fine-tune on k-1 folds of the forget target's facts, "
                   "measure the held-out fold at each step; every fold in turn, an lr grid")

    def runs(self, data: AttackData):
        folds = split_folds(data.forget_items(), self.config.k_folds, self.config.seed)
        runs = []
        for index, heldout in enumerate(folds):
            known = [item for fold, items in enumerate(folds) if fold != index for item in items if item.texts]
            texts = data.training_documents(known, seed=self.config.seed * 1009 + index)
            if not texts:
                raise AttackError("relearn: the known folds state no fact (no training text); the forget facts need "
                                  "texts that state them")
            assert_no_leak(texts, heldout)
            runs.append((index, texts, heldout))
        return runs


class RetainFinetune(_FinetuneAttack):
    name = "retain_finetune"
    Config = RetainFinetuneConfig
    description = "fine-tune on retain (unrelated) text only; measure every forget fact at each step"

    def runs(self, data: AttackData):
        if not data.retain_texts:
            raise AttackError("retain_finetune needs retain texts: use a world, or pass retain_texts")
        return [(0, list(data.retain_texts), data.forget_items())]


def fold_texts(data: AttackData, k_folds: int, seed: int = 0) -> list[tuple[list[str], list[FactItem]]]:
    """For inspection and tests: per fold, (training texts, held-out items) exactly as relearning uses them."""
    attack = Relearn(RelearnConfig(k_folds=k_folds, seed=seed))
    return [(texts, heldout) for _, texts, heldout in attack.runs(data)]


"""Knowledge probe: does a model still hold the forget facts' answers inside ("hides"), or not ("forgot")?

``linear_probes`` tells forget TEXT from retain text, which even the gold model does (the topics differ). This
probe asks for the answer itself. Per relation (``lives_in``, ``member_of``, ...) and per residual-stream layer
(0 = embeddings, ``l + 1`` = ``blocks.{l}.hook_resid_post``), a multinomial logistic regression (scikit-learn
``LogisticRegression``, lbfgs, after a ``StandardScaler``) is trained on the RETAIN facts of that relation: the
model's residual stream at the fact's last subject token (``knowledge_facts``) -> the answer entity. It is then
evaluated on the FORGET facts of the same relation whose answer is among the retain answers (the probe can only
name answers it was trained on: the same answer vocabulary; the others are counted as ``excluded``).

* A model that knows the forget facts decodes them as well as it decodes held-out retain facts.
* The gold model never saw the forget target: its accuracy on forget-UNIQUE facts is what "never knew" looks like
  (near ``chance`` = mean of 1 / number of answer classes, or ``majority_baseline`` = always the most frequent
  retain answer). Forget-SHARED facts are also stated by a retain source, so gold knows them.
* An unlearned model near gold at every layer forgot; one near the base model at some layer, though its output no
  longer says it, hides the knowledge where a linear read-out (and a fine-tuning attack) finds it.

The same probe on held-out retain facts (``retain_cv_accuracy``: k-fold cross-validation over the retain facts of
each relation) says how well the read-out works at all at that layer.

Frame ``knowledge_probe.csv``: ``model, layer, category, accuracy, low, high, n_facts, chance, majority_baseline,
retain_cv_accuracy, hook``, ``category`` = all / unique / shared / inferred (forget facts of that category;
``low``/``high``: 95 % percentile bootstrap over facts, ``mechunlearn.stats``). Tables ``per_relation`` (accuracy,
facts, classes and chance per model, layer and relation) and ``per_fact`` (each forget fact's prediction).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mechunlearn.diagnostics.base import Analysis, AnalysisResult
from mechunlearn.diagnostics.figures import Legend, color_for, integer_layer_axes
from mechunlearn.diagnostics.knowledge_facts import KnowledgeFact, facts_from_world, subject_states
from mechunlearn.diagnostics.layers import residual_stream_hooks
from mechunlearn.diagnostics.probing import probe_pipeline, single_threaded
from mechunlearn.stats import bootstrap_interval

__all__ = ["KnowledgeProbe", "probe_relations", "RelationSplit"]

CATEGORIES = ("all", "unique", "shared", "inferred")


class RelationSplit:
    """One relation's retain facts (training) and its decodable forget facts (evaluation)."""

    def __init__(self, relation: str, train: list[KnowledgeFact], test: list[KnowledgeFact],
                 excluded: list[KnowledgeFact]) -> None:
        self.relation, self.train, self.test, self.excluded = relation, train, test, excluded
        counts = Counter(fact.answer for fact in train)
        self.classes = sorted(counts)
        self.majority = max(self.classes, key=lambda answer: (counts[answer], -self.classes.index(answer)))


def probe_relations(facts: Sequence[KnowledgeFact]) -> tuple[list[RelationSplit], dict[str, int]]:
    """Per relation: retain facts to train on, forget facts to test (answer in the retain answers); and counts of
    forget facts left out (``no_retain_answers``: the relation has fewer than two retain answers;
    ``answer_not_in_retain``: the answer never appears among the retain answers)."""
    splits, excluded = [], {"no_retain_answers": 0, "answer_not_in_retain": 0}
    for relation in sorted({fact.relation for fact in facts}):
        train = [fact for fact in facts if fact.relation == relation and fact.domain == "retain"]
        forget = [fact for fact in facts if fact.relation == relation and fact.domain == "forget"]
        answers = {fact.answer for fact in train}
        if len(answers) < 2:
            excluded["no_retain_answers"] += len(forget)
            continue
        test = [fact for fact in forget if fact.answer in answers]
        excluded["answer_not_in_retain"] += len(forget) - len(test)
        if test:
            splits.append(RelationSplit(relation, train, test, [fact for fact in forget if fact.answer not in answers]))
    return splits, excluded


class KnowledgeProbe(Analysis):
    """Per model and layer: retain-trained answer probes, per relation, evaluated on forget facts.

    Options: ``world`` (its facts and cloze prompts; ``forget_sources`` as the world's) or ``facts``
    (``KnowledgeFact``s), ``C`` (1.0), ``max_iter`` (1000), ``standardize`` (True), ``cv_folds`` (5, for the
    retain cross-validation), ``layers`` (default all), ``batch_size`` (64 prompts per pass), ``seed`` (0).
    """

    name = "knowledge_probe"
    scope = "model"
    kind = "probe"
    inputs = ("facts",)
    description = "forget facts' answers decoded per layer by probes trained on retain facts (forgot vs hides)"

    def __init__(self, world=None, facts: Sequence[KnowledgeFact] | None = None, forget_sources=None,
                 C: float = 1.0, max_iter: int = 1000, standardize: bool = True, cv_folds: int = 5,
                 layers: Sequence[int] | None = None, batch_size: int = 64, seed: int = 0) -> None:
        if (world is None) == (facts is None):
            raise ValueError("knowledge_probe: pass exactly one of world= (its facts and cloze prompts) or facts= "
                             "(KnowledgeFact records with subject, relation, answer, prompt and domain)")
        if C <= 0 or max_iter < 1 or cv_folds < 2:
            raise ValueError(f"knowledge_probe: C must be > 0, max_iter >= 1 and cv_folds >= 2; got C={C}, "
                             f"max_iter={max_iter}, cv_folds={cv_folds}")
        self.facts = list(facts) if facts is not None else facts_from_world(world, forget_sources)
        self.splits, self.excluded = probe_relations(self.facts)
        if not self.splits:
            raise ValueError("knowledge_probe: no relation has forget facts whose answers appear among its retain "
                             "facts' answers (at least two of them); nothing can be decoded")
        self.C, self.max_iter, self.standardize, self.cv_folds, self.seed = C, max_iter, standardize, cv_folds, seed
        self.layers, self.batch_size = None if layers is None else list(layers), batch_size

    # ----------------------------------------------------------------------------------------------- one model
    def _fit(self, features: np.ndarray, labels: list[str]):
        probe = probe_pipeline(self.C, self.max_iter, self.standardize, self.seed)
        with warnings.catch_warnings():  # a few dozen facts per relation: lbfgs may stop short of full convergence
            warnings.simplefilter("ignore")
            return probe.fit(features, labels)

    def _cross_validated(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Out-of-fold correctness of each retain fact, NaN for a fact whose answer is absent from its training
        fold (excluded, as forget facts with answers outside the retain answers are)."""
        from sklearn.model_selection import KFold

        correct = np.full(len(labels), np.nan)
        folds = KFold(n_splits=min(self.cv_folds, len(labels)), shuffle=True, random_state=self.seed)
        for train, test in folds.split(features):
            known = np.isin(labels[test], labels[train])
            test = test[known]
            if len(test) == 0:
                continue
            if len(set(labels[train])) < 2:
                correct[test] = 1.0  # one class in the fold, and every kept test answer is that class
                continue
            correct[test] = self._fit(features[train], list(labels[train])).predict(features[test]) == labels[test]
        return correct

    def _model_rows(self, model_name: str, model) -> tuple[list[dict], list[dict], list[dict]]:
        needed = [fact for split in self.splits for fact in split.train + split.test]
        index = {fact.fact_id: row for row, fact in enumerate(needed)}
        states = subject_states(model, needed, layers=self.layers, batch_size=self.batch_size)
        hooks = dict(residual_stream_hooks(model, self.layers))
        rows, relation_rows, fact_rows = [], [], []
        with single_threaded():  # the sklearn fits, not the forward passes above
            for layer, features in states.items():
                correct, categories, retain_correct = [], [], []
                for split in self.splits:
                    train_x = features[[index[fact.fact_id] for fact in split.train]]
                    test_x = features[[index[fact.fact_id] for fact in split.test]]
                    train_y = np.array([fact.answer for fact in split.train])
                    predicted = self._fit(train_x, list(train_y)).predict(test_x)
                    hits = predicted == np.array([fact.answer for fact in split.test])
                    retain_hits = self._cross_validated(train_x, train_y)
                    correct += hits.tolist()
                    categories += [fact.category for fact in split.test]
                    retain_correct += retain_hits.tolist()
                    relation_rows.append({"model": model_name, "layer": layer, "relation": split.relation,
                                          "accuracy": float(hits.mean()), "n_facts": len(split.test),
                                          "n_train": len(split.train), "n_classes": len(split.classes),
                                          "chance": 1 / len(split.classes),
                                          "retain_cv_accuracy": float(np.nanmean(retain_hits))
                                          if np.isfinite(retain_hits).any() else float("nan")})
                    fact_rows += [{"model": model_name, "layer": layer, "fact_id": fact.fact_id,
                                   "relation": split.relation, "category": fact.category, "answer": fact.answer,
                                   "predicted": str(guess), "correct": bool(hit)}
                                  for fact, guess, hit in zip(split.test, predicted, hits)]
                chance = [1 / len(split.classes) for split in self.splits for _ in split.test]
                majority = [fact.answer == split.majority for split in self.splits for fact in split.test]
                correct, categories = np.array(correct, dtype=float), np.array(categories)
                for category in CATEGORIES:
                    chosen = np.ones(len(correct), dtype=bool) if category == "all" else categories == category
                    if not chosen.any():
                        continue
                    interval = bootstrap_interval(correct[chosen], seed=self.seed)
                    rows.append({"model": model_name, "layer": layer, "category": category, "accuracy": interval.mean,
                                 "low": interval.low, "high": interval.high, "n_facts": int(chosen.sum()),
                                 "chance": float(np.mean(np.array(chance)[chosen])),
                                 "majority_baseline": float(np.mean(np.array(majority)[chosen])),
                                 "retain_cv_accuracy": float(np.nanmean(retain_correct)), "hook": hooks[layer]})
        return rows, relation_rows, fact_rows

    # ------------------------------------------------------------------------------------------------ all models
    def run(self, models: dict[str, Any]) -> AnalysisResult:
        if not models:
            raise ValueError(f"{self.name}: no models given; pass {{name: HookedTransformer}}")
        rows, relation_rows, fact_rows = [], [], []
        for model_name, model in models.items():
            model_rows, model_relations, model_facts = self._model_rows(model_name, model)
            rows += model_rows
            relation_rows += model_relations
            fact_rows += model_facts
        frame = pd.DataFrame(rows)
        summary: dict[str, Any] = {
            "measures": "answers of forget facts decoded from the subject's residual stream by retain-trained probes",
            "relations": [split.relation for split in self.splits],
            "n_forget_facts": sum(len(split.test) for split in self.splits),
            "n_retain_facts": sum(len(split.train) for split in self.splits), "excluded": self.excluded,
            "C": self.C, "standardize": self.standardize, "models": {}}
        for model_name, group in frame.groupby("model", sort=False):
            summary["models"][model_name] = {
                category: {"best_layer": int(part.loc[part["accuracy"].idxmax(), "layer"]),
                           "best_accuracy": float(part["accuracy"].max()),
                           "final_accuracy": float(part.loc[part["layer"].idxmax(), "accuracy"]),
                           "mean_accuracy": float(part["accuracy"].mean()), "chance": float(part["chance"].iloc[0]),
                           "n_facts": int(part["n_facts"].iloc[0])}
                for category, part in group.groupby("category", sort=False)}
        return AnalysisResult(self.name, frame, tables={"per_relation": pd.DataFrame(relation_rows),
                                                        "per_fact": pd.DataFrame(fact_rows)},
                              summary=summary, plot=plot_knowledge_probe)


def plot_knowledge_probe(result: AnalysisResult):
    """Forget-fact accuracy per layer, one colour per model (shaded 95 % band), chance dotted; a panel for all
    forget facts and one for the forget-unique ones (what the gold model never saw)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    frame = result.frame
    panels = [category for category in ("all", "unique") if category in set(frame["category"])]
    figure = make_subplots(rows=1, cols=len(panels), shared_yaxes=True,
                           subplot_titles=[f"forget facts: {category}" for category in panels])
    legend = Legend()
    for column, category in enumerate(panels, start=1):
        part = frame[frame["category"] == category]
        for model_name, group in part.groupby("model", sort=False):
            group = group.sort_values("layer")
            color = color_for(model_name)
            layers = group["layer"].tolist()
            figure.add_trace(go.Scatter(x=layers + layers[::-1], y=group["high"].tolist() + group["low"].tolist()[::-1],
                                        fill="toself", fillcolor=color, opacity=0.15, line=dict(width=0),
                                        hoverinfo="skip", showlegend=False, legendgroup=str(model_name)),
                             row=1, col=column)
            legend.add(figure, go.Scatter(x=layers, y=group["accuracy"].tolist(), mode="lines+markers",
                                          line=dict(color=color)), str(model_name), row=1, col=column)
        chance = part.drop_duplicates("layer").sort_values("layer")
        legend.add(figure, go.Scatter(x=chance["layer"].tolist(), y=chance["chance"].tolist(), mode="lines",
                                      line=dict(color=color_for("chance"), dash="dot")), "chance", row=1, col=column)
        figure.update_xaxes(title_text="layer", row=1, col=column)
    figure.update_yaxes(title_text="answer accuracy (retain-trained probe)", range=[0, 1.02], row=1, col=1)
    figure.update_layout(title="Knowledge probe: forget-fact answers decoded from the subject's residual stream")
    integer_layer_axes(figure)
    return figure

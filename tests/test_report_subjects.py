"""Per-subject MCQ in the study's tables and report: a fabricated study output (per-item MCQ tables of base, gold
and a method with two seeds, summarized by the evals' own code) through the methods-table step, checked against
numpy / scipy computed from the items; the per-subject accuracies averaged with count weights equal the overall."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mechunlearn.evals.items import summarize_items
from mechunlearn.pipeline.steps.base import InputRecord, Step, StepContext
from mechunlearn.pipeline.steps.tables import TABLE_METRICS, MethodsTableStep
from mechunlearn.report.subjects import ALL_SUBJECTS, subject_table
from mechunlearn.storage import write_json

SUBJECTS = ["anatomy"] * 7 + ["virology"] * 5 + ["college_biology"] * 4 + [""] * 2   # "" = unspecified
MODELS = {"base": ("base", "base"), "gold": ("gold", "gold"), "npo-k-s0": ("unlearned", "npo"),
          "npo-k-s1": ("unlearned", "npo")}


def _items(rng: np.random.Generator) -> pd.DataFrame:
    """One model's per-item MCQ table (the columns summarize_items reads): subjects on the forget set only."""
    forget = pd.DataFrame({"set": "forget", "subject": SUBJECTS, "correct": rng.random(len(SUBJECTS)) < 0.6})
    general = pd.DataFrame({"set": "general", "subject": "", "correct": rng.random(6) < 0.5})
    table = pd.concat([forget, general], ignore_index=True)
    return table.assign(fact_id=range(len(table)), domain=table["set"], category="", chance=0.25, format="letters",
                        source="given")


@pytest.fixture
def study_output(tmp_path):
    rng = np.random.default_rng(7)
    items, inputs, models = {}, {}, []
    for model_id, (role, label) in MODELS.items():
        items[model_id] = _items(rng)
        metrics, intervals = summarize_items({"mcq": items[model_id]})
        folder = tmp_path / "evals" / model_id
        folder.mkdir(parents=True)
        write_json(folder / "metrics.json", {**metrics, "intervals": intervals})
        inputs[model_id] = InputRecord(f"evals/{model_id}", folder, {"key": model_id, "step": "evals"})
        entry = {"id": model_id, "role": role, "label": label}
        if role == "unlearned":
            entry.update(method="npo", config_key="k", seed=int(model_id[-1]), hyper={"beta": 0.1})
        models.append(entry)
    step = Step("methods_table", "tables/methods", {"models": models, "metrics": list(TABLE_METRICS)})
    staging = tmp_path / "tables" / "methods"
    staging.mkdir(parents=True)
    outputs = MethodsTableStep().run(step, StepContext(tmp_path, {}, inputs), staging)
    return items, staging, outputs


def test_per_subject_table_against_numpy_and_weighted_to_the_overall(study_output):
    items, folder, outputs = study_output
    assert "subjects_mcq_forget.csv" in outputs["tables"] and "subjects_mcq_forget.md" in outputs["tables"]
    assert not (folder / "subjects_mcq_general.csv").exists()   # no subjects on the general set: no table
    table = pd.read_csv(folder / "subjects_mcq_forget.csv", keep_default_na=False, na_values=[""])
    subjects = ["anatomy", "college_biology", "unspecified", "virology"]
    assert list(table["subject"]) == [*subjects, ALL_SUBJECTS]
    named = np.array([subject or "unspecified" for subject in SUBJECTS])
    assert list(table["n_items"]) == [int((named == s).sum()) for s in subjects] + [len(SUBJECTS)]

    def correct(model_id: str) -> np.ndarray:
        frame = items[model_id]
        return frame[frame["set"] == "forget"]["correct"].to_numpy(dtype=float)

    rows = table.set_index("subject")
    for subject in subjects:
        for label in ("base", "gold"):
            assert rows.loc[subject, label] == pytest.approx(correct(label)[named == subject].mean(), abs=1e-12)
        seeds = [correct(model_id)[named == subject].mean() for model_id in ("npo-k-s0", "npo-k-s1")]
        half = stats.t.ppf(0.975, 1) * np.std(seeds, ddof=1) / math.sqrt(2)
        assert (rows.loc[subject, "npo"], rows.loc[subject, "npo/low"], rows.loc[subject, "npo/high"]) == \
            pytest.approx((np.mean(seeds), np.mean(seeds) - half, np.mean(seeds) + half), abs=1e-12)
    # per-subject accuracies averaged with count weights = the overall row = the accuracy over all items
    counts = rows.loc[subjects, "n_items"].to_numpy(dtype=float)
    for label in ("base", "gold", "npo"):
        weighted = float(np.sum(rows.loc[subjects, label].to_numpy() * counts) / counts.sum())
        assert weighted == pytest.approx(rows.loc[ALL_SUBJECTS, label], abs=1e-12)
    for label in ("base", "gold"):
        assert rows.loc[ALL_SUBJECTS, label] == pytest.approx(correct(label).mean(), abs=1e-12)
    assert rows.loc[ALL_SUBJECTS, "npo"] == pytest.approx(
        np.mean([correct(m).mean() for m in ("npo-k-s0", "npo-k-s1")]), abs=1e-12)


def test_one_models_interval_is_its_evals_item_interval(study_output, tmp_path):
    from mechunlearn.storage import read_json

    _, folder, _ = study_output
    rows = pd.read_csv(folder / "subjects_mcq_forget.csv").set_index("subject")
    intervals = read_json(tmp_path / "evals" / "base" / "metrics.json")["intervals"]
    assert (rows.loc["virology", "base/low"], rows.loc["virology", "base/high"]) == (
        intervals["mcq_forget_by_subject/virology"]["low"], intervals["mcq_forget_by_subject/virology"]["high"])
    assert rows.loc[ALL_SUBJECTS, "base/high"] == intervals["mcq_forget_acc"]["high"]
    markdown = (folder / "subjects_mcq_forget.md").read_text()
    base = rows.loc["virology"]
    assert f"| virology | 5 | {base['base']:.3f} [{base['base/low']:.3f}, {base['base/high']:.3f}]" in markdown
    assert "npo (2 seeds)" in markdown and f"**{ALL_SUBJECTS}**" in markdown


def test_the_report_shows_the_subject_table_next_to_the_methods_table(study_output, tmp_path):
    from mechunlearn.report.build import build_report
    from mechunlearn.report.outputs import StepOutput, StudyOutputs

    _, folder, outputs = study_output
    record = {"step": "methods_table", "outputs": outputs, "config": {}}
    html = build_report(StudyOutputs(tmp_path, [StepOutput("tables/methods", "methods_table", folder, record)]),
                        "t").render()
    assert html.index("methods/methods.md") < html.index("methods/subjects_mcq_forget.md")
    assert "<td>college_biology</td>" in html and "tables/methods/subjects_mcq_forget.csv" in html


def test_no_subjects_no_table():
    metrics = {"base": {"mcq_forget_acc": 0.5, "intervals": {}}}
    assert list(subject_table(metrics, "forget")["subject"]) == [ALL_SUBJECTS]

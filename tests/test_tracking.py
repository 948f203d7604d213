"""Optional experiment-tracker logging (mechunlearn.tracking): the study option and its errors, the flattening of
a metrics record, and a micro study whose evals are logged to MLflow's local file store and read back through
MLflow's own client, equal to each model's metrics.json."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from mechunlearn.pipeline import StudyError, parse_study
from mechunlearn.pipeline.config import merge_tables
from mechunlearn.storage import read_json
from mechunlearn.tracking import TrackingError, flat_metrics, require_backend, track


def _fake_find_spec(monkeypatch, package: str, found) -> None:
    """Make ``package`` look (not) installed to require_backend, whatever this machine has."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: found if name == package else real(name, *a))


def _study(**overrides):
    table = {"study": {"name": "t", "seeds": [0]}, "data": {"world": "micro"}, "analyses": {"names": []}}
    return parse_study(merge_tables(table, overrides))


def test_tracking_is_off_by_default_and_validated_like_every_section(monkeypatch):
    study = _study()
    assert study.tracking.backend == "none" and study.resolved()["tracking"] == {
        "backend": "none", "experiment": "", "run_prefix": ""}
    with pytest.raises(StudyError, match="unknown key 'project'; allowed keys: backend, experiment, run_prefix"):
        _study(tracking={"project": "x"})
    with pytest.raises(StudyError, match="tracking.backend = 'tensorboard' is not one of: none, mlflow, wandb"):
        _study(tracking={"backend": "tensorboard"})
    # a tracker that is not installed: one error at load, naming the pip install (the lookup is faked, so the
    # test does not depend on what this machine has)
    _fake_find_spec(monkeypatch, "wandb", None)
    with pytest.raises(StudyError, match="the wandb package is not installed: pip install wandb"):
        _study(tracking={"backend": "wandb"})
    with pytest.raises(TrackingError, match="--track"):
        require_backend("wandb", "--track")


def test_flat_metrics_keeps_the_finite_numbers_one_level_deep():
    record = {"a": 0.5, "n": 3, "collapsed": True, "name": "x", "missing": None, "nan": math.nan,
              "series": [1, 2], "intervals": {"a": {"low": 0.1}},
              "mcq_forget_by_subject": {"anatomy": 0.25, "high school?": 1.0, "bad": None}}
    assert flat_metrics(record) == {"a": 0.5, "n": 3.0, "collapsed": 1.0, "mcq_forget_by_subject/anatomy": 0.25,
                                    "mcq_forget_by_subject/high school_": 1.0}


def test_a_failing_tracker_only_warns(monkeypatch):
    import mechunlearn.tracking as tracking

    def broken(*args, **kwargs):
        raise ConnectionError("server down")
    monkeypatch.setattr(tracking, "log_run", broken)
    with pytest.warns(RuntimeWarning, match="server down"):
        assert track({"backend": "mlflow"}, "run", {}, {"a": 1.0}) is None
    assert track({"backend": "none"}, "run", {}, {"a": 1.0}) is None
    assert track(None, "run", {}, {"a": 1.0}) is None


def test_an_evals_record_read_back_through_mlflows_client_equals_metrics_json(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="pip install 'mechunlearn[tracking]' (mlflow-skinny)")
    from mechunlearn.pipeline import ModelRef, Step
    from mechunlearn.storage import write_json
    from mechunlearn.tracking import track_evals

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    metrics = {"cloze/forget/unique": 0.125, "mcq_forget_acc": 0.4, "mcq_forget_n": 5, "collapsed": False,
               "mcq_forget_by_subject": {"anatomy": 0.5, "virology": 1 / 3}, "mcq_forget_format": "letters",
               "intervals": {"mcq_forget_acc": {"mean": 0.4, "low": 0.0, "high": 0.8}}}
    write_json(tmp_path / "metrics.json", metrics)
    step = Step("evals", "evals/npo-abc-s1", {}, model_id="npo-abc-s1", key="k1")
    reference = ModelRef("npo-abc-s1", "unlearned", tmp_path, "k0", method="npo", seed=1,
                         config={"beta": 0.1, "lr": 3e-4, "layers": [1, 2], "seed": 1})
    settings = {"backend": "mlflow", "experiment": "unit", "run_prefix": "p/", "study": "s"}
    run_id = track_evals(settings, step, reference, tmp_path / "metrics.json")
    run = mlflow.MlflowClient(tracking_uri=store.as_uri()).get_run(run_id)
    assert run.info.run_name == "p/npo-abc-s1"
    assert run.data.metrics == pytest.approx({
        "cloze/forget/unique": 0.125, "mcq_forget_acc": 0.4, "mcq_forget_n": 5.0, "collapsed": 0.0,
        "mcq_forget_by_subject/anatomy": 0.5, "mcq_forget_by_subject/virology": 1 / 3}, rel=1e-15)
    assert run.data.params == {"beta": "0.1", "lr": "0.0003", "layers": "[1, 2]", "seed": "1", "method": "npo",
                               "model_id": "npo-abc-s1", "role": "unlearned"}
    assert run.data.tags["step"] == "evals/npo-abc-s1" and run.data.tags["study"] == "s"


@pytest.mark.slow  # a whole micro study (three evals, the tables, the report): ~15 s beyond the session's models
def test_a_study_logs_every_evaluated_model_to_mlflow(micro_world, micro_cache, micro_base_dir, micro_gold_dir,
                                                       tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="pip install 'mechunlearn[tracking]' (mlflow-skinny)")
    from mechunlearn.pipeline import run_study

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")   # MLflow >= 3.7 asks for it before using a file store
    world_dir = micro_world.save(tmp_path / "world")
    study = parse_study({
        "study": {"name": "micro", "out": str(tmp_path / "out"), "cache": str(micro_cache), "seeds": [0],
                  "device": "cpu", "threads": 1},
        "data": {"world": str(world_dir)}, "methods": {"npo": {"max_steps": 1, "batch_size": 8, "beta": 0.2}},
        "evals": {"max_texts": 8}, "analyses": {"names": []},
        "tracking": {"backend": "mlflow", "experiment": "micro-tracked", "run_prefix": "t-"}})
    result = run_study(study, progress=False, log=lambda line: None)

    client = mlflow.MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("micro-tracked")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    evals = {step.model_id: step.id for step in result.plan.by_kind("evals")}
    assert sorted(runs) == sorted(f"t-{model_id}" for model_id in evals)
    for model_id, step_id in evals.items():
        run = runs[f"t-{model_id}"]
        metrics = read_json(result.out / step_id / "metrics.json")
        expected = {key: float(value) for key, value in metrics.items()
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
        logged = run.data.metrics
        assert expected and {key: logged.get(key) for key in expected} == pytest.approx(expected, rel=1e-12)
        assert run.data.tags["step"] == step_id and run.data.params["model_id"] == model_id
    unlearned = next(model_id for model_id in evals if model_id.startswith("npo-"))
    params = runs[f"t-{unlearned}"].data.params
    assert params["method"] == "npo" and params["beta"] == "0.2" and params["seed"] == "0"


def test_unlearn_cli_track_logs_the_run_json_metrics(tmp_path, toy_model_dir, toy_texts, capsys, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="pip install 'mechunlearn[tracking]' (mlflow-skinny)")
    from mechunlearn.cli import main

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    forget_texts, retain_texts = toy_texts
    (tmp_path / "f.txt").write_text("\n".join(forget_texts))
    (tmp_path / "r.txt").write_text("\n".join(retain_texts))
    arguments = ["unlearn", "ga", "--model", str(toy_model_dir), "--forget", str(tmp_path / "f.txt"), "--retain",
                 str(tmp_path / "r.txt"), "--out", str(tmp_path / "out"), "--max-steps", "1", "--quiet",
                 "--device", "cpu"]
    assert main([*arguments, "--track", "mlflow", "--track-experiment", "cli"]) == 0, capsys.readouterr().err
    run_dir = json.loads(capsys.readouterr().out)["run"]
    record = read_json(f"{run_dir}/run.json")
    client = mlflow.MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    assert run.data.metrics == pytest.approx(flat_metrics(record["metrics"]), rel=1e-12)
    assert run.data.metrics["forget_nll"] == pytest.approx(record["metrics"]["forget_nll"], rel=1e-12)
    assert run.data.params["method"] == "ga" and run.data.params["max_steps"] == "1"
    # a tracker that is not installed is refused before any training
    _fake_find_spec(monkeypatch, "wandb", None)
    assert main([*arguments, "--out", str(tmp_path / "out2"), "--track", "wandb"]) == 2
    assert "pip install wandb" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_wandb_gets_init_with_wandb_mode_then_log_and_finish(monkeypatch):
    """W&B's calls, against a stand-in module (wandb itself is not a test dependency): the mode comes from
    WANDB_MODE, the metrics go to run.log, and the run is finished even when logging raises."""
    import sys
    import types

    calls = []

    class Run:
        id = "r1"
        summary = {}

        def log(self, metrics):
            calls.append(("log", metrics))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    _fake_find_spec(monkeypatch, "wandb", object())
    monkeypatch.setenv("WANDB_MODE", "offline")
    settings = {"backend": "wandb", "experiment": "proj", "run_prefix": "x-"}
    run_id = track(settings, "npo-k-s0", {"beta": 0.1, "layers": [1]}, {"a": 0.5, "b": None},
                   tags={"role": "unlearned"})
    assert run_id == "r1"
    assert calls == [("init", {"project": "proj", "name": "x-npo-k-s0", "mode": "offline",
                               "config": {"beta": 0.1, "layers": "[1]", "mechunlearn.role": "unlearned"}}),
                     ("log", {"a": 0.5}), ("finish",)]

"""The study end to end on the micro world: layout and records, the methods table against numpy / scipy, what a
rerun skips and what a change reruns, SIGKILL then resume, and the same tables under Ray and submitit."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mechunlearn.pipeline import ModelRef, StepFailed, load_study, parse_study, run_study
from mechunlearn.pipeline.config import merge_tables
from mechunlearn.storage import config_digest, read_json
from mechunlearn.pipeline.steps.base import get_step_kind

TABLES = ("methods.csv", "runs.csv", "methods.md", "runs.md")


@pytest.fixture(scope="module")
def world_dir(micro_world, tmp_path_factory):
    return micro_world.save(tmp_path_factory.mktemp("pipeline-world") / "micro")


@pytest.fixture(scope="module")
def make_study(world_dir, micro_cache, micro_base_dir, micro_gold_dir):
    """The shipped micro study on the session's micro world, its reference models from the session cache."""
    def make(out, **overrides):
        given = {"data": {"world": str(world_dir)}, "study": {"out": str(out), "cache": str(micro_cache)}}
        return load_study("micro", overrides=merge_tables(given, overrides))
    return make


@pytest.fixture(scope="module")
def serial_run(make_study, tmp_path_factory):
    lines: list[str] = []
    result = run_study(make_study(tmp_path_factory.mktemp("serial") / "out"), progress=False, log=lines.append)
    return result, lines


def tables_of(out: Path) -> dict[str, bytes]:
    return {name: (out / "tables" / "methods" / name).read_bytes() for name in TABLES}


def copy_out(result, destination: Path) -> Path:
    shutil.copytree(result.out, destination, ignore=shutil.ignore_patterns(".lock"))
    return destination


# ------------------------------------------------------------------------------------------------- one run
def test_serial_study_writes_the_layout_and_records(serial_run):
    result, lines = serial_run
    out = result.out
    npo = sorted(step.id for step in result.plan.by_kind("unlearned") if step.config["method"] == "npo")
    assert len(npo) == 2 and len(result.plan.by_kind("unlearned")) == 3
    assert set(result.status.values()) == {"ran"} and len(result.status) == 17
    assert {step.kind for step in result.plan} == {"data", "reference", "unlearned", "evals", "diagnostics",
                                                   "methods_table", "signature_table", "report", "figures"}
    for step in result.plan:
        record = read_json(out / step.id / "step.json")
        assert record["key"] == step.key and record["step"] == step.kind
        inputs = {name: entry["key"] for name, entry in record["inputs"].items()}
        assert inputs == {name: result.plan.steps[source].key for name, source in step.inputs.items()}
        if step.kind != "checkpoint":  # the contract's key: kind, version, config, inputs' keys
            version = get_step_kind(step.kind).version
            assert step.key == config_digest({"step": step.kind, "version": version, "config": record["config"],
                                              "inputs": inputs})
        environment = record["environment"]
        for field in ("versions", "python", "device", "dtype", "torch_threads", "gpu_count", "seeds", "hostname"):
            assert field in environment, (step.id, field)
        assert environment["torch_threads"] == 1 and environment["device"] == "cpu"
        if step.kind in ("unlearned", "evals", "diagnostics"):
            assert environment["placement"] == {"n_devices": 1, "blocks": {"cpu": [0, 1]}}
        if step.kind == "unlearned":
            assert environment["seeds"] == [step.config["seed"]]
            assert (out / step.id / "run.json").is_file() and (out / step.id / "model" / "config.json").is_file()
    assert (out / "diagnostics" / "base__to__gold" / "manifest.json").is_file()
    assert (out / "diagnostics" / f"base__to__{npo[0].split('/')[2]}-{npo[0].split('/')[3]}-s0" /
            "weight_comparison" / "summary.json").is_file()
    manifest = read_json(out / "manifest.json")
    assert manifest["status"] == "done" and manifest["study"] == "micro" and len(manifest["steps"]) == 17
    assert {entry["status"] for entry in manifest["steps"]} == {"ran"}
    assert all(isinstance(entry["wall_s"], float) for entry in manifest["steps"])
    evals = next(entry for entry in manifest["steps"] if entry["id"] == "evals/base")
    assert evals["environment"]["placement"] == {"n_devices": 1, "blocks": {"cpu": [0, 1]}}
    assert evals["environment"]["device"] == "cpu" and evals["environment"]["gpu_count"] == 0
    for field in ("versions", "device", "dtype", "torch_threads", "gpu_count", "seeds"):
        assert field in manifest["environment"]
    assert read_json(out / "study.resolved.json")["study"]["seeds"] == [0, 1]
    assert (out / "study.toml").read_text().startswith("# The micro study")
    assert any(line.startswith("[17/17] done") for line in lines) and "Outputs in" in lines[-7]
    assert lines[-1].strip() == "report/index.html"
    assert all((out / "tables" / "methods" / name).is_file() for name in TABLES)


def test_model_refs_load_the_models_the_steps_made(serial_run):
    from mechunlearn.storage import model_digest

    out = serial_run[0].out
    base = ModelRef.from_record(out / "models" / "base", read_json(out / "models" / "base" / "step.json"))
    folder = next((out / "models" / "unlearned" / "npo").glob("*/s0"))
    unlearned = ModelRef.from_record(folder, read_json(folder / "step.json"))
    assert (base.role, unlearned.role, unlearned.method, unlearned.seed) == ("base", "unlearned", "npo", 0)
    base_model, unlearned_model = base.load(device="cpu"), unlearned.load(device="cpu")
    assert unlearned_model.tokenizer is not None
    assert model_digest(base_model) != model_digest(unlearned_model)  # one step of NPO moved the weights
    cached = Path(read_json(out / "models" / "base" / "step.json")["outputs"]["cache"])
    assert (base.path / "model.safetensors").read_bytes() == (cached / "model.safetensors").read_bytes()


def test_methods_table_is_the_seed_mean_with_a_t_interval(serial_run):
    out = serial_run[0].out
    table = pd.read_csv(out / "tables" / "methods" / "methods.csv")
    metrics = {path.parent.name: read_json(path) for path in (out / "evals").glob("*/metrics.json")}
    npo_ids = sorted(name for name in metrics if name.startswith("npo-"))
    row = table[table["model"] == "npo"].iloc[0]
    assert row["n_seeds"] == 2
    for key in ("truth_ratio/forget/unique", "familiarity_completion", "retain_nll", "cloze/retain/all"):
        values = np.array([metrics[name][key] for name in npo_ids], dtype=float)
        mean = values.mean()
        half = stats.t.ppf(0.975, df=1) * values.std(ddof=1) / math.sqrt(2)
        assert row[key] == pytest.approx(mean, rel=1e-12)
        upper = math.inf if key.endswith("_nll") else 1.0  # bounds clipped to the metric's range
        assert row[f"{key}/low"] == pytest.approx(max(mean - half, 0.0), rel=1e-9, abs=1e-12)
        assert row[f"{key}/high"] == pytest.approx(min(mean + half, upper), rel=1e-9, abs=1e-12)
    base = table[table["model"] == "base"].iloc[0]
    assert base["cloze/forget/unique"] == pytest.approx(metrics["base"]["cloze/forget/unique"])
    assert math.isnan(base["cloze/forget/unique/low"])  # one model: no spread over seeds
    # the ranking rule, by hand: retain >= 0.9 x base first, then by forget-unique cloze, then by name
    base_retain = metrics["base"]["cloze/retain/all"]
    configs = table[table["role"] == "unlearned"]
    expected = sorted(configs.to_dict("records"), key=lambda r: (not r["cloze/retain/all"] >= 0.9 * base_retain,
                                                                 r["cloze/forget/unique"], r["model"]))
    assert list(configs.sort_values("rank")["model"]) == [r["model"] for r in expected]
    assert list(table["model"][:2]) == ["gold", "base"]
    runs = pd.read_csv(out / "tables" / "methods" / "runs.csv")
    assert sorted(runs["model"]) == sorted(name for name in metrics if name not in ("base", "gold"))
    for record in runs.to_dict("records"):
        assert record["retain_nll"] == pytest.approx(metrics[record["model"]]["retain_nll"])
        assert record["rank"] == int(table[table["model"] == record["model"].rsplit("-", 2)[0]]["rank"].iloc[0])


# -------------------------------------------------------------------------------------- skip and rerun rules
def test_rerun_skips_every_step(serial_run, make_study, capsys):
    result = serial_run[0]
    again = run_study(make_study(result.out), progress=False, log=lambda line: None)
    assert again.ran == [] and set(again.status.values()) == {"skipped"}
    assert {entry["status"] for entry in read_json(result.out / "manifest.json")["steps"]} == {"skipped"}
    from mechunlearn.cli import main

    given = make_study(result.out)
    assert main(["run", "micro", "--plan", "--out", str(result.out), "--set", f"data.world={given.data.world}",
                 "--set", f"study.cache={given.study.cache}"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("17 steps, 0 to run") and all(line.startswith("done") for line in printed[:-1])


def test_a_grid_and_a_changed_hyperparameter_rerun_exactly_what_depends_on_them(serial_run, make_study, tmp_path):
    result = serial_run[0]
    out = copy_out(result, tmp_path / "out")
    old_npo = {step.model_id for step in result.plan.by_kind("unlearned") if step.config["method"] == "npo"}
    # the world preset's beta is 0.05: the grid keeps that configuration (same key) and adds beta = 0.1
    grid = run_study(make_study(out, methods={"npo": {"beta": [0.05, 0.1]}}), progress=False, log=lambda line: None)
    new_npo = {step.model_id for step in grid.plan.by_kind("unlearned") if step.config["method"] == "npo"} - old_npo
    assert len(new_npo) == 2 and all(step_id.endswith(("-s0", "-s1")) for step_id in new_npo)
    expected = {step.id for step in grid.plan if step.model_id in new_npo} | {"tables/methods", "tables/signature",
                                                                              "report", "figures"}
    assert set(grid.ran) == expected
    assert {step.kind for step in grid.plan if step.id in expected} == {"unlearned", "evals", "diagnostics",
                                                                         "methods_table", "signature_table",
                                                                         "report", "figures"}
    runs, serial_runs = (pd.read_csv(folder / "tables" / "methods" / "runs.csv") for folder in (out, result.out))
    columns = [c for c in serial_runs.columns if c != "rank"]  # the grid adds an hp/beta column
    kept = runs[runs["model"].isin(old_npo)][columns].sort_values("model").reset_index(drop=True)
    before = serial_runs[serial_runs["model"].isin(old_npo)][columns].sort_values("model")
    pd.testing.assert_frame_equal(kept, before.reset_index(drop=True))
    assert len(runs) == 5
    again = run_study(make_study(out, methods={"npo": {"beta": [0.05, 0.1]}}), progress=False, log=lambda line: None)
    assert again.ran == []
    changed = run_study(make_study(out, methods={"npo": {"beta": [0.05, 0.1]}, "ga_simple": {"lr": 1e-3}}),
                        progress=False, log=lambda line: None)
    ga = [step for step in changed.plan.by_kind("unlearned") if step.config["method"] == "ga_simple"]
    assert set(changed.ran) == {ga[0].id, f"evals/{ga[0].model_id}", "tables/methods", "report", "figures"}


def test_a_study_without_methods_tabulates_the_reference_models(serial_run, world_dir, micro_cache, tmp_path):
    out = copy_out(serial_run[0], tmp_path / "out")
    table = {"study": {"name": "micro", "out": str(out), "seeds": [0, 1], "device": "cpu", "threads": 1,
                       "cache": str(micro_cache)}, "data": {"world": str(world_dir)}, "evals": {"max_texts": 16},
             "analyses": {"names": ["weight_comparison"]}}
    result = run_study(parse_study(table), progress=False, log=lambda line: None)
    # base, gold, their evals and base -> gold: the same keys; the tables and what reads them change
    assert result.ran == ["tables/methods", "tables/signature", "report", "figures"]
    methods = pd.read_csv(out / "tables" / "methods" / "methods.csv")
    assert list(methods["model"]) == ["gold", "base"] and methods["rank"].isna().all()
    runs = pd.read_csv(out / "tables" / "methods" / "runs.csv")
    assert runs.empty


def test_force_reruns_a_stage_and_what_it_feeds(serial_run, make_study, tmp_path):
    out = copy_out(serial_run[0], tmp_path / "out")
    forced = run_study(make_study(out), force=["diagnostics"], progress=False, log=lambda line: None)
    assert sorted(forced.ran) == sorted([step.id for step in forced.plan.by_kind("diagnostics")]
                                        + ["tables/signature", "report", "figures"])
    assert tables_of(out) == tables_of(serial_run[0].out)


def test_a_failing_step_is_named_and_the_fixed_study_resumes(micro_world, micro_base_dir, micro_cache, tmp_path):
    forget = tmp_path / "forget.txt"
    forget.write_text("\n".join(micro_world.forget_texts()[:12]) + "\n")
    table = {"study": {"name": "files", "out": str(tmp_path / "out"), "seeds": [0], "threads": 1, "device": "cpu",
                       "cache": str(micro_cache)},
             "data": {"forget": str(forget)}, "models": {"base": str(micro_base_dir), "gold": "none"},
             "methods": {"npo": {"max_steps": 1, "lr": 1e-3}}, "evals": {"max_texts": 8},
             "analyses": {"names": ["weight_comparison"]}}
    with pytest.raises(StepFailed) as caught:
        run_study(parse_study(table), progress=False, log=lambda line: None)
    assert caught.value.step_id.startswith("models/unlearned/npo/") and "needs retain texts" in str(caught.value)
    manifest = read_json(tmp_path / "out" / "manifest.json")
    status = {entry["id"]: entry["status"] for entry in manifest["steps"]}
    assert manifest["status"] == "failed" and status["models/base"] == "ran" and status["data"] == "ran"
    assert status[caught.value.step_id] == "failed" and status["tables/methods"] == "pending"
    assert read_json(tmp_path / "out" / "models" / "base" / "step.json")["outputs"]["model"]["path"] == \
        str(Path(micro_base_dir).absolute())
    retain = tmp_path / "retain.txt"
    retain.write_text("\n".join(micro_world.retain_texts()[:24]) + "\n")
    fixed = run_study(parse_study(merge_tables(table, {"data": {"retain": str(retain)}})), progress=False,
                      log=lambda line: None)
    assert "models/base" in fixed.skipped  # the checkpoint's key is its bytes: unchanged
    assert "data" in fixed.ran and fixed.status["tables/methods"] == "ran"
    metrics = read_json(tmp_path / "out" / "evals" / "base" / "metrics.json")
    assert metrics["forget_nll"] > 0 and metrics.get("cloze/forget/unique") is None


# ------------------------------------------------------------------------------------ SIGKILL, Ray, submitit
def test_a_study_killed_with_sigkill_resumes_to_the_same_tables(serial_run, world_dir, micro_cache, make_study,
                                                                 tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mechunlearn.cli", "run", "micro", "--out", str(out), "--quiet",
               "--set", f"data.world={world_dir}", "--set", f"study.cache={micro_cache}"]
    with open(tmp_path / "log.txt", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("models/unlearned/*/*/s*/step.json")):
            assert process.poll() is None, (tmp_path / "log.txt").read_text()
            assert time.monotonic() < deadline, "the study did not reach its first unlearned model"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "tables" / "methods").exists()  # killed before the end
    assert read_json(out / "manifest.json")["status"] == "running"
    for folder in out.glob("models/unlearned/*/*/s*"):  # a step folder is complete or absent, never half-written
        assert (folder / "step.json").is_file()
    resumed = run_study(make_study(out), progress=False, log=lambda line: None)
    assert {"data", "models/base", "models/gold"} <= set(resumed.skipped) and resumed.ran
    assert tables_of(out) == tables_of(serial_run[0].out)
    leftovers = [path for path in out.rglob(".*") if path.name != ".lock"]
    assert leftovers == []


def test_ray_with_two_workers_gives_the_same_tables(serial_run, make_study, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a real local cluster: 2 worker slots
    try:
        result = run_study(make_study(tmp_path / "out", study={"executor": "ray"}), progress=False,
                           log=lambda line: None)
    finally:
        ray.shutdown()
    assert set(result.status.values()) == {"ran"}
    assert tables_of(result.out) == tables_of(serial_run[0].out)
    records = [read_json(result.out / step_id / "step.json") for step_id in result.ran]
    workers = {record["environment"]["pid"] for record in records}
    assert len(workers) >= 2 and os.getpid() not in workers
    assert {record["environment"]["executor"] for record in records} == {"ray"}


def test_submitit_local_executor_runs_steps_in_jobs(serial_run, make_study, tmp_path):
    pytest.importorskip("submitit")
    out = copy_out(serial_run[0], tmp_path / "out")
    study = make_study(out, study={"executor": "submitit"}, submitit={"cluster": "local", "timeout_min": 10})
    result = run_study(study, force=["tables"], progress=False, log=lambda line: None)
    assert result.ran == ["tables/methods", "tables/signature", "report", "figures"]
    record = read_json(out / "tables" / "methods" / "step.json")
    assert record["environment"]["executor"] == "submitit" and record["environment"]["pid"] != os.getpid()
    assert tables_of(out) == tables_of(serial_run[0].out)
    assert list((out / ".submitit").iterdir())  # the job's folder (logs, pickles)

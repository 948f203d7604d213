"""The attacks in a study: one step per (attack, model), the robustness table from their saved results (checked
against the per-fact CSVs with pandas), what a rerun skips, a SIGKILL during the attacks then resume, the
``[attacks]`` keys' validation."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mechunlearn.pipeline import StudyError, load_study, parse_study, run_study
from mechunlearn.pipeline.config import merge_tables
from mechunlearn.pipeline.run import plan_study, step_status
from mechunlearn.storage import read_json

# The smallest study with attacks: one method, one seed, two attacks with tiny budgets (the plumbing, not the
# attacks: their own tests check what they compute). A file, so the SIGKILL test's subprocess runs the same.
STUDY = """
[study]
name = "micro-attacks"
seeds = [0]
device = "cpu"
threads = 1
[data]
world = "{world}"
[methods.npo]
max_steps = 1
batch_size = 8
[evals]
max_texts = 16
[analyses]
names = ["weight_comparison"]
[attacks.relearn]
lrs = [1e-3]
k_folds = 2
eval_steps = [0, 1, 2]
curve_metrics = ["cloze"]
[attacks.direction_ablation]
max_texts = 8
single_layers = false
"""


@pytest.fixture(scope="module")
def make_study(micro_world, micro_cache, micro_base_dir, micro_gold_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks-study")
    world_dir = micro_world.save(root / "micro")
    path = root / "study.toml"
    path.write_text(STUDY.format(world=world_dir))

    def make(out, **overrides):
        given = {"study": {"out": str(out), "cache": str(micro_cache)}}
        return load_study(path, overrides=merge_tables(given, overrides))
    make.path = path
    return make


@pytest.fixture(scope="module")
def attacked(make_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("attacked") / "out"
    return run_study(make_study(out), progress=False, log=lambda line: None)


def model_of(result, method: str) -> str:
    return next(step.model_id for step in result.plan.by_kind("unlearned") if step.config["method"] == method)


def test_every_attack_runs_on_base_gold_and_the_unlearned_models(attacked):
    out = attacked.out
    npo = model_of(attacked, "npo")
    attack_steps = {step.id: step for step in attacked.plan.by_kind("attack")}
    assert set(attack_steps) == {f"attacks/{attack}/{model}" for attack in ("relearn", "direction_ablation")
                                 for model in ("base", "gold", npo)}
    for step_id, step in attack_steps.items():
        record = read_json(out / step_id / "step.json")
        assert record["key"] == step.key and record["model_id"] == step.model_id and record["cpu_s"] > 0
        assert (out / step_id / "attack.json").is_file() and (out / step_id / "facts.csv").is_file()
        assert ("base" in step.inputs) == step_id.startswith("attacks/direction_ablation/")
        if step_id.startswith("attacks/relearn/"):  # the key holds the resolved config, defaults filled in
            assert step.config["config"]["lrs"] == [1e-3] and step.config["config"]["batch_size"] == 4
    assert attacked.status["tables/robustness"] == "ran"
    resolved = read_json(out / "study.resolved.json")["attacks"]
    assert resolved["seeds"] == [] and resolved["relearn"]["batch_size"] == 4


def test_attacks_methods_and_seeds_choose_the_unlearned_models(make_study, tmp_path):
    study = make_study(tmp_path / "out", study={"seeds": [0, 1]}, methods={"ga_simple": {"max_steps": 1}},
                       attacks={"seeds": [1], "methods": ["npo"]})
    plan = plan_study(study)
    npo_s1 = next(step.model_id for step in plan.by_kind("unlearned")
                  if step.config["method"] == "npo" and step.config["seed"] == 1)
    assert {step.model_id for step in plan.by_kind("attack")} == {"base", "gold", npo_s1}
    assert set(plan.steps["tables/robustness"].inputs) == {step.id for step in plan.by_kind("attack")}


def test_robustness_table_is_the_per_fact_means_and_their_difference_to_gold(attacked):
    out = attacked.out
    table = pd.read_csv(out / "tables" / "robustness" / "robustness.csv")
    assert (out / "tables" / "robustness" / "robustness.md").read_text().startswith("| model | attack |")
    npo = model_of(attacked, "npo")
    assert list(table[table["attack"] == "relearn"]["model"]) == ["base", "gold", npo]
    for attack in ("relearn", "direction_ablation"):
        facts = {model: pd.read_csv(out / "attacks" / attack / model / "facts.csv") for model in ("gold", npo)}
        unique = {model: frame[(frame["domain"] == "forget") & (frame["category"] == "unique")]
                  for model, frame in facts.items()}
        for model in facts:
            row = table[(table["attack"] == attack) & (table["model"] == model)].iloc[0]
            assert row["unique"] == pytest.approx(unique[model]["after"].astype(float).mean())
            assert row["unique_n"] == len(unique[model])
            paired = unique[model].merge(unique["gold"], on="fact_id")
            assert row["unique_vs_gold"] == pytest.approx((paired["after_x"].astype(float)
                                                           - paired["after_y"].astype(float)).mean())
    before = table[table["attack"] == "none"].set_index("model")["unique"]
    assert before["base"] > before["gold"]  # base knows the forget target, gold never saw it


def test_report_and_figures_show_the_robustness_table_and_a_rerun_skips_everything(attacked, make_study):
    html = (attacked.out / "report" / "index.html").read_text(encoding="utf-8")
    assert ">Robustness</h2>" in html and "<td>direction_ablation</td>" in html
    assert "relearn: held-out forget-unique facts" in html
    report_inputs = read_json(attacked.out / "report" / "step.json")["inputs"]
    assert "tables/robustness" in report_inputs and "attacks/relearn/gold" in report_inputs
    figures = read_json(attacked.out / "figures" / "index.json")
    assert any("relearn" in name for name in figures["figures"]), figures
    again = run_study(make_study(attacked.out), progress=False, log=lambda line: None)
    assert again.ran == []


def test_a_changed_attack_budget_reruns_that_attack_and_what_reads_it(attacked, make_study):
    # the same budget spelt otherwise (0.001 for 1e-3, a default given) is the same key
    same = plan_study(make_study(attacked.out, attacks={"relearn": {"lrs": [0.001], "batch_size": 4}}))
    assert set(step_status(same, attacked.out).values()) == {"done"}
    changed = plan_study(make_study(attacked.out, attacks={"direction_ablation": {"max_texts": 6}}))
    todo = {step_id for step_id, state in step_status(changed, attacked.out).items() if state == "todo"}
    assert todo == {step.id for step in changed.by_kind("attack") if "direction_ablation" in step.id} | {
        "tables/robustness", "report", "figures"}


def test_killed_during_the_attacks_resumes_to_the_same_robustness_table(attacked, make_study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(attacked.out, out, ignore=shutil.ignore_patterns(".lock"))
    for step in attacked.plan:  # back to a study whose attacks have not run yet
        if step.kind == "attack" or step.id in ("tables/robustness", "report", "figures"):
            shutil.rmtree(out / step.id)
    given = make_study(out)
    command = [sys.executable, "-m", "mechunlearn.cli", "run", str(make_study.path), "--out", str(out), "--quiet",
               "--set", f"study.cache={given.study.cache}"]
    with open(tmp_path / "log.txt", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("attacks/*/*/step.json")):
            assert process.poll() is None, (tmp_path / "log.txt").read_text()
            assert time.monotonic() < deadline, "the study did not reach its first attack"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert not (out / "tables" / "robustness").exists()
    resumed = run_study(given, progress=False, log=lambda line: None)
    assert {"models/base", "models/gold", f"evals/{model_of(attacked, 'npo')}"} <= set(resumed.skipped)
    assert resumed.status["tables/robustness"] == "ran"
    for name in ("robustness.csv", "robustness.md"):
        assert (out / "tables" / "robustness" / name).read_bytes() == \
            (attacked.out / "tables" / "robustness" / name).read_bytes()
    assert [path for path in out.rglob(".*") if path.name != ".lock"] == []


# ---------------------------------------------------------------------------------------------------- the demo
def test_the_default_study_attacks_seed_zero_with_every_attack():
    study = load_study("default")
    from mechunlearn.attacks import available_attacks

    assert list(study.attacks) == available_attacks() and study.attack_scope.seeds == [0]
    assert set(study.methods) >= {"ga", "npo", "rmu", "cb_lat", "whp"} and study.study.seeds == [0, 1, 2]


def test_demo_runs_the_default_study_and_prints_the_table_and_the_report(attacked, make_study, tmp_path,
                                                                          monkeypatch, capsys):
    from mechunlearn.cli import demo, main

    out = tmp_path / "out"
    shutil.copytree(attacked.out, out, ignore=shutil.ignore_patterns(".lock"))
    monkeypatch.setattr(demo, "DEMO_STUDY", str(make_study.path))  # the micro study stands in for the default
    monkeypatch.setenv("MECHUNLEARN_CACHE", str(make_study(out).study.cache))
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(attacked.plan)} steps, 0 to run" in printed  # everything done: the second run is instant
    methods = (out / "tables" / "methods" / "methods.md").read_text().rstrip()
    assert methods in printed
    assert printed.rstrip().splitlines()[-1].startswith(f"The report: {out / 'report' / 'index.html'}")


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("attacks, words", [
    ({"nonsense": {}}, r"unknown attack 'nonsense'; known: relearn"),
    ({"relearn": {"k_fold": 2}}, r"attacks.relearn.*unknown setting 'k_fold'"),
    ({"relearn": {"eval_steps": [0, 1], "lrs": []}}, r"attacks.relearn"),
    ({"seed": [0], "relearn": {}}, r"\[attacks\] has an unknown key 'seed'; allowed keys: methods, seeds"),
    ({"seeds": [7], "relearn": {}}, r"attacks.seeds names seed 7"),
    ({"methods": ["rmu"], "relearn": {}}, r"attacks.methods names 'rmu'"),
])
def test_bad_attacks_section_is_one_clear_error(attacks, words):
    with pytest.raises(StudyError, match=words):
        parse_study({"data": {"world": "micro"}, "methods": {"npo": {}}, "attacks": attacks})


def test_attacks_need_a_gold_model():
    with pytest.raises(StudyError, match=r"gold.*none"):
        parse_study({"data": {"forget": "f.txt", "mcq_forget": "q.jsonl"}, "models": {"base": "b", "gold": "none"},
                     "attacks": {"quantize": {}}})

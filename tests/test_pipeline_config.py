"""The study file: validation, method grids and config keys, bad input; no model is trained here."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

from mechunlearn.pipeline import GRID_LIMIT, StudyError, expand_methods, load_study, parse_study, run_study
from mechunlearn.pipeline.config import parse_assignment, shipped_studies
from mechunlearn.pipeline.run import plan_study, step_status

REPO = Path(__file__).resolve().parents[1]


def study_of(**sections):
    return parse_study({"data": {"world": "micro"}, **sections})


# ------------------------------------------------------------------------------------------- shipped studies
def test_shipped_studies_are_the_examples_and_all_examples_load():
    shipped = shipped_studies()
    assert {"default", "micro"} <= set(shipped)
    for name, path in shipped.items():
        assert path.read_bytes() == (REPO / "studies" / f"{name}.toml").read_bytes(), \
            f"mechunlearn/studies/{name}.toml differs from studies/{name}.toml"
    examples = sorted((REPO / "studies").glob("*.toml"))
    assert {p.stem for p in examples} >= {"default", "full", "micro", "deep-ignorance"}
    for path in examples:
        study = load_study(path)
        if study.study.name != path.stem:
            # a study that adds to another one's runs (the methods study's retune and robustness table) takes its
            # name and output directory, so that the pipeline reuses those runs instead of training them again
            other = load_study(REPO / "studies" / f"{study.study.name}.toml")
            assert other.study.out == study.study.out and other.study.seeds == study.study.seeds, path.name
    assert len(load_study(REPO / "studies" / "full.toml").methods) == 13
    real = load_study(REPO / "studies" / "deep-ignorance.toml")
    assert real.world_spec is None and real.models.base.startswith("EleutherAI/") and real.study.device == "cuda"


def test_defaults_are_filled_in():
    study = parse_study({})
    resolved = study.resolved()
    assert resolved["study"]["seeds"] == [0, 1, 2] and resolved["study"]["executor"] == "serial"
    assert resolved["data"]["world"] == "default" and resolved["models"]["gold"] == "world"
    assert study.out == Path("outputs/study").absolute()


# ----------------------------------------------------------------------------------------- validation errors
@pytest.mark.parametrize("table, words", [
    ({"studdy": {}}, ["[studdy]", "allowed sections", "study", "methods"]),
    ({"study": {"nmae": "x"}}, ["[study]", "'nmae'", "allowed keys", "name", "executor"]),
    ({"study": {"seeds": "0"}}, ["study.seeds", "a list of an integer", "'0'"]),
    ({"study": {"seeds": [0, True]}}, ["study.seeds[1]", "an integer"]),
    ({"study": {"threads": 1.5}}, ["study.threads", "an integer"]),
    ({"study": {"executor": "dask"}}, ["study.executor", "serial, ray, submitit"]),
    ({"study": {"dtype": "fp8"}}, ["study.dtype", "bf16"]),
    ({"study": {"seeds": []}}, ["study.seeds", "at least one seed"]),
    ({"models": {"native": "yes"}}, ["models.native", "true or false"]),
    ({"methods": {"npoo": {}}}, ["methods.npoo", "unknown unlearning method", "npo"]),
    ({"methods": {"npo": {"betta": 0.1}}}, ["methods.npo", "'betta'", "beta", "lr"]),
    ({"methods": {"npo": {"beta": "high"}}}, ["methods.npo", "beta", "'high'"]),
    ({"methods": {"npo": {"seed": 1}}}, ["methods.npo", "seeds"]),
    ({"methods": {"npo": {"preset": "big"}}}, ["methods.npo.preset", "world", "none"]),
    ({"analyses": {"names": ["knowledge_probbe"]}}, ["knowledge_probbe", "knowledge_probe", "linear_probes"]),
    ({"analyses": {"methods": ["rmu"]}, "methods": {"npo": {}}}, ["analyses.methods", "rmu"]),
    ({"data": {"forget": "f.txt", "world": "micro"}}, ["[data]", "both"]),
    ({"data": {"forget": "f.txt"}}, ["[models]", "needs a world"]),
    ({"models": {"base": "/ckpt", "gold": "world"}}, ["models.gold", "tokenizer"]),
    ({"data": {"forget": "f.txt"}, "models": {"base": "/ckpt", "gold": "none"},
      "analyses": {"names": ["logit_lens"]}}, ["logit_lens", "data.mcq_forget"]),
])
def test_bad_study_is_one_clear_error(table, words):
    with pytest.raises(StudyError) as caught:
        parse_study(table)
    message = str(caught.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname = 1")
    with pytest.raises(StudyError, match="not valid TOML"):
        load_study(bad)
    with pytest.raises(StudyError, match="does not exist.*default"):
        load_study(tmp_path / "nope.toml")


def test_set_assignments():
    assert parse_assignment("methods.npo.beta=[0.05, 0.1]") == {"methods": {"npo": {"beta": [0.05, 0.1]}}}
    assert parse_assignment("study.out=/tmp/x y") == {"study": {"out": "/tmp/x y"}}
    assert parse_assignment("study.threads=2") == {"study": {"threads": 2}}
    with pytest.raises(StudyError, match="section.key=value"):
        parse_assignment("study.out")
    study = load_study("micro", overrides={"study": {"seeds": [3]}, "methods": {"npo": {"beta": 0.2}}})
    assert study.study.seeds == [3] and study.methods["npo"].hyper["beta"] == 0.2
    assert study.methods["ga_simple"].hyper["max_steps"] == 1  # the rest of the file stays


# ----------------------------------------------------------------------------------------------------- grids
def test_grid_is_the_product_with_unique_keys():
    study = study_of(study={"seeds": [0, 1]},
                     methods={"npo": {"lr": [1e-4, 3e-4, 1e-3], "beta": [0.05, 0.1], "epochs": 2},
                              "rmu": {"layer_ids": [[1], [1, 2]]}, "ga": {}})
    variants = expand_methods(study)
    npo = [v for v in variants if v.method == "npo"]
    expected = list(itertools.product([1e-4, 3e-4, 1e-3], [0.05, 0.1]))
    assert [(v.config["lr"], v.config["beta"]) for v in npo] == expected
    assert all(v.config["epochs"] == 2 for v in npo) and npo[0].grid_keys == ("lr", "beta")
    rmu = [v for v in variants if v.method == "rmu"]
    assert [tuple(v.config["layer_ids"]) for v in rmu] == [(1,), (1, 2)]
    keys = [v.config_key for v in variants]
    assert len(keys) == len(set(keys)) == 6 + 2 + 1
    assert [v.label for v in variants if v.method == "ga"] == ["ga"]
    assert all(v.label == f"npo-{v.config_key}" for v in npo)
    plan = plan_study(study)
    unlearned = plan.by_kind("unlearned")
    assert len(unlearned) == 9 * 2 and len({s.key for s in unlearned}) == 18
    assert {s.model_id for s in unlearned} == {v.model_id(seed) for v in variants for seed in (0, 1)}


def test_a_sequence_field_is_one_value_and_config_keys_ignore_spelling():
    one = expand_methods(study_of(methods={"rmu": {"layer_ids": [1, 2]}}))
    assert len(one) == 1 and tuple(one[0].config["layer_ids"]) == (1, 2)
    # the world preset's npo lr is 1e-3: saying so, in any spelling, is the same configuration
    keys = {expand_methods(study_of(methods={"npo": hyper}))[0].config_key
            for hyper in ({}, {"lr": 1e-3}, {"lr": 0.001}, {"lr": 1e-3, "beta": 0.05})}
    assert len(keys) == 1
    other = expand_methods(study_of(methods={"npo": {"beta": 0.1}}))[0].config_key
    assert other not in keys


def test_grid_errors_and_limit():
    with pytest.raises(StudyError, match="twice"):
        expand_methods(study_of(methods={"npo": {"lr": [1e-3, 0.001]}}))
    with pytest.raises(StudyError, match="empty list"):
        expand_methods(study_of(methods={"npo": {"lr": []}}))
    big = study_of(study={"seeds": [0, 1]}, methods={"npo": {"lr": [i * 1e-4 for i in range(1, 52)]}})
    with pytest.raises(StudyError) as caught:
        expand_methods(big)
    assert "102 unlearning runs" in str(caught.value) and f"limit of {GRID_LIMIT}" in str(caught.value)
    assert "--yes" in str(caught.value)
    assert len(expand_methods(big, allow_large=True)) == 51


# ------------------------------------------------------------------------------------------ planning errors
def test_missing_checkpoint_and_files_are_named(tmp_path):
    with pytest.raises(StudyError, match=r"models.base = .*does not exist"):
        plan_study(parse_study({"models": {"base": str(tmp_path / "no-such-model"), "gold": "none"}}))
    forget = tmp_path / "forget.txt"
    files = parse_study({"data": {"forget": str(forget)}, "models": {"base": str(tmp_path), "gold": "none"}})
    assert "logit_lens" not in files.analyses.names and "weight_comparison" in files.analyses.names
    with pytest.raises(StudyError, match=r"data.forget = .*no such file"):
        plan_study(parse_study({"data": {"forget": str(forget)},
                                "models": {"base": str(tmp_path), "gold": "none"}}))


def test_features_without_a_step_are_refused(monkeypatch):
    # [attacks] and models.native = true have their steps (tests/test_pipeline_attacks.py,
    # tests/test_native_pipeline.py); a build without them must refuse the study, not ignore the section
    from mechunlearn.pipeline.steps import base as step_base

    kept = {name: path for name, path in step_base.BUILTIN_STEP_KINDS.items()
            if name not in ("attack", "robustness_table", "native_model", "native_switch", "native")}
    monkeypatch.setattr(step_base, "BUILTIN_STEP_KINDS", kept)
    with pytest.raises(StudyError, match=r"attacks.*no attacks step"):
        plan_study(study_of(attacks={"relearn": {"lrs": [1e-3]}}))
    with pytest.raises(StudyError, match=r"native.*no native step"):
        plan_study(study_of(models={"native": True}))


def test_force_names_and_propagation(micro_world, tmp_path):
    world_dir = micro_world.save(tmp_path / "world")
    study = load_study("micro", overrides={"data": {"world": str(world_dir)}, "study": {"out": str(tmp_path / "o")}})
    plan = plan_study(study)
    with pytest.raises(StudyError, match="--force evalz.*evals"):
        step_status(plan, study.out, ["evalz"])
    status = step_status(plan, study.out, ["unlearned"])  # nothing is done yet: everything is todo
    assert set(status.values()) == {"todo"}
    from mechunlearn.pipeline.run import _forced

    forced = _forced(plan, ["unlearned"])
    kinds = {plan.steps[step_id].kind for step_id in forced}
    assert kinds == {"unlearned", "evals", "diagnostics", "methods_table", "signature_table", "report", "figures"}
    # base and gold evals do not read unlearned models: not forced
    assert "evals/base" not in forced and "evals/gold" not in forced and "models/base" not in forced
    assert _forced(plan, ["all"]) == set(plan.steps)


# -------------------------------------------------------------------------------------------- the out dir
def test_out_dir_of_another_study_or_unrelated_files_is_refused(tmp_path):
    from mechunlearn.storage import write_json

    other = tmp_path / "other"
    write_json(other / "study.resolved.json", {"study": {"name": "someone-else"}})
    study = parse_study({"study": {"name": "mine", "out": str(other)}})
    with pytest.raises(StudyError, match=r"another study \('someone-else'.*--force all"):
        run_study(study)
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="not empty and holds no study"):
        run_study(parse_study({"study": {"out": str(unrelated)}}))


def test_ray_executor_without_ray_says_how_to_install(micro_world, tmp_path, monkeypatch):
    world_dir = micro_world.save(tmp_path / "world")
    out = tmp_path / "out"
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where Ray is not installed
    study = load_study("micro", overrides={"data": {"world": str(world_dir)},
                                           "study": {"out": str(out), "executor": "ray"}})
    with pytest.raises(StudyError) as caught:
        run_study(study)
    assert "pip install 'mechunlearn[ray]'" in str(caught.value)
    assert not out.exists()  # refused before anything was written


def test_cli_bad_key_is_one_line_exit_2(tmp_path, capsys):
    from mechunlearn.cli import main

    path = tmp_path / "s.toml"
    path.write_text("[study]\nname = 'x'\nexecuter = 'ray'\n")
    assert main(["run", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "'executer'" in error and "executor" in error

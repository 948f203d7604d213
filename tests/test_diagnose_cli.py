"""``mechunlearn diagnose``: the output layout, numbers equal to a direct ``run_analyses`` call, skipping, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from mechunlearn import models
from mechunlearn.cli import main
from mechunlearn.diagnostics import available_analyses, build_analyses, run_analyses

ANALYSES = ["weight_comparison", "activation_comparison", "linear_probes"]
PER_MATRIX = ["name", "layer", "group", "shape0", "shape1", "dW_fro", "W_fro", "dW_fro_rel", "dW_spectral",
              "W_spectral", "dW_spectral_rel", "dW_stable_rank", "W_stable_rank"]
PER_LAYER = ["layer", "group", "dW_fro_layer", "W_fro_layer", "dW_fro_layer_rel", "max_dW_spectral",
             "max_W_spectral", "max_dW_spectral_rel", "mean_dW_stable_rank", "count_mats"]
ACTIVATION = ["layer", "split", "model_a_norm_L1", "model_a_norm_L2", "model_b_norm_L1", "model_b_norm_L2",
              "mean_dh_L1", "mean_dh_L2"]
PERTURBED_LAYER = 1  # only blocks.1.mlp.W_in differs between the two checkpoints


@pytest.fixture(scope="module")
def pair(toy_model_dir, tmp_path_factory):
    """(base dir, other dir, delta): the toy checkpoint and a copy whose blocks.1.mlp.W_in moved by delta."""
    root = tmp_path_factory.mktemp("pair")
    base = models.load(toy_model_dir, device="cpu")
    models.save(base, root / "base")
    generator = torch.Generator().manual_seed(0)
    weight = base.blocks[PERTURBED_LAYER].mlp.W_in
    delta = 0.05 * torch.randn(weight.shape, generator=generator)
    with torch.no_grad():
        weight.add_(delta)
    models.save(base, root / "unlearned")
    return root / "base", root / "unlearned", delta


@pytest.fixture(scope="module")
def texts_files(tmp_path_factory):
    from conftest import TOY_FORGET, TOY_RETAIN

    root = tmp_path_factory.mktemp("texts")
    (root / "forget.txt").write_text("\n".join(TOY_FORGET) + "\n")
    (root / "retain.txt").write_text("\n".join(TOY_RETAIN) + "\n")
    return root / "forget.txt", root / "retain.txt"


def diagnose_args(base, other, forget, retain, out, *extra):
    return ["diagnose", "--base", str(base), "--other", str(other), "--forget", str(forget), "--retain", str(retain),
            "--analyses", ",".join(ANALYSES), "--max-samples", "20", "--out", str(out), "--device", "cpu",
            "--quiet", *extra]


@pytest.fixture(scope="module")
def first_run(pair, texts_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    code = main(diagnose_args(*pair[:2], *texts_files, out))
    return out, code


def test_layout_and_seed_columns(first_run):
    out, code = first_run
    assert code == 0
    comparison = out / "base__to__unlearned"
    for folder in ["weight_comparison", "activation_comparison"]:
        assert (comparison / folder / f"{folder}.html").is_file()
        assert (comparison / folder / "summary.json").is_file()
    for model in ["base", "unlearned"]:
        assert (out / model / "linear_probes" / "linear_probes.csv").is_file()
        assert (out / model / "linear_probes" / "linear_probes.html").is_file()
    assert not (comparison / "linear_probes").exists()
    per_matrix = pd.read_csv(comparison / "weight_comparison" / "per_matrix.csv")
    assert set(PER_MATRIX) <= set(per_matrix.columns)  # plus component and hf_name (see weights.py)
    pd.testing.assert_frame_equal(per_matrix, pd.read_csv(comparison / "weight_comparison" / "weight_comparison.csv"))
    assert list(pd.read_csv(comparison / "weight_comparison" / "per_layer.csv").columns) == PER_LAYER
    assert list(pd.read_csv(comparison / "activation_comparison" / "activation_comparison.csv").columns) == ACTIVATION
    manifest = json.loads((comparison / "manifest.json").read_text())
    assert set(manifest["analyses"]) == set(ANALYSES)
    assert manifest["texts"]["per_split"] == {"forget": 12, "retain": 12}
    # the fused runner: one batch (12 texts < batch size 16) per model and split, for all three analyses at once
    one_batch = {split: {"batches": 1, "texts": 12} for split in ("forget", "retain")}
    assert manifest["last_run"]["forward_passes"] == {"base": one_batch, "unlearned": one_batch}


def test_numbers_are_the_perturbation(first_run, pair):
    """Hand-derived: only blocks.1 W_in moved, so one matrix has dW_fro = ||delta||_F and the residual stream
    is unchanged up to (and including) block 0's output (layers 0 and 1) and changed after."""
    out, _ = first_run
    _, _, delta = pair
    comparison = out / "base__to__unlearned"
    per_matrix = pd.read_csv(comparison / "weight_comparison" / "per_matrix.csv")
    moved = per_matrix[per_matrix["dW_fro"] > 0]
    assert len(moved) == 1 and moved.iloc[0]["layer"] == PERTURBED_LAYER and moved.iloc[0]["group"] == "mlp"
    assert moved.iloc[0]["dW_fro"] == pytest.approx(float(np.linalg.norm(delta.numpy())), rel=1e-5)
    activations = pd.read_csv(comparison / "activation_comparison" / "activation_comparison.csv")
    unchanged = activations["layer"] <= PERTURBED_LAYER
    assert np.all(activations.loc[unchanged, "mean_dh_L2"] == 0)
    assert np.all(activations.loc[~unchanged, "mean_dh_L2"] > 0)


def test_numbers_match_a_direct_run(first_run, pair, toy_texts):
    out, _ = first_run
    base_dir, other_dir, _ = pair
    loaded = {"base": models.load(base_dir, device="cpu"), "unlearned": models.load(other_dir, device="cpu")}
    forget, retain = toy_texts
    direct = run_analyses(build_analyses(ANALYSES, {"weight_comparison": {"progress": False}}), loaded,
                          {"forget": forget, "retain": retain}, max_samples=20, progress=False)
    comparison = out / "base__to__unlearned"
    written = {
        "per_matrix": (pd.read_csv(comparison / "weight_comparison" / "per_matrix.csv"),
                       direct["weight_comparison"].frame),
        "per_layer": (pd.read_csv(comparison / "weight_comparison" / "per_layer.csv"),
                      direct["weight_comparison"].tables["per_layer"]),
        "activations": (pd.read_csv(comparison / "activation_comparison" / "activation_comparison.csv"),
                        direct["activation_comparison"].frame)}
    for model in loaded:
        frame = direct["linear_probes"].frame
        written[model] = (pd.read_csv(out / model / "linear_probes" / "linear_probes.csv"),
                          frame[frame["model"] == model].reset_index(drop=True))
    for label, (on_disk, expected) in written.items():
        assert list(on_disk.columns) == list(expected.columns), label
        pd.testing.assert_frame_equal(on_disk, expected, check_dtype=False, rtol=1e-9, obj=label)


def test_second_run_skips_and_per_model_results_are_shared(first_run, pair, texts_files, capsys):
    out, _ = first_run
    stamp = {path: path.stat().st_mtime_ns for path in out.rglob("*.csv")}
    capsys.readouterr()
    assert main(diagnose_args(*pair[:2], *texts_files, out)) == 0
    assert capsys.readouterr().out == ""  # nothing written
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*.csv")} == stamp
    manifest = json.loads((out / "base__to__unlearned" / "manifest.json").read_text())
    assert sorted(manifest["last_run"]["skipped"]) == sorted(
        ["base__to__unlearned/weight_comparison", "base__to__unlearned/activation_comparison",
         "base/linear_probes", "unlearned/linear_probes"])
    assert set(manifest["analyses"]) == set(ANALYSES)  # the first run's records are kept

    # a new comparison with the same base: the base's probes are reused, only the new model's are computed, while
    # the new pair analysis runs both models in the same fused pass
    from mechunlearn.diagnostics.study import diagnose

    def again(**extra):
        return diagnose(pair[0], pair[1], out=out, analyses=["activation_comparison", "linear_probes"],
                        forget_file=texts_files[0], retain_file=texts_files[1], max_samples=20, device="cpu",
                        progress=False, other_name="again", **extra)

    comparison = out / "base__to__again"
    assert again() == [comparison / "activation_comparison", out / "again" / "linear_probes"]
    manifest = json.loads((comparison / "manifest.json").read_text())
    assert manifest["last_run"]["skipped"] == ["base/linear_probes"]
    assert set(manifest["last_run"]["forward_passes"]) == {"base", "again"}
    # "again" is the unlearned checkpoint under another name: the same probe numbers, and only its rows
    probes = pd.read_csv(out / "again" / "linear_probes" / "linear_probes.csv")
    assert set(probes["model"]) == {"again"}
    unlearned = pd.read_csv(out / "unlearned" / "linear_probes" / "linear_probes.csv")
    pd.testing.assert_frame_equal(probes.drop(columns="model"), unlearned.drop(columns="model"))
    assert again(force=True) == [comparison / "activation_comparison", out / "base" / "linear_probes",
                                 out / "again" / "linear_probes"]


def run_cli(args, capsys):
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def test_unknown_analysis_lists_the_known(pair, texts_files, tmp_path, capsys):
    args = diagnose_args(*pair[:2], *texts_files, tmp_path)
    args[args.index("--analyses") + 1] = "nope"
    code, err = run_cli(args, capsys)
    assert code == 2 and "nope" in err
    assert all(name in err for name in available_analyses())


def test_bad_inputs_exit_2(pair, texts_files, tmp_path, capsys, neox_factory):
    args = diagnose_args(*pair[:2], *texts_files, tmp_path)
    args[args.index("--max-samples") + 1] = "0"
    code, err = run_cli(args, capsys)
    assert code == 2 and "max_samples" in err

    code, err = run_cli(diagnose_args(pair[0], tmp_path / "missing", *texts_files, tmp_path), capsys)
    assert code == 2 and "does not exist" in err

    args = diagnose_args(*pair[:2], *texts_files, tmp_path)
    del args[args.index("--retain"):args.index("--retain") + 2]
    code, err = run_cli(args, capsys)
    assert code == 2 and "retain" in err

    wider = neox_factory(vocab_size=models.load(pair[0], device="cpu").cfg.d_vocab, hidden_size=48, layers=3,
                         heads=4, intermediate=64)
    wider.save_pretrained(tmp_path / "wider")
    code, err = run_cli(diagnose_args(pair[0], tmp_path / "wider", *texts_files, tmp_path / "out"), capsys)
    assert code == 2 and "different shapes" in err and "d_model: 32 vs 48" in err
    assert not (tmp_path / "out" / "base__to__wider").exists()  # nothing half-done


def test_mcq_files_feed_the_lenses_and_evals(pair, texts_files, tmp_path):
    """Without a world, MCQ files give the lenses and step 0 their items; without them, naming a lens is an error."""
    from mechunlearn.diagnostics.study import diagnose

    questions = [("the wizard Orlo keeps a silver", 0), ("the farmer grows", 2), ("a baker sells", 1)]
    lines = [json.dumps({"question": q, "choices": ["wand", "bread", "wheat", "mill"], "answer": a})
             for q, a in questions]
    (tmp_path / "wmdp.jsonl").write_text("\n".join(lines[:1]) + "\n")
    (tmp_path / "mmlu.jsonl").write_text("\n".join(lines[1:]) + "\n")
    common = dict(forget_file=texts_files[0], retain_file=texts_files[1], max_samples=20, device="cpu",
                  progress=False)
    with pytest.raises(ValueError, match="multiple-choice items"):
        diagnose(*pair[:2], out=tmp_path / "out", analyses=["logit_lens"], **common)
    written = diagnose(*pair[:2], out=tmp_path / "out", analyses=["evals", "logit_lens"],
                       mcq_forget_file=tmp_path / "wmdp.jsonl", mcq_retain_file=tmp_path / "mmlu.jsonl", **common)
    assert sorted(written) == sorted(tmp_path / "out" / model / name for model in ("base", "unlearned")
                                     for name in ("evals", "logit_lens"))
    lens = pd.read_csv(tmp_path / "out" / "base" / "logit_lens" / "logit_lens.csv")
    assert set(lens["model"]) == {"base"}
    assert lens.groupby("domain")["n_items"].first().to_dict() == {"forget": 1, "retain": 2}
    summary = json.loads((tmp_path / "out" / "unlearned" / "evals" / "summary.json").read_text())
    assert summary["capabilities"]["forget_mcq_chance"] == 0.25
    assert summary["capabilities"]["general_mcq_accuracy"] in (0.0, 0.5, 1.0)  # two items

    # the same files through the command line: --mcq-forget / --mcq-general, and the outputs are current
    args = diagnose_args(*pair[:2], *texts_files, tmp_path / "out", "--mcq-forget", str(tmp_path / "wmdp.jsonl"),
                         "--mcq-general", str(tmp_path / "mmlu.jsonl"))
    args[args.index("--analyses") + 1] = "evals,logit_lens"
    assert main(args) == 0
    manifest = json.loads((tmp_path / "out" / "base__to__unlearned" / "manifest.json").read_text())
    assert sorted(manifest["last_run"]["skipped"]) == sorted(f"{model}/{name}" for model in ("base", "unlearned")
                                                            for name in ("evals", "logit_lens"))


def test_micro_world_every_analysis(micro_world, micro_base_dir, micro_gold_dir, tmp_path):
    """All analyses with small settings on the world's base -> gold: every folder has its CSV and its figure."""
    from mechunlearn.diagnostics.study import COMPARISON_OUTPUT, EVALS, diagnose
    from mechunlearn.diagnostics import get_analysis

    options = {"tuned_lens": {"steps": 5, "cache_dir": tmp_path / "lens"},
               "sae_features": {"fit_options": {"training_tokens": 4096, "train_batch_size": 256,
                                                "buffer_tokens": 2048, "cache_dir": tmp_path / "sae"}},
               "lipschitzness": {"max_texts": 8, "n_samples": 2}, "null_space_analysis": {"max_matrices": 8}}
    out = tmp_path / "out"
    written = diagnose(micro_base_dir, micro_gold_dir, out=out, world=micro_world, max_samples=40, device="cpu",
                       progress=False, base_name="base", other_name="gold", options=options)
    expected = []
    for name in [EVALS, *available_analyses()]:
        per_model = name == EVALS or (get_analysis(name).scope == "model" and name not in COMPARISON_OUTPUT)
        expected += [out / "base" / name, out / "gold" / name] if per_model else [out / "base__to__gold" / name]
    assert sorted(written) == sorted(expected)
    for folder in expected:
        assert (folder / f"{folder.name}.csv").is_file() and (folder / f"{folder.name}.html").is_file(), folder
        assert len(pd.read_csv(folder / f"{folder.name}.csv")) > 0 or folder.name == "sae_features", folder
    capabilities = json.loads((out / "base" / EVALS / "summary.json").read_text())["capabilities"]
    assert 0 <= capabilities["forget_mcq_accuracy"] <= 1 and capabilities["general_mcq_chance"] == 0.25
    manifest = json.loads((out / "base__to__gold" / "manifest.json").read_text())
    assert manifest["mcq_items"]["forget"] == len(micro_world.mcq_items("forget"))
    assert all(batches["batches"] == 3 for model in manifest["last_run"]["forward_passes"].values()
               for batches in model.values())  # 40 texts per split in batches of 16: 3 passes, whatever the count


# ------------------------------------------------------------------------------------------- keys: no stale results
def test_outputs_are_keyed_by_weights_data_and_options(pair, texts_files, tmp_path):
    """A rerun skips what is current and recomputes exactly what changed: other texts, a retrained model at the
    same path, other options, a folder written before keys existed."""
    import shutil

    from mechunlearn.diagnostics.study import diagnose
    from mechunlearn.storage import checkpoint_digest

    base_dir, other_dir = tmp_path / "base", tmp_path / "unlearned"
    shutil.copytree(pair[0], base_dir)
    shutil.copytree(pair[1], other_dir)
    out = tmp_path / "out"
    comparison = out / "base__to__unlearned"

    def run(retain=texts_files[1], **extra):
        written = diagnose(base_dir, other_dir, out=out, analyses=ANALYSES, forget_file=texts_files[0],
                           retain_file=retain, max_samples=20, device="cpu", progress=False, **extra)
        return sorted(str(path.relative_to(out)) for path in written)

    every = sorted(["base__to__unlearned/weight_comparison", "base__to__unlearned/activation_comparison",
                    "base/linear_probes", "unlearned/linear_probes"])
    assert run() == every
    step = json.loads((comparison / "weight_comparison" / "step.json").read_text())
    assert step["inputs"]["models"] == {"base": checkpoint_digest(base_dir), "unlearned": checkpoint_digest(other_dir)}
    assert set(step) >= {"step", "key", "config", "inputs", "environment", "created", "wall_s"}
    assert "texts" not in step["inputs"]["data"]  # weights only
    probe_step = json.loads((out / "base" / "linear_probes" / "step.json").read_text())
    assert list(probe_step["inputs"]["models"]) == ["base"] and "texts" in probe_step["inputs"]["data"]
    assert run() == []  # everything current

    fewer = tmp_path / "retain_fewer.txt"
    fewer.write_text("\n".join(texts_files[1].read_text().splitlines()[:6]) + "\n")
    assert run(retain=fewer) == sorted(set(every) - {"base__to__unlearned/weight_comparison"})
    assert json.loads((comparison / "manifest.json").read_text())["texts"]["per_split"]["retain"] == 6

    # retrained: new weights at the same path; the base's outputs stay current
    retrained = models.load(other_dir, device="cpu")
    with torch.no_grad():
        retrained.blocks[0].mlp.W_out.add_(0.01)
    models.save(retrained, other_dir)
    assert run(retain=fewer) == sorted(["base__to__unlearned/weight_comparison",
                                        "base__to__unlearned/activation_comparison", "unlearned/linear_probes"])
    per_matrix = pd.read_csv(comparison / "weight_comparison" / "per_matrix.csv")
    assert (per_matrix.set_index("name").loc["blocks.0.mlp.W_out", "dW_fro"]) > 0

    assert run(retain=fewer, options={"linear_probes": {"C": 0.5}}) == ["base/linear_probes",
                                                                         "unlearned/linear_probes"]
    (out / "base" / "linear_probes" / "step.json").unlink()  # as written before keys existed
    assert run(retain=fewer, options={"linear_probes": {"C": 0.5}}) == ["base/linear_probes"]


def test_figures_share_one_plotlyjs_and_open_offline(first_run):
    out, _ = first_run
    scripts = list(out.glob("plotly-*.min.js"))
    assert len(scripts) == 1 and scripts[0].stat().st_size > 1_000_000
    pages = list(out.rglob("*.html"))
    assert len(pages) >= 4  # the first run's four (a later test adds another comparison to this out)
    for page in pages:
        text = page.read_text()
        assert page.stat().st_size < 500_000, page  # data and layout only: no embedded plotly.js
        sources = re.findall(r'<script[^>]*src="([^"]+)"', text)
        assert len(sources) == 1 and not sources[0].startswith(("http", "//")) and "cdn.plot.ly" not in text
        assert (page.parent / sources[0]).resolve() == scripts[0].resolve()


def test_list_names_every_analysis_with_a_description(capsys):
    from mechunlearn.diagnostics import describe_analyses

    assert main(["diagnose", "--list"]) == 0
    printed = capsys.readouterr().out
    for name, description in describe_analyses().items():
        assert description and f"{name}  " in printed and description in printed
    assert "evals" in printed and "knowledge_probe" in printed
    with pytest.raises(SystemExit):
        main(["diagnose", "--help"])
    assert "knowledge_probe" in capsys.readouterr().out

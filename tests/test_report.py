"""The report and the signature on a micro study: one offline HTML file (plotly.js and circuitsvis once, no
network), the signature's columns against numpy computed from the models' own weights, tables in Jupyter,
attacks and native sections when their outputs exist, and the report keyed by its inputs."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from mechunlearn.pipeline import parse_study, run_study
from mechunlearn.storage import read_json, write_json

ANALYSES = ["weight_comparison", "mlp_nullspace", "activation_comparison", "activation_covariance",
            "row_space_projection", "lipschitzness", "linear_probes", "logit_lens", "tuned_lens"]


def report_study_table(out: Path, world_dir: Path, cache: Path, title: str = "micro report") -> dict:
    """The tests' report study: whp (one step, one seed) on the micro world, the signature's analyses."""
    return {"study": {"name": "micro-report", "out": str(out), "seeds": [0], "device": "cpu", "threads": 1,
                      "cache": str(cache)},
            "data": {"world": str(world_dir)},
            "methods": {"whp": {"max_steps": 1, "batch_size": 8, "reinforce_epochs": 1}},
            "evals": {"max_texts": 16},
            "analyses": {"names": ANALYSES, "max_samples": 16,
                         "options": {"tuned_lens": {"steps": 5}, "lipschitzness": {"max_texts": 8}}},
            "report": {"title": title}}


def run_report_study(tmp_path_factory, micro_world, micro_cache) -> Path:
    """Run (or find done: every step skipped) the report study under the session's base temp directory, so the
    report, figures and views test modules share one run."""
    root = tmp_path_factory.getbasetemp() / "report-study"
    world_dir = root / "world"
    if not (world_dir / "manifest.json").is_file() and not world_dir.is_dir():
        micro_world.save(world_dir)
    out = root / "out"
    run_study(parse_study(report_study_table(out, world_dir, micro_cache)), progress=False, log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def study_out(tmp_path_factory, micro_world, micro_cache):
    return run_report_study(tmp_path_factory, micro_world, micro_cache)


@pytest.fixture(scope="module")
def report_html(study_out):
    return (study_out / "report" / "index.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ one offline file
def _scripts(html: str) -> list[tuple[str, str]]:
    return re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)


def test_report_is_one_self_contained_offline_file(study_out, report_html):
    from plotly.offline import get_plotlyjs

    from mechunlearn.views.page import circuitsvis_bundle

    assert report_html.count(get_plotlyjs()[:4000]) == 1          # plotly.js embedded once
    assert report_html.count(circuitsvis_bundle()[:4000]) == 1    # the circuitsvis bundle once
    # nothing reaches the network: no script src, no module import from a URL, no stylesheet link
    assert not re.search(r"<script[^>]*\bsrc\s*=", report_html)
    assert not re.search(r"""\bimport\b[^;]{0,200}?["']https?://""", report_html)
    assert not re.search(r"""import\(\s*["']https?://""", report_html)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']https?://", report_html)
    for section in ("Methods", "Brittleness signature", "Diagnostics", "Views", "Provenance"):
        assert f">{section}</h2>" in report_html
    # every analysis has its study-wide figure; the views are circuitsvis renders without their bundle
    for analysis in ANALYSES:
        assert f'id="a-{analysis}"' in report_html
    figures = report_html.count('class="plotly-graph-div"')
    assert figures == len(ANALYSES) + 1  # + the signature figure
    assert report_html.count("CircuitsVis.ColoredTokens") == 3 * 2  # 3 texts x (gold, whp)
    assert report_html.count("CircuitsVis.AttentionHeads") == 2
    size = (study_out / "report" / "index.html").stat().st_size
    assert size < 9_000_000  # two libraries (~6 MB) + data; 36 pages embedding plotly.js each made 216 MB
    record = read_json(study_out / "report" / "step.json")
    assert record["outputs"]["bytes"] == size


def test_report_scripts_are_valid_javascript(report_html, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the inline scripts' syntax is checked with node --check")
    checked = 0
    for index, (attributes, body) in enumerate(_scripts(report_html)):
        if len(body) > 200_000:  # the two libraries, as shipped by plotly and circuitsvis
            continue
        path = tmp_path / f"script{index}.{'mjs' if 'module' in attributes else 'js'}"
        path.write_text(body)
        result = subprocess.run([node, "--check", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, (attributes, body[:300], result.stderr)
        checked += 1
    assert checked >= len(ANALYSES) + 1 + 8


# ----------------------------------------------------------------------------------------------- signature
def _block_matrices(model) -> dict[str, list[np.ndarray]]:
    """Every attention and MLP weight matrix of a HookedTransformer as 2-D arrays, by group."""
    groups = {"attn": [], "mlp": []}
    for block in model.blocks:
        for name in ("W_Q", "W_K", "W_V"):
            weight = getattr(block.attn, name).detach().double()          # [head, d_model, d_head]
            groups["attn"].append(weight.permute(1, 0, 2).reshape(weight.shape[1], -1).numpy())
        weight = block.attn.W_O.detach().double()                         # [head, d_head, d_model]
        groups["attn"].append(weight.reshape(-1, weight.shape[-1]).numpy())
        groups["mlp"] += [block.mlp.W_in.detach().double().numpy(), block.mlp.W_out.detach().double().numpy()]
    return groups


def test_signature_columns_against_numpy_from_the_weights(study_out):
    from mechunlearn import models

    runs = pd.read_csv(study_out / "tables" / "signature" / "signature_runs.csv").set_index("model_id")
    base = _block_matrices(models.load(study_out / "models" / "base" / "model", device="cpu"))
    whp_folder = next((study_out / "models" / "unlearned" / "whp").glob("*/s0"))
    compared = {"gold": study_out / "models" / "gold" / "model", f"whp-{whp_folder.parent.name}-s0": whp_folder / "model"}
    assert list(runs.index) == ["base", "gold", *[m for m in compared if m != "gold"]]
    for model_id, directory in compared.items():
        other = _block_matrices(models.load(directory, device="cpu"))
        delta = {g: [o - b for o, b in zip(other[g], base[g])] for g in base}
        energy = {g: (sum(np.sum(d ** 2) for d in delta[g]), sum(np.sum(w ** 2) for w in base[g])) for g in base}
        magnitude = math.sqrt(energy["attn"][0] + energy["mlp"][0]) / math.sqrt(energy["attn"][1] + energy["mlp"][1])
        location = (math.sqrt(energy["mlp"][0] / energy["mlp"][1])) / math.sqrt(energy["attn"][0] / energy["attn"][1])
        ranks = [np.sum(np.linalg.svd(d, compute_uv=False) ** 2) / np.linalg.svd(d, compute_uv=False)[0] ** 2
                 for g in ("attn", "mlp") for d in delta[g]]
        row = runs.loc[model_id]
        assert row["magnitude"] == pytest.approx(magnitude, rel=1e-4)
        assert row["location"] == pytest.approx(location, rel=1e-4)
        assert row["rank"] == pytest.approx(np.mean(ranks), rel=1e-3)
        # the null-space share: W_in (d_model x d_mlp in TL, tall in HF's [out, in]) and W_out, by projection
        shares = []
        for w_in, w_out, d_in, d_out in zip(base["mlp"][0::2], base["mlp"][1::2], delta["mlp"][0::2], delta["mlp"][1::2]):
            # HF W_in = TL W_in.T ([d_mlp, d_model], tall): the left null space = complement of its column space
            u, s, _ = np.linalg.svd(w_in.T, full_matrices=False)
            u = u[:, s > s[0] * max(w_in.shape) * np.finfo(np.float32).eps]
            d = d_in.T
            shares.append(np.sum((d - u @ (u.T @ d)) ** 2) / np.sum(d ** 2))
            # HF W_out = TL W_out.T ([d_model, d_mlp], wide): the null space on the row side
            _, s, vt = np.linalg.svd(w_out.T, full_matrices=False)
            v = vt[s > s[0] * max(w_out.shape) * np.finfo(np.float32).eps].T
            d = d_out.T
            shares.append(np.sum((d - (d @ v) @ v.T) ** 2) / np.sum(d ** 2))
        assert row["null_space"] == pytest.approx(np.mean(shares), abs=2e-3)
        # activation change and selectivities: the stated formulas on the analyses' own CSVs
        folder = study_out / "diagnostics" / f"base__to__{model_id}"
        activations = pd.read_csv(folder / "activation_comparison" / "activation_comparison.csv")
        forget = activations[activations["split"] == "forget"]
        assert row["activation_change"] == pytest.approx(np.mean(forget["mean_dh_L2"] / forget["model_a_norm_L2"]))
        covariance = pd.read_csv(folder / "activation_covariance" / "selectivity.csv")
        assert row["selectivity_covariance"] == pytest.approx(covariance["wasserstein_forget"].sum()
                                                              / covariance["wasserstein_retain"].sum())
        lipschitz = pd.read_csv(folder / "lipschitzness" / "lipschitzness.csv")
        column = next(c for c in ("jacobian_spectral_norm_mean", "lipschitz_mean") if c in lipschitz.columns)
        forget_rows = lipschitz[lipschitz["split"] == "forget"].set_index("model")[column]
        assert row["stability"] == pytest.approx(forget_rows["other"] / forget_rows["base"])
        lens = pd.read_csv(folder / model_id / "logit_lens" / "logit_lens.csv")
        assert row["depth_logit_lens"] == pytest.approx(lens[lens["domain"] == "forget"]["accuracy"].max())
    assert math.isnan(runs.loc["base", "magnitude"]) and not math.isnan(runs.loc["base", "depth_logit_lens"])
    table = pd.read_csv(study_out / "tables" / "signature" / "signature.csv").set_index("model")
    assert (table["magnitude/gold"] == runs.loc["gold", "magnitude"]).all()
    markdown = (study_out / "tables" / "signature" / "signature.md").read_text()
    assert f"(gold {runs.loc['gold', 'magnitude']:.3g})" in markdown and "sqrt(sum_i ||dW_i||_F^2)" in markdown


def test_signature_table_is_the_seed_mean_with_a_t_interval():
    from mechunlearn.report.signature import signature_table

    runs = pd.DataFrame({"model_id": ["gold", "npo-aaaaaaaa-s0", "npo-aaaaaaaa-s1", "npo-aaaaaaaa-s2"],
                         "label": ["gold", "npo", "npo", "npo"], "role": ["gold", "unlearned", "unlearned", "unlearned"],
                         "seed": [None, 0, 1, 2], "magnitude": [0.9, 0.01, 0.03, 0.02], "rank": [12.0, 2.0, math.nan, 4.0]})
    table = signature_table(runs).set_index("model")
    values = np.array([0.01, 0.03, 0.02])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert table.loc["npo", "magnitude"] == pytest.approx(values.mean())
    assert table.loc["npo", "magnitude/low"] == pytest.approx(values.mean() - half)
    assert table.loc["npo", "magnitude/high"] == pytest.approx(values.mean() + half)
    assert table.loc["npo", "rank"] == pytest.approx(3.0)  # a missing seed is left out, not counted as 0
    assert table.loc["npo", "magnitude/gold"] == 0.9 and math.isnan(table.loc["gold", "magnitude/low"])


# ------------------------------------------------------------------------------------------- tables, Jupyter
def test_tables_render_in_jupyter_and_match_their_csv(study_out):
    from mechunlearn.report import study_tables

    tables = study_tables(study_out)
    assert list(tables)[:2] == ["methods/methods", "methods/runs"] and "signature/signature" in tables
    methods = tables["methods/methods"]
    shown = methods._repr_html_()
    body = shown.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr>") == len(methods.frame) == len(pd.read_csv(study_out / "tables/methods/methods.csv"))
    for model in methods.frame["model"]:
        assert f"<td>{model}</td>" in shown


def test_markdown_html_escapes_and_renders_tables():
    from mechunlearn.report.tables import markdown_html

    html = markdown_html("Note with **bold** and `code` <b>.\n\n| a | b \\| c |\n|---|---|\n| 1 | <x> |\n\n- item")
    assert "<b>bold</b>" in html and "<code>code</code>" in html and "&lt;b&gt;" in html
    assert "<th>b | c</th>" in html and "<td>&lt;x&gt;</td>" in html and "<li>item</li>" in html


# -------------------------------------------------------------------------------- attacks and native, when present
def add_attack_and_native_outputs(out: Path) -> None:
    """Outputs in the layout docs/study.md fixes for the attacks and native steps (their modules are other
    branches'): relearning curves per model and a native switch table, listed in the manifest."""
    manifest = read_json(out / "manifest.json")
    entries = []
    rng = np.random.default_rng(0)
    for model_id in ("gold", "base"):
        folder = out / "attacks" / "relearn" / model_id
        folder.mkdir(parents=True, exist_ok=True)
        steps = [0, 1, 2, 5, 10]
        curve = pd.DataFrame({"step": steps * 2, "category": ["unique"] * 5 + ["shared"] * 5,
                              "accuracy": np.clip(rng.uniform(0, 1, 10), 0, 1), "n": 8})
        curve.to_csv(folder / "headline_curve.csv", index=False)
        write_json(folder / "step.json", {"step": "attack", "id": f"attacks/relearn/{model_id}", "model_id": model_id,
                                          "config": {}, "outputs": {}})
        entries.append({"id": f"attacks/relearn/{model_id}", "kind": "attack", "stage": "attacks",
                        "model_id": model_id})
    robustness = out / "tables" / "robustness"
    robustness.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"model": ["gold", "base"], "attack": ["relearn"] * 2, "unique_after": [0.1, 0.9]}).to_csv(
        robustness / "robustness.csv", index=False)
    (robustness / "robustness.md").write_text("Robustness.\n\n| model | attack | unique after |\n|---|---|---|\n"
                                              "| gold | relearn | 0.1 |\n| base | relearn | 0.9 |\n")
    write_json(robustness / "step.json", {"step": "robustness_table", "id": "tables/robustness", "config": {}})
    native = out / "tables" / "native"
    native.mkdir(parents=True, exist_ok=True)
    rows = [{"source": "saga_0", "category": c, "model": m, "mean": v, "low": v - 0.05, "high": v + 0.05}
            for m, values in (("native-off-saga_0-nearest", (0.1, 0.7, 0.5)), ("gold-saga_0", (0.05, 0.75, 0.45)))
            for c, v in zip(("unique", "shared", "inferred"), values)]
    pd.DataFrame(rows).to_csv(native / "switch.csv", index=False)
    write_json(native / "step.json", {"step": "native_table", "id": "tables/native", "config": {}})
    entries += [{"id": "tables/robustness", "kind": "robustness_table", "stage": "tables", "model_id": None},
                {"id": "tables/native", "kind": "native_table", "stage": "tables", "model_id": None}]
    manifest["steps"] += entries
    write_json(out / "manifest.json", manifest)


def test_report_shows_robustness_and_native_when_present(study_out, tmp_path):
    from mechunlearn.report.build import write_report
    from mechunlearn.report.outputs import StudyOutputs

    out = tmp_path / "out"
    shutil.copytree(study_out, out, ignore=shutil.ignore_patterns(".lock", "model"))
    add_attack_and_native_outputs(out)
    outputs = StudyOutputs.from_out(out)
    assert set(outputs.attack_folders()["relearn"]) == {"gold", "base"}
    signature = pd.read_csv(out / "tables" / "signature" / "signature.csv")
    write_report(outputs, tmp_path / "report", "with attacks", signature=signature)
    html = (tmp_path / "report" / "index.html").read_text()
    for section in ("Robustness", "Native switch"):
        assert f">{section}</h2>" in html
    assert "<td>relearn</td>" in html and "relearn: held-out forget-unique facts" in html
    assert "Native switch: facts kept after switching a source off" in html
    assert html.index(">Methods</h2>") < html.index(">Robustness</h2>") < html.index(">Brittleness signature</h2>")


# ------------------------------------------------------------------------------------------------ keyed by inputs
def test_report_and_figures_rerun_exactly_when_their_inputs_change(study_out, tmp_path, micro_cache):
    out = tmp_path / "out"
    shutil.copytree(study_out, out, ignore=shutil.ignore_patterns(".lock"))
    world_dir = study_out.parent / "world"
    again = run_study(parse_study(report_study_table(out, world_dir, micro_cache)), progress=False,
                      log=lambda line: None)
    assert again.ran == []
    retitled = run_study(parse_study(report_study_table(out, world_dir, micro_cache, title="another title")),
                         progress=False, log=lambda line: None)
    assert retitled.ran == ["report"]
    assert ">another title</h1>" in (out / "report" / "index.html").read_text()
    lines: list[str] = []
    run_study(parse_study(report_study_table(out, world_dir, micro_cache, title="another title")), progress=False,
              log=lines.append)
    assert lines[-1].strip() == "report/index.html"  # mechunlearn run ends with the report's path


def test_docs_state_every_signature_formula():
    from mechunlearn.report.signature import SIGNATURE_COLUMNS

    docs = (Path(__file__).parents[1] / "docs" / "report.md").read_text().replace("\\|", "|")
    for column in SIGNATURE_COLUMNS:
        assert f"`{column.name}`" in docs and column.formula in docs, column.name

"""Publication figures from a micro study: every figure exported as a valid PDF (TrueType fonts embedded, no
Type 3), SVG (parses, text kept as text) and PNG (a paper column at 300 dpi); the WHP alpha sweep against the
generic-logit formula computed here; the command line."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ElementTree
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from test_report import add_attack_and_native_outputs, run_report_study


@pytest.fixture(scope="module")
def study_out(tmp_path_factory, micro_world, micro_cache):
    return run_report_study(tmp_path_factory, micro_world, micro_cache)


def _pdf_objects(data: bytes) -> bytes:
    """The PDF's bytes with every Flate stream inflated (font dictionaries may sit in object streams)."""
    parts = [data]
    for match in re.finditer(rb"stream\r?\n", data):
        start = match.end()
        end = data.find(b"endstream", start)
        try:
            parts.append(zlib.decompress(data[start:end]))
        except zlib.error:
            pass
    return b"\n".join(parts)


def test_every_figure_is_a_valid_pdf_svg_and_png(study_out, tmp_path):
    from PIL import Image

    from mechunlearn.figures import FIGURES, make_figures
    from mechunlearn.figures.style import COLUMN_WIDTH, PNG_DPI

    out = tmp_path / "out"
    shutil.copytree(study_out, out, ignore=shutil.ignore_patterns(".lock", "model", "report"))
    add_attack_and_native_outputs(out)
    index = make_figures(out, tmp_path / "figures")
    expected = {*FIGURES, "whp_alpha_sweep"}
    assert set(index["figures"]) == expected and index["skipped"] == []
    for name in expected:
        pdf = (tmp_path / "figures" / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-1.") and pdf.rstrip().endswith(b"%%EOF")
        objects = _pdf_objects(pdf)
        # the TrueType program embedded (fonttype 42: a /TrueType or a /CIDFontType2 font with its /FontFile2)
        assert b"/FontFile2" in objects and (b"/TrueType" in objects or b"/CIDFontType2" in objects), name
        assert b"/Type3" not in objects, name
        svg = ElementTree.parse(tmp_path / "figures" / f"{name}.svg").getroot()
        assert svg.tag.endswith("svg") and svg.get("width", "").endswith("pt")
        assert any(element.tag.endswith("text") for element in svg.iter()), name  # text kept as text
        width_pt = float(svg.get("width")[:-2])
        assert 150 < width_pt <= COLUMN_WIDTH * 72 * 1.05, (name, width_pt)
        with Image.open(tmp_path / "figures" / f"{name}.png") as image:
            image.verify()
        with Image.open(tmp_path / "figures" / f"{name}.png") as image:
            width, height = image.size
        assert 600 < width <= COLUMN_WIDTH * PNG_DPI * 1.05 and 200 < height < 3 * width, (name, image.size)
    # the study's own figures step wrote the same set but the two that need attacks / native outputs
    study_index = (study_out / "figures" / "index.json").read_text()
    assert '"relearning_curves"' in study_index and (study_out / "figures" / "whp_alpha_sweep.csv").is_file()


def test_figures_are_byte_identical_between_runs(study_out, tmp_path):
    from mechunlearn.figures import make_figures

    first = make_figures(study_out, tmp_path / "a", only=["layer_locality"], formats=("pdf", "svg"))
    make_figures(study_out, tmp_path / "b", only=["layer_locality"], formats=("pdf", "svg"))
    assert first["figures"] == {"layer_locality": ["layer_locality.pdf", "layer_locality.svg"]}
    for name in first["figures"]["layer_locality"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_whp_alpha_sweep_is_the_generic_logit_formula(study_out):
    from mechunlearn import models
    from mechunlearn.figures.whp import ALPHAS, alpha_sweep, reinforced_model
    from mechunlearn.storage import read_json
    from mechunlearn.world import load_world

    record = read_json(next((study_out / "models" / "unlearned" / "whp").glob("*/s0")) / "step.json")
    world = load_world(study_out.parent / "world")
    base = models.load(study_out / "models" / "base" / "model", device="cpu")
    reinforced, method = reinforced_model(base, record["config"]["hyper"], world.forget_texts(), world=world)
    probe = world.cloze_probes("forget")[0]
    anchored = dict(world.anchored_terms)
    sweep = alpha_sweep(base, reinforced, [(probe.prompt, probe.answer)], anchored)
    assert list(sweep["alpha"]) == list(ALPHAS)
    # by hand: the translated prompt's last logits under base, the prompt's under the reinforced model
    translated = probe.prompt
    for term in sorted(anchored, key=len, reverse=True):
        translated = re.sub(rf"(?<!\w){re.escape(term)}(?!\w)", anchored[term], translated)
    assert sweep["translated"].iloc[0] == translated

    def last(model, text):
        ids = torch.tensor([base.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            return model(ids)[0, -1].double().numpy()
    v_base, v_reinforced = last(base, translated), last(reinforced, probe.prompt)
    answer = base.tokenizer(probe.answer, add_special_tokens=False)["input_ids"][0]
    for row in sweep.itertuples():
        generic = v_base - row.alpha * np.maximum(v_reinforced - v_base, 0.0)
        probabilities = np.exp(generic - generic.max()) / np.exp(generic - generic.max()).sum()
        assert row.p_answer == pytest.approx(probabilities[answer], rel=1e-4, abs=1e-7)
        assert row.answer_rank == int(np.sum(generic > generic[answer])) + 1
    own = last(reinforced, probe.prompt)
    assert sweep["reinforced_p_answer"].iloc[0] == pytest.approx(np.exp(own[answer] - own.max())
                                                                 / np.exp(own - own.max()).sum(), rel=1e-4)
    # the study's figures step recomputed the same sweep from the same run (the reinforced model is seeded)
    study_sweep = pd.read_csv(study_out / "figures" / "whp_alpha_sweep.csv")
    first = study_sweep[study_sweep["prompt"] == probe.prompt].reset_index(drop=True)
    assert np.allclose(first["p_answer"], sweep["p_answer"], rtol=1e-4, atol=1e-7)


def test_figures_command_line(study_out, tmp_path, capsys):
    from mechunlearn.cli import main

    assert main(["figures", str(study_out), "--dest", str(tmp_path), "--formats", "svg", "--only",
                 "stable_rank,whp_alpha_sweep"]) == 0
    # the sweep is redrawn from the study's figures/whp_alpha_sweep.csv: no model is loaded
    assert sorted(path.name for path in tmp_path.glob("*.svg")) == ["stable_rank.svg", "whp_alpha_sweep.svg"]
    assert "whp_alpha_sweep: whp_alpha_sweep.svg" in capsys.readouterr().out
    assert main(["figures", str(study_out), "--dest", str(tmp_path), "--formats", "jpg"]) == 2
    assert "--formats 'jpg'" in capsys.readouterr().err
    assert main(["figures", str(tmp_path)]) == 2
    assert "holds no manifest.json" in capsys.readouterr().err

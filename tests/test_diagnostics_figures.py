"""Interactive figures read right: one colour per model across panels and figures, one legend entry per name,
integer layer ticks, real model names instead of "other"."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from conftest import make_neox
from mechunlearn import models
from mechunlearn.diagnostics import build_analyses, run_analyses
from mechunlearn.diagnostics.figures import color_for

WORDS = "the wizard wand silver river mill bread market horse grey night farmer wheat tower".split()


def texts(seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(8)]


@pytest.fixture(scope="module")
def results(toy_model_dir):
    base = models.load(toy_model_dir, device="cpu")
    other = models.from_hf(make_neox(vocab_size=len(base.tokenizer), hidden_size=32, layers=3, heads=4,
                                     intermediate=64, seed=2), base.tokenizer, device="cpu")
    names = ["weight_comparison", "mlp_attn_analysis", "mlp_nullspace", "activation_comparison",
             "activation_separation", "activation_covariance", "linear_probes", "lipschitzness"]
    options = {"lipschitzness": {"max_texts": 4, "n_samples": 2, "jacobian_texts": 2},
               **{name: {"progress": False} for name in ("weight_comparison", "mlp_attn_analysis", "mlp_nullspace")}}
    return run_analyses(build_analyses(names, options), {"base": base, "npo": other},
                        {"forget": texts(0), "retain": texts(1)}, batch_size=4, progress=False)


def trace_colour(trace):
    for path in ("line.color", "marker.color"):
        value = trace
        for part in path.split("."):
            value = getattr(value, part, None)
        if isinstance(value, str):
            return value
    return None


def test_colours_are_fixed_per_name():
    assert color_for("npo") == color_for("npo-3f2a1c9e-s0") == color_for("npo-0b1c2d3e-s2")
    assert len({color_for(name) for name in ("base", "gold", "npo", "rmu", "ga", "whp")}) == 6
    assert color_for("my-checkpoint") == color_for("my-checkpoint") and color_for("gold-saga_1") == color_for("gold")


def test_one_colour_per_model_one_legend_entry_real_names(results):
    colours_by_name: dict[str, set[str]] = defaultdict(set)
    for name, result in results.items():
        figure = result.figure()
        shown = [trace.name for trace in figure.data if trace.showlegend is not False]
        assert len(shown) == len(set(shown)), (name, shown)  # one legend entry per series
        for trace in figure.data:
            assert trace.name is None or "other" not in trace.name.split(), (name, trace.name)
            colour = trace_colour(trace)
            series = (trace.name or "").split(" / ")[0]  # "npo / forget": model npo, split forget (dashed)
            if series in ("base", "npo") and colour is not None:
                colours_by_name[series].add(colour)
        within = defaultdict(set)
        for trace in figure.data:
            if trace.legendgroup and trace_colour(trace):
                within[trace.legendgroup].add(trace_colour(trace))
        assert all(len(colours) == 1 for colours in within.values()), (name, dict(within))  # across panels
    # the same model has the same colour in every figure
    assert colours_by_name["base"] == {color_for("base")} and colours_by_name["npo"] == {color_for("npo")}


def test_layer_axes_tick_at_integers(results):
    for name in ("weight_comparison", "mlp_attn_analysis", "mlp_nullspace", "activation_comparison",
                 "activation_separation", "activation_covariance", "linear_probes"):
        figure = results[name].figure()
        axes = []
        figure.for_each_xaxis(axes.append)
        assert axes and all(axis.tickmode == "linear" and axis.dtick == 1 and axis.tickformat == "d"
                            for axis in axes), name

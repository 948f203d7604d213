"""The fused runner: one forward pass per (model, split) feeds every activation analysis, with the same numbers as
running each alone; streaming moments agree with numpy on the whole data; bad input gets one clear error."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_neox
from mechunlearn import models
from mechunlearn.diagnostics import (ActivationAnalysis, RunStats, available_analyses, build_analyses,
                                     run_activation_analyses, run_analyses)
from mechunlearn.diagnostics.streaming import RunningMean, RunningMoments

ACTIVATION_ANALYSES = ["activation_comparison", "activation_separation", "activation_covariance",
                       "row_space_projection", "lipschitzness"]
OPTIONS = {"lipschitzness": {"max_texts": 5, "n_samples": 2}}
FORGET = [f"the wizard {word} keeps a silver wand" + " at night" * (i % 4) for i, word in
          enumerate(["Orlo", "Pell", "Varn", "Mira", "Tobin", "Alder", "Quill", "Rusk", "Seren", "Ulm", "Wend"])]
RETAIN = [f"the farmer {word} grows wheat near the river" + " every day" * (i % 3) for i, word in
          enumerate(["Ada", "Bram", "Cole", "Dora", "Eli", "Finn", "Gus", "Hal", "Ivy", "Jo"])]
SPLITS = {"forget": FORGET, "retain": RETAIN}
BATCH_SIZE = 4


@pytest.fixture(scope="module")
def pair(toy_model_dir):
    base = models.load(toy_model_dir, device="cpu")
    hf = make_neox(vocab_size=len(base.tokenizer), hidden_size=32, layers=3, heads=4, intermediate=64, seed=5)
    return {"base": base, "other": models.from_hf(hf, base.tokenizer, device="cpu")}


@contextmanager
def counting_embed_passes(model_pair):
    """Count forward passes with a plain PyTorch hook on ``hook_embed`` (fires once per forward pass)."""
    counts = {name: 0 for name in model_pair}
    handles = []
    for name, model in model_pair.items():
        def count(module, inputs, output, name=name):
            counts[name] += 1
        handles.append(model.hook_embed.register_forward_hook(count))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def frames_of(result):
    return [result.frame, *(result.tables[name] for name in sorted(result.tables))]


# --------------------------------------------------------------------------------------------- one pass, same numbers
def test_fused_runner_gives_the_same_numbers_as_each_analysis_alone(pair):
    fused = run_activation_analyses(build_analyses(ACTIVATION_ANALYSES, OPTIONS), pair, SPLITS,
                                    batch_size=BATCH_SIZE, progress=False)
    for name in ACTIVATION_ANALYSES:
        alone = run_activation_analyses(build_analyses([name], OPTIONS), pair, SPLITS, batch_size=BATCH_SIZE,
                                        progress=False)[name]
        for fused_frame, alone_frame in zip(frames_of(fused[name]), frames_of(alone), strict=True):
            # Not bit-exact: models load accelerated (mechunlearn.fast), and a hook another analysis puts on a
            # LayerNorm switches that block to TransformerLens' own kernels, which round differently (~1e-8).
            pd.testing.assert_frame_equal(fused_frame, alone_frame, check_exact=False, rtol=1e-6, atol=1e-9)


def test_exactly_one_forward_pass_per_model_and_split(pair):
    batches = {split: math.ceil(len(texts) / BATCH_SIZE) for split, texts in SPLITS.items()}
    shared = [name for name in ACTIVATION_ANALYSES if name != "lipschitzness"]
    stats = RunStats()
    with counting_embed_passes(pair) as counts:
        run_activation_analyses(build_analyses(shared), pair, SPLITS, batch_size=BATCH_SIZE, progress=False,
                                stats=stats)
    assert counts == {"base": sum(batches.values()), "other": sum(batches.values())}  # 2 x (3 + 3)
    assert dict(stats.forward_passes) == {(model, split): batches[split] for model in pair for split in SPLITS}

    # With the Lipschitz analysis (extra_passes): the shared passes stay the same; its own are on top.
    analyses = build_analyses(ACTIVATION_ANALYSES, OPTIONS)
    lipschitz = analyses[-1]
    assert lipschitz.extra_passes and not any(a.extra_passes for a in analyses[:-1])
    stats = RunStats()
    with counting_embed_passes(pair) as counts:
        run_activation_analyses(analyses, pair, SPLITS, batch_size=BATCH_SIZE, progress=False, stats=stats)
    assert dict(stats.forward_passes) == {(model, split): batches[split] for model in pair for split in SPLITS}
    # max_texts 5 with batches of 4: 2 batches per split, each 1 clean + n_samples perturbed passes per model, and
    # 1 pass whose graph the Jacobian's power iteration runs through (jacobian_texts 16 > max_texts: every text)
    own_per_model = 2 * 2 * (1 + OPTIONS["lipschitzness"]["n_samples"] + 1)
    assert lipschitz.extra_forward_passes == 2 * own_per_model
    assert counts == {name: sum(batches.values()) + own_per_model for name in pair}


def test_model_scope_analysis_gets_every_model(pair, toy_model_dir):
    trio = dict(pair) | {"third": models.load(toy_model_dir, device="cpu")}
    stats = RunStats()
    frame = run_activation_analyses(build_analyses(["activation_separation"]), trio, SPLITS, batch_size=8,
                                    progress=False, stats=stats)["activation_separation"].frame
    assert list(frame["model"].unique()) == ["base", "other", "third"]
    base, third = (frame[frame["model"] == name].drop(columns="model").reset_index(drop=True)
                   for name in ("base", "third"))
    pd.testing.assert_frame_equal(base, third)  # the same checkpoint loaded twice
    assert stats.texts[("third", "forget")] == len(FORGET)


def test_max_samples_limits_texts_per_split(pair):
    stats = RunStats()
    result = run_analyses(build_analyses(["activation_comparison"]), pair, SPLITS, batch_size=BATCH_SIZE,
                          max_samples=5, progress=False, stats=stats)
    assert stats.texts[("base", "forget")] == 5 and stats.forward_passes[("other", "retain")] == 2
    assert result["activation_comparison"].summary["tokens"]["forget"] > 0


class Recorder(ActivationAnalysis):
    """Declares one hook per model and records which hook names it was handed."""

    name = "recorder"

    def __init__(self, scope: str, hook: str) -> None:
        self.scope, self.hook, self.seen = scope, hook, []

    def hook_names(self, model):
        return [self.hook]

    def update(self, split, activations, batch):
        self.seen.append({model: sorted(hooks) for model, hooks in activations.items()})

    def result(self):
        return None


def test_an_analysis_gets_only_the_hooks_it_declared(pair):
    """activation_comparison asks for every residual stream; the recorders, run beside it, see only their own."""
    pair_recorder = Recorder("pair", "blocks.1.hook_mlp_out")
    model_recorder = Recorder("model", "blocks.0.hook_resid_post")
    run_activation_analyses([*build_analyses(["activation_comparison"]), pair_recorder, model_recorder], pair,
                            SPLITS, batch_size=BATCH_SIZE, progress=False)
    assert pair_recorder.seen and all(seen == {"base": ["blocks.1.hook_mlp_out"], "other": ["blocks.1.hook_mlp_out"]}
                                      for seen in pair_recorder.seen)
    assert all(seen == {name: ["blocks.0.hook_resid_post"] for name in pair} for seen in model_recorder.seen)


# ---------------------------------------------------------------------------------------------- streaming statistics
def test_running_moments_match_numpy_over_uneven_batches():
    generator = np.random.default_rng(0)
    data = generator.normal(size=(500, 7)) * np.arange(1, 8) + 3.0
    moments, diagonal, mean = RunningMoments(), RunningMoments(diagonal_only=True), RunningMean()
    start = 0
    for size in [1, 3, 0, 50, 2, 97, 200, 147]:  # uneven (and an empty) batches
        rows = torch.tensor(data[start:start + size], dtype=torch.float32)
        for accumulator in (moments, diagonal, mean):
            accumulator.update(rows)
        start += size
    assert start == len(data) and moments.count == len(data)
    reference = data.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(moments.mean.numpy(), reference.mean(0), rtol=1e-10)
    np.testing.assert_allclose(mean.mean.numpy(), reference.mean(0), rtol=1e-10)
    np.testing.assert_allclose(moments.covariance.numpy(), np.cov(reference, rowvar=False), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(diagonal.covariance.numpy(), np.var(reference, axis=0, ddof=1), rtol=1e-9)


# ------------------------------------------------------------------------------------------------------------ errors
def test_unknown_analysis_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown analysis 'nope'") as error:
        build_analyses(["nope"])
    for name in ACTIVATION_ANALYSES:
        assert name in str(error.value) and name in available_analyses()


class NeedsResidMid(ActivationAnalysis):
    name = "needs_resid_mid"
    scope = "model"

    def hook_names(self, model):
        return ["blocks.0.hook_resid_mid"]  # parallel-residual GPT-NeoX has no resid_mid


def test_missing_hook_name_is_a_clear_error(pair):
    with pytest.raises(ValueError, match=r"analysis 'needs_resid_mid' asks for hook point\(s\) "
                                         r"blocks\.0\.hook_resid_mid, which model 'base' does not have"):
        run_activation_analyses([NeedsResidMid()], pair, SPLITS, progress=False)


def test_empty_split_and_bad_max_samples_are_refused(pair):
    analyses = build_analyses(["activation_comparison"])
    with pytest.raises(ValueError, match="split 'forget' is empty"):
        run_activation_analyses(analyses, pair, {"forget": ["  ", ""], "retain": RETAIN}, progress=False)
    with pytest.raises(ValueError, match="max_samples must be a positive"):
        run_activation_analyses(analyses, pair, SPLITS, max_samples=0, progress=False)


def test_models_of_different_shapes_are_refused(pair):
    tokenizer = pair["base"].tokenizer
    wider = models.from_hf(make_neox(vocab_size=len(tokenizer), hidden_size=48, layers=3, heads=4, intermediate=64),
                           tokenizer, device="cpu")
    with pytest.raises(ValueError, match="different shapes.*d_model: 32 vs 48"):
        run_activation_analyses(build_analyses(["activation_comparison"]), {"base": pair["base"], "other": wider},
                                SPLITS, progress=False)


def test_analysis_errors_name_the_fix(pair):
    from mechunlearn.diagnostics.activation_covariance import ActivationCovariance
    from mechunlearn.diagnostics.activation_separation import ActivationSeparation
    from mechunlearn.diagnostics.lipschitzness import Lipschitzness

    with pytest.raises(ValueError, match="no batches were fed"):
        analysis = ActivationCovariance()
        analysis.start(pair)
        analysis.result()
    with pytest.raises(ValueError, match="contrasts two splits"):
        run_activation_analyses([ActivationSeparation()], pair, {"forget": FORGET}, progress=False)
    with pytest.raises(ValueError, match="n_samples must be at least 2"):
        Lipschitzness(n_samples=1)
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        build_analyses(["activation_comparison"], {"activation_comparison": {"layers": [9]}})[0].hook_names(
            pair["base"])

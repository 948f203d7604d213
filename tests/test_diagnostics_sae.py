"""SAE feature diff: an SAE trained with sae-lens, its statistics against sae.encode on independently captured
activations, and a feature killed in the other model reported as dying."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mechunlearn import models
from mechunlearn.batching import tokenize
from mechunlearn.diagnostics import run_activation_analyses
from mechunlearn.diagnostics.sae_features import SAEFeatures, classify_features
from mechunlearn.diagnostics.sae_training import activation_batches, default_hook_name, fit_sae

FORGET_WORDS = ["wizard", "Orlo", "silver", "wand", "Varnhold", "mage", "Pell", "glows"]
RETAIN_WORDS = ["farmer", "wheat", "river", "bread", "market", "baker", "mill", "children"]
FIT = dict(l1_coefficient=2.0, training_tokens=60_000, train_batch_size=128, buffer_tokens=4096, seed=0)


def texts_from(words: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(["the", *(rng.choice(words) for _ in range(rng.randint(3, 7)))]) for _ in range(count)]


FORGET, RETAIN = texts_from(FORGET_WORDS, 16, seed=1), texts_from(RETAIN_WORDS, 16, seed=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(toy_model_dir, tmp_path_factory):
    """The base model, its SAE (trained once; cached in a module directory) and that cache directory."""
    base = models.load(toy_model_dir, device="cpu")
    cache_dir = tmp_path_factory.mktemp("sae-cache")
    return base, fit_sae(base, FORGET + RETAIN, cache_dir=cache_dir, **FIT), cache_dir


def captured(model, texts: list[str], hook: str) -> torch.Tensor:
    """Independent capture: one unpadded run_with_cache per text, all token rows."""
    rows = [model.run_with_cache(tokenize(model.tokenizer, [t]).tokens, names_filter=[hook])[1][hook][0]
            for t in texts]
    return torch.cat(rows)


def test_sae_is_trained_by_sae_lens_and_reconstructs(setup):
    from sae_lens import SAE

    base, sae, _ = setup
    hook = default_hook_name(base)
    assert hook == "blocks.1.hook_resid_post"
    assert isinstance(sae, SAE) and sae.cfg.metadata.hook_name == hook
    assert sae.cfg.d_in == base.cfg.d_model and sae.cfg.d_sae == 4 * base.cfg.d_model
    activations = captured(base, FORGET + RETAIN, hook)
    with torch.no_grad():
        features = sae.encode(activations)
        mse = ((sae.decode(features) - activations) ** 2).mean()
    variance = activations.var(dim=0).mean()
    assert mse < 0.25 * variance, (float(mse), float(variance))
    assert (features > 0).float().sum(dim=1).mean() < 0.25 * sae.cfg.d_sae  # sparse


def test_sae_cache_reloads_the_same_weights(setup):
    base, sae, cache_dir = setup
    again = fit_sae(base, FORGET + RETAIN, cache_dir=cache_dir, **FIT)
    for (name, a), (_, b) in zip(sae.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert len(list(cache_dir.glob("*/cfg.json"))) == 1


def test_activation_batches_are_bounded_and_cover_the_corpus(setup):
    base, _, _ = setup
    hook = default_hook_name(base)
    corpus = captured(base, FORGET, hook)
    stream = activation_batches(base, FORGET, hook, train_batch_size=32, buffer_tokens=256, text_batch_size=4)
    batches = [next(stream) for _ in range(20)]
    assert all(b.shape == (32, base.cfg.d_model) for b in batches)
    # every row handed out is a real token's activation (float rounding of padded vs unpadded passes aside)
    distances = torch.cdist(torch.cat(batches), corpus, compute_mode="donot_use_mm_for_euclid_dist")
    assert distances.min(dim=1).values.max() < 1e-5 < distances.max()
    with pytest.raises(ValueError, match="twice train_batch_size"):
        next(activation_batches(base, FORGET, hook, train_batch_size=64, buffer_tokens=100))


def kill_feature_hook(sae, feature: int, margin: float = 1e-3):
    """Remove just enough of the feature's encoder direction that its pre-activation is <= -margin."""
    direction, bias, centre = sae.W_enc[:, feature].detach(), sae.b_enc[feature].detach(), sae.b_dec.detach()

    def hook_fn(activation, hook):
        pre = (activation - centre) @ direction + bias
        return activation - (torch.relu(pre + margin) / direction.dot(direction))[..., None] * direction

    return hook_fn


def test_statistics_match_sae_encode_and_a_killed_feature_dies(setup, toy_model_dir):
    base, sae, _ = setup
    hook = default_hook_name(base)
    with torch.no_grad():
        forget_features = sae.encode(captured(base, FORGET, hook))
        retain_features = sae.encode(captured(base, RETAIN, hook))
    forget_frequency = (forget_features > 0).double().mean(0).numpy()
    retain_frequency = (retain_features > 0).double().mean(0).numpy()
    # forget-specific in base (the analysis' defaults ask for >= 2x): the byte-level toy tokenizer shares
    # sub-word tokens between the splits, so few features are forget-only
    candidates = np.flatnonzero((forget_frequency >= 0.1) & (forget_frequency >= 3 * retain_frequency))
    assert len(candidates) > 0, "no forget-specific feature to kill: the toy SAE learned nothing split-specific"
    feature = int(candidates[np.argmax(forget_frequency[candidates])])

    other = models.load(toy_model_dir, device="cpu")
    other.add_hook(hook, kill_feature_hook(sae, feature), is_permanent=True)
    analysis = SAEFeatures(sae=sae, min_frequency=0.05)
    result = run_activation_analyses([analysis], {"base": base, "other": other}, {"forget": FORGET, "retain": RETAIN},
                                     batch_size=6, progress=False)["sae_features"]
    other.reset_hooks(including_permanent=True)

    stats = result.tables["feature_stats"].set_index(["model", "split"])
    np.testing.assert_allclose(stats.loc[("base", "forget"), "frequency"], forget_frequency, atol=1e-9)
    np.testing.assert_allclose(stats.loc[("base", "retain"), "frequency"], retain_frequency, atol=1e-9)
    np.testing.assert_allclose(stats.loc[("base", "forget"), "mean_activation"], forget_features.mean(0).numpy(),
                               atol=1e-5)
    assert set(stats.loc[("base", "forget"), "n_tokens"]) == {len(forget_features)}
    assert stats.loc[("other", "forget"), "frequency"].to_numpy()[feature] == 0.0

    row = result.frame.set_index("feature").loc[feature]
    assert row["status"] == "dies" and row["model"] == "other"
    assert row["base_freq_forget"] == pytest.approx(forget_frequency[feature]) and row["other_freq_forget"] == 0
    # top tokens: decoded strings of the feature's 5 strongest forget tokens in the base model
    top = torch.topk(forget_features[:, feature], 5)
    forget_tokens = torch.cat([tokenize(base.tokenizer, [t]).tokens[0] for t in FORGET])
    expected = [repr(base.tokenizer.decode([int(forget_tokens[i])])) for i, v in zip(top.indices, top.values) if v > 0]
    assert row["top_tokens_base"].split(" | ") == expected and row["top_tokens_other"] == ""
    assert result.summary["models"]["other"]["dies"] >= 1
    reconstruction = result.tables["reconstruction"].set_index(["model", "split"])
    assert reconstruction.loc[("base", "forget"), "fvu"] < 0.25


def test_sae_fitted_in_start_from_the_cache(setup):
    base, sae, cache_dir = setup
    analysis = SAEFeatures(fit_texts=FORGET + RETAIN, fit_options=dict(cache_dir=cache_dir, **FIT))
    result = run_activation_analyses([analysis], {"base": base}, {"forget": FORGET, "retain": RETAIN},
                                     progress=False)["sae_features"]
    assert torch.equal(analysis.sae.W_enc, sae.W_enc)  # phase 1 ran in start and found the cached SAE
    assert len(result.frame) == 0 and set(result.tables["feature_stats"]["model"]) == {"base"}


def test_classification_on_hand_built_statistics():
    base_forget = np.array([0.5, 0.5, 0.5, 0.001, 0.3, 0.0, 0.2])
    base_retain = np.array([0.0, 0.1, 0.0, 0.0, 0.3, 0.0, 0.0])
    other_forget = np.array([0.01, 0.4, 0.06, 0.0, 0.3, 0.2, 0.049])
    other_retain = np.array([0.0, 0.1, 0.0, 0.0, 0.0, 0.05, 0.0])
    status = classify_features(base_forget, base_retain, other_forget, other_retain, min_frequency=0.01,
                               specificity=2.0, death_fraction=0.25)
    # 0: 0.5 -> 0.01 dies; 1: survives; 2: 0.5 -> 0.06 < 0.125 dies; 3: too rare in base; 4: not specific in base
    # but specific in other (retain firing vanished) -> appears; 5: new -> appears; 6: 0.049 < 0.05 -> dies
    assert status.tolist() == ["dies", "survives", "dies", "", "appears", "appears", "dies"]


def test_errors_are_clear():
    with pytest.raises(ValueError, match="sae= .* fit_texts="):
        SAEFeatures()
    with pytest.raises(ValueError, match="top_k"):
        SAEFeatures(fit_texts=["a"], top_k=0)

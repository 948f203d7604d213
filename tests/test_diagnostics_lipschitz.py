"""The Jacobian spectral norm (power iteration with Jacobian-vector products) against the full Jacobian of
``torch.autograd.functional.jacobian``, and against the random-direction gain it bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_neox
from mechunlearn import models
from mechunlearn.batching import tokenize
from mechunlearn.diagnostics import build_analyses, run_activation_analyses
from mechunlearn.diagnostics.jacobian import centred_logprobs, jacobian_spectral_norms

TEXTS = ["the farmer grows", "Orlo keeps a wand", "the mill"]  # different lengths: a padded batch


@pytest.fixture(scope="module")
def model(toy_model_dir):
    base = models.load(toy_model_dir, device="cpu")
    hf = make_neox(vocab_size=len(base.tokenizer), hidden_size=32, layers=2, heads=4, intermediate=64, seed=7)
    return models.from_hf(hf, base.tokenizer, device="cpu", dtype="fp32")


def full_jacobian_norm(model, text: str) -> float:
    """sigma_1 of the dense Jacobian of the centred log-probs w.r.t. the text's embeddings (unpadded)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tokens = torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"]])
    embedding = model.embed(tokens).detach()

    def outputs(embedded):
        with model.hooks(fwd_hooks=[("hook_embed", lambda activation, hook: embedded)]):
            return centred_logprobs(model(tokens))

    with sdpa_kernel([SDPBackend.MATH]):  # vmap over backward needs the composite attention kernel
        jacobian = torch.autograd.functional.jacobian(outputs, embedding, vectorize=True)
    matrix = jacobian.reshape(tokens.shape[1] * model.cfg.d_vocab, tokens.shape[1] * model.cfg.d_model)
    return float(np.linalg.svd(matrix.double().numpy(), compute_uv=False)[0])


def test_power_iteration_matches_the_full_jacobian(model):
    batch = tokenize(model.tokenizer, TEXTS, 64)
    assert len(set(batch.mask.sum(1).tolist())) > 1  # really padded
    estimate = jacobian_spectral_norms(model, batch, iterations=300, tol=1e-10, seed=0)
    for text, norm in zip(TEXTS, estimate.norms.tolist()):
        assert norm == pytest.approx(full_jacobian_norm(model, text), rel=1e-4), text
    # the default settings stop early and are still close, from below (a lower bound at every step)
    quick = jacobian_spectral_norms(model, batch)
    assert quick.converged and quick.iterations < 30
    assert np.all(quick.norms.numpy() <= estimate.norms.numpy() * (1 + 1e-6))
    np.testing.assert_allclose(quick.norms.numpy(), estimate.norms.numpy(), rtol=1e-2)
    assert all(not hook._forward_hooks for hook in model.hook_dict.values())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_jacobian_bounds_the_random_direction_gain(model):
    """Every direction's first-order gain is at most sigma_1: the analysis' two numbers are ordered."""
    splits = {"forget": TEXTS * 2, "retain": list(reversed(TEXTS)) * 2}
    result = run_activation_analyses(
        build_analyses(["lipschitzness"], {"lipschitzness": {"max_texts": 6, "n_samples": 3, "epsilon": 1e-3}}),
        {"base": model, "other": model}, splits, batch_size=4, progress=False)["lipschitzness"]
    frame = result.frame
    assert (frame["n_jacobian_texts"] == 6).all()
    assert (frame["directional_gain_centred_mean"] <= frame["jacobian_spectral_norm_mean"] * 1.01).all()
    assert (frame["directional_gain_centred_mean"] < 0.9 * frame["jacobian_spectral_norm_mean"]).all()
    ratios = result.tables["ratios"]
    np.testing.assert_allclose(ratios["jacobian_spectral_norm_mean_ratio"], 1.0)

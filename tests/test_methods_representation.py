"""RMU, Circuit Breakers, LAT and CB-LAT: losses against independent computations, the latent adversary's
contract, and short unlearning runs on the toy model (the defining quantity moves the right way, untrained
parameters stay bitwise equal, no hook is left behind)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechunlearn.batching import tokenize
from mechunlearn.methods import create
from mechunlearn.methods.adversary import adversary_layer, latent_adversary
from mechunlearn.methods.layers import default_layers, layer_activations
from mechunlearn.methods.rerouting import random_targets
from mechunlearn.methods.base import UnlearnContext
from mechunlearn.methods.circuit_breakers import circuit_breaker_loss
from mechunlearn.methods.rmu import default_trainable, rmu_loss
from mechunlearn.unlearn import assert_no_hooks, frozen_copy, unlearn
from conftest import TOY_FORGET, TOY_RETAIN

METHODS = ["rmu", "cb", "lat", "cb_lat"]


# --------------------------------------------------------------------------------------------- helpers
def resid(model, tokens, layer, delta=None, delta_layer=None):
    """resid_post at ``layer`` via run_with_cache (independent of the methods' capture code)."""
    hooks = []
    if delta is not None:
        hooks = [(f"blocks.{delta_layer}.hook_resid_post", lambda activation, hook: activation + delta)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.hook_resid_post")
    return cache[f"blocks.{layer}.hook_resid_post"]


def forget_nll(model, batch, delta=None, layer=None):
    """Mean NLL over real predicted tokens, written out with F.cross_entropy."""
    hooks = []
    if delta is not None:
        hooks = [(f"blocks.{layer}.hook_resid_post", lambda activation, hook: activation + delta)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(batch.tokens)
    targets = batch.tokens[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    mask = batch.mask[:, 1:].reshape(-1)
    return float(losses[mask].mean())


def padded_mask(batch, pos):
    lengths = torch.randint(1, pos + 1, (batch,), generator=torch.Generator().manual_seed(3))
    lengths[0] = pos
    return torch.arange(pos)[None, :] < lengths[:, None]


# -------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("n_layers, expected", [(1, (0,)), (2, (0, 1)), (3, (0, 1)), (4, (1, 2)), (32, (15, 16))])
def test_default_layers_are_the_middle_ones(n_layers, expected):
    assert default_layers(n_layers) == expected


def test_adversary_layer_is_the_middle_target():
    assert adversary_layer((5, 6, 7)) == 6
    assert adversary_layer((0, 1)) == 0
    assert adversary_layer((3,)) == 3


@pytest.mark.parametrize("name", METHODS)
def test_layer_out_of_range_raises_naming_the_range(name, toy_model):
    assert toy_model.cfg.n_layers == 3
    method = create(name, layer_ids=(7,))
    with pytest.raises(ValueError, match=r"0\.\.2"):
        method.validate(toy_model)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        unlearn(toy_model, create(name, layer_ids="0-7", max_steps=1), ["a b"], ["c d"], progress=False)
    assert_no_hooks(toy_model)


@pytest.mark.parametrize("overrides", [dict(alpha=-1.0), dict(steering_coeff=0.0)])
def test_rerouting_hyperparameters_are_checked(overrides):
    for name in ("rmu", "cb", "cb_lat"):
        with pytest.raises(ValueError):
            create(name, **overrides)


def test_adversary_hyperparameters_are_checked():
    for name in ("lat", "cb_lat"):
        for overrides in (dict(lat_eps=-0.1), dict(lat_steps=-1), dict(lat_lr=0.0)):
            with pytest.raises(ValueError):
                create(name, **overrides)
    with pytest.raises(ValueError):
        create("lat", retain_weight=-1.0)
    assert create("lat", lat_eps=0.2, lat_steps=4).config.adversary_step_size == pytest.approx(0.125)
    assert create("cb_lat", lat_lr=0.01).config.adversary_step_size == 0.01


def test_random_targets_are_unit_uniform_and_seeded():
    targets = random_targets((0, 2), 32, seed=5)
    again = random_targets((2,), 32, seed=5)
    for vector in targets.values():
        assert vector.shape == (32,)
        assert float(vector.norm()) == pytest.approx(1.0, abs=1e-6)
        assert bool((vector >= 0).all())  # uniform [0, 1) before normalising: every coordinate non-negative
    assert torch.equal(targets[2], again[2])
    assert not torch.equal(targets[0], targets[2])
    assert not torch.equal(targets[0], random_targets((0,), 32, seed=6)[0])


def test_rmu_default_trainable_pattern():
    assert default_trainable((5, 6, 7)) == r"^blocks\.(5|6|7)\.mlp\.W_(in|out)$"
    assert default_trainable((0, 1)) == r"^blocks\.(0|1)\.mlp\.W_(in|out)$"
    assert default_trainable((10,)) == r"^blocks\.(8|9|10)\.mlp\.W_(in|out)$"
    pattern = re.compile(default_trainable((1, 2)))
    assert pattern.search("blocks.0.mlp.W_out") and pattern.search("blocks.2.mlp.W_in")
    assert not pattern.search("blocks.2.mlp.b_in") and not pattern.search("blocks.1.attn.W_Q")


# ------------------------------------------------------------------------------- losses on fixed tensors
def fixed_activations(seed=0, layers=(0, 2), batch=3, pos=5, d=8):
    generator = torch.Generator().manual_seed(seed)
    make = lambda: {layer: torch.randn(batch, pos, d, generator=generator) for layer in layers}  # noqa: E731
    targets = {layer: torch.rand(d, generator=generator) for layer in layers}
    targets = {layer: vector / vector.norm() for layer, vector in targets.items()}
    return make(), make(), make(), targets, padded_mask(batch, pos), padded_mask(batch, pos).flip(0)


def test_rmu_loss_matches_a_hand_computation():
    forget, retain, cached, targets, forget_mask, retain_mask = fixed_activations()
    alpha, coeff = 7.0, 3.0
    loss, metrics = rmu_loss(forget, retain, cached, targets, forget_mask, retain_mask, alpha, coeff)
    expected = 0.0
    for layer in forget:
        f = forget[layer].numpy()[forget_mask.numpy()]
        target = coeff * targets[layer].numpy()
        forget_term = np.mean((f - target) ** 2)
        retain_term = F.mse_loss(retain[layer][retain_mask], cached[layer][retain_mask]).item()
        assert metrics[f"forget_term_L{layer}"].item() == pytest.approx(forget_term, rel=1e-5)
        assert metrics[f"retain_term_L{layer}"].item() == pytest.approx(retain_term, rel=1e-5)
        expected += forget_term + alpha * retain_term
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    _, metrics = rmu_loss(forget, retain, retain, targets, forget_mask, retain_mask, alpha, coeff)
    assert metrics["retain_loss"].item() == 0.0


def test_cb_loss_matches_a_hand_computation():
    forget, retain, cached, targets, forget_mask, retain_mask = fixed_activations(seed=1)
    alpha, coeff = 4.0, 20.0

    def cosines(a, b):
        return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))

    loss, metrics = circuit_breaker_loss(forget, retain, cached, targets, forget_mask, retain_mask, alpha, coeff)
    expected = 0.0
    for layer in forget:
        f = forget[layer].numpy()[forget_mask.numpy()]
        r = retain[layer].numpy()[retain_mask.numpy()]
        c = cached[layer].numpy()[retain_mask.numpy()]
        forget_term = -cosines(f, coeff * targets[layer].numpy()[None, :]).mean()
        retain_term = 1.0 - cosines(r, c).mean()
        assert metrics[f"forget_term_L{layer}"].item() == pytest.approx(forget_term, rel=1e-5)
        assert metrics[f"retain_term_L{layer}"].item() == pytest.approx(retain_term, rel=1e-5)
        expected += forget_term + alpha * retain_term
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # scale invariance: c does not matter
    other, _ = circuit_breaker_loss(forget, retain, cached, targets, forget_mask, retain_mask, alpha, 1.0)
    assert other.item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["rmu", "cb", "cb_lat"])
def test_retain_term_is_zero_when_policy_equals_reference(name, toy_model, toy_texts):
    forget_texts, retain_texts = toy_texts
    method = create(name, lat_steps=2) if name == "cb_lat" else create(name)
    method.validate(toy_model)
    method.setup(toy_model, UnlearnContext(tokenizer=toy_model.tokenizer, reference=frozen_copy(toy_model)))
    forget, retain = tokenize(toy_model.tokenizer, forget_texts[:3]), tokenize(toy_model.tokenizer, retain_texts[:3])
    loss, metrics = method.loss(toy_model, forget, retain)
    assert loss.requires_grad
    assert metrics["retain_loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(metrics["forget_loss"].item(), abs=1e-4)
    assert_no_hooks(toy_model)
    # and the forget term is the one computed independently from run_with_cache (CB-LAT: δ changes it)
    if name != "cb_lat":
        expected = 0.0
        for layer in method.layers:
            h = resid(toy_model, forget.tokens, layer)[forget.mask]
            target = method.config.steering_coeff * method.targets[layer]
            if name == "rmu":
                expected += F.mse_loss(h, target.expand_as(h)).item()
            else:
                expected += -F.cosine_similarity(h, target[None, :], dim=-1).mean().item()
        assert metrics["forget_loss"].item() == pytest.approx(expected, rel=1e-4)


def test_loss_before_setup_explains_itself(toy_model, toy_texts):
    forget = tokenize(toy_model.tokenizer, toy_texts[0][:2])
    with pytest.raises(RuntimeError, match="setup|validate"):
        create("rmu").loss(toy_model, forget, forget)


# ----------------------------------------------------------------------------------------- the adversary
def test_pgd_adversary_contract(toy_model, toy_texts):
    batch = tokenize(toy_model.tokenizer, toy_texts[0][:4])
    assert not bool(batch.mask.all())  # the batch has padding
    for parameter in toy_model.parameters():
        parameter.requires_grad_(True)
        parameter.grad = None
    eps, layer = 0.1, 1
    delta, metrics = latent_adversary(toy_model, batch, layer, eps=eps, steps=5, step_size=0.05)
    assert delta.shape == (*batch.tokens.shape, toy_model.cfg.d_model)
    assert not delta.requires_grad
    assert float(delta.abs().max()) <= eps + 1e-7
    assert float(delta.abs().max()) > 0
    assert float(delta[~batch.mask].abs().max()) == 0.0  # nothing on padding
    assert all(parameter.grad is None for parameter in toy_model.parameters())
    assert_no_hooks(toy_model)
    clean, attacked = forget_nll(toy_model, batch), forget_nll(toy_model, batch, delta, layer)
    assert attacked <= clean
    assert metrics["forget_nll_clean"] == pytest.approx(clean, rel=1e-5)
    assert metrics["forget_nll_adversary"] == pytest.approx(attacked, rel=1e-5)
    # a bigger budget helps recall strictly
    delta, _ = latent_adversary(toy_model, batch, layer, eps=1.0, steps=3, step_size=0.5)
    assert float(delta.abs().max()) <= 1.0 + 1e-7
    assert forget_nll(toy_model, batch, delta, layer) < clean - 1e-3
    assert all(parameter.grad is None for parameter in toy_model.parameters())


def test_pgd_with_no_steps_is_no_perturbation(toy_model, toy_texts):
    batch = tokenize(toy_model.tokenizer, toy_texts[0][:2])
    delta, metrics = latent_adversary(toy_model, batch, 0, eps=0.1, steps=0, step_size=0.05)
    assert float(delta.abs().max()) == 0.0 and metrics == {}


def test_adversary_hooks_are_removed_on_error(toy_model, toy_texts):
    batch = tokenize(toy_model.tokenizer, toy_texts[0][:2])
    batch.tokens[0, 0] = toy_model.cfg.d_vocab + 5  # out of vocabulary: the embedding raises mid-forward
    with pytest.raises(Exception):
        latent_adversary(toy_model, batch, 0, eps=0.1, steps=2, step_size=0.05)
    assert_no_hooks(toy_model)
    with pytest.raises(Exception):
        layer_activations(toy_model, batch.tokens, (0, 1), delta=torch.zeros(1), delta_layer=0)
    assert_no_hooks(toy_model)


def test_perturbed_capture_includes_delta_at_its_own_layer(toy_model, toy_texts):
    """CB-LAT reads the forget activations with δ injected: at the adversary's layer h + δ, later layers
    the perturbed forward pass."""
    batch = tokenize(toy_model.tokenizer, toy_texts[0][:2])
    delta = 0.3 * torch.randn(*batch.tokens.shape, toy_model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    delta = delta * batch.mask[..., None]
    with torch.no_grad():
        captured = layer_activations(toy_model, batch.tokens, (0, 1), delta=delta, delta_layer=0,
                                     delta_mask=batch.mask)
    clean0 = resid(toy_model, batch.tokens, 0)
    assert torch.allclose(captured[0], clean0 + delta, atol=1e-5)
    assert torch.allclose(captured[1], resid(toy_model, batch.tokens, 1, delta, 0), atol=1e-5)
    assert not torch.allclose(captured[1], resid(toy_model, batch.tokens, 1), atol=1e-3)
    assert_no_hooks(toy_model)


# ---------------------------------------------------------------------------------- short unlearning runs
def rerouting_quantities(model, batch, method):
    """Per layer (summed): MSE of forget activations to c·r̂ and their cosine to r̂, from run_with_cache."""
    mse, cosine = 0.0, 0.0
    for layer in method.layers:
        h = resid(model, batch.tokens, layer)[batch.mask]
        target = method.config.steering_coeff * method.targets[layer]
        mse += F.mse_loss(h, target.expand_as(h)).item()
        cosine += F.cosine_similarity(h, target[None, :], dim=-1).mean().item()
    return mse, cosine


@pytest.fixture(scope="module")
def trained_toy_state(toy_model_dir):
    """The toy model fitted to its forget + retain texts (40 full-batch steps, about a second): a random model
    predicts near-uniformly, so rerouting its activations cannot raise a forget NLL that is already maximal."""
    from mechunlearn import models
    from mechunlearn.batching import TextBatchSource
    from mechunlearn.methods.base import nll
    from mechunlearn.training import TrainConfig, train

    model = models.load(toy_model_dir, device="cpu")
    forget_texts, retain_texts = TOY_FORGET, TOY_RETAIN
    texts = sorted(set(forget_texts + retain_texts))
    train(model, lambda current, batch: (nll(current, batch), {}),
          TextBatchSource(model.tokenizer, texts, batch_size=len(texts), seed=0),
          TrainConfig(lr=1e-2, epochs=40, batch_size=len(texts), eval_split=0.0, progress=False))
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


RUNS = {  # few steps: a TransformerLens forward pass of even the toy model costs tens of ms on a CPU
    "rmu": dict(lr=3e-3, max_steps=4, steering_coeff=5.0),  # default trainable: the target layers' MLPs
    "cb": dict(lr=1e-2, max_steps=3, alpha=10.0, trainable=r"^blocks\.[01]\.mlp\."),
    "lat": dict(lr=3e-3, max_steps=3, lat_steps=3, lat_lr=0.03, trainable=r"^blocks\.[12]\.(mlp|attn)\.W_"),
    "cb_lat": dict(lr=1e-2, max_steps=3, alpha=10.0, lat_steps=3, lat_lr=0.03, trainable=r"^blocks\.[01]\.mlp\."),
}


@pytest.mark.parametrize("name", METHODS)
def test_short_run_moves_the_defining_quantity(name, toy_model, toy_texts, trained_toy_state):
    forget_texts, retain_texts = toy_texts
    toy_model.load_state_dict(trained_toy_state)
    method = create(name, epochs=2, **RUNS[name])
    before = frozen_copy(toy_model)
    batch = tokenize(toy_model.tokenizer, forget_texts)
    result = unlearn(toy_model, method, forget_texts, retain_texts, progress=False)
    assert result.training.steps == method.config.max_steps
    assert_no_hooks(toy_model)
    pattern = re.compile(method.trainable_pattern(toy_model))
    changed = []
    for (parameter_name, old), new in zip(before.named_parameters(), toy_model.parameters()):
        if pattern.search(parameter_name):
            changed.append(not torch.equal(old, new))
        else:
            assert torch.equal(old, new), f"{parameter_name} changed although it is not trainable"
    assert any(changed)
    history = result.training.history
    assert all(np.isfinite(record["loss"]) for record in history)
    if name in ("rmu", "cb"):
        mse_before, cos_before = rerouting_quantities(before, batch, method)
        mse_after, cos_after = rerouting_quantities(toy_model, batch, method)
        if name == "rmu":
            assert mse_after < mse_before
        else:
            assert cos_after > cos_before
    else:
        assert forget_nll(toy_model, batch) > forget_nll(before, batch)
        assert all(record["forget_nll_adversary"] <= record["forget_nll_clean"] for record in history)
        assert min(record["forget_nll_adversary"] - record["forget_nll_clean"] for record in history) < 0
    if name == "cb_lat":
        _, cos_before = rerouting_quantities(before, batch, method)
        _, cos_after = rerouting_quantities(toy_model, batch, method)
        assert cos_after > cos_before


def test_rmu_default_run_trains_only_the_target_mlps(toy_model, toy_texts):
    forget_texts, retain_texts = toy_texts
    before = frozen_copy(toy_model)
    method = create("rmu", lr=1e-3, max_steps=2)
    unlearn(toy_model, method, forget_texts, retain_texts, progress=False)
    assert method.layers == (0, 1)
    for (parameter_name, old), new in zip(before.named_parameters(), toy_model.parameters()):
        trainable = re.fullmatch(r"blocks\.[01]\.mlp\.W_(in|out)", parameter_name) is not None
        assert torch.equal(old, new) != trainable, parameter_name

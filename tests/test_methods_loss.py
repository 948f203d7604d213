"""Loss-based methods (ga_simple, ga, grad_diff, dpo, npo, simnpo) and the weight-space ones (wt_dist,
wt_dist_reg): their losses against independent hand computations, and short runs through the shared loop."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechunlearn.batching import tokenize
from mechunlearn.methods import UnlearnContext, create
from mechunlearn.methods.dpo import dpo_loss
from mechunlearn.methods.npo import npo_loss
from mechunlearn.methods.simnpo import simnpo_loss
from mechunlearn.unlearn import assert_no_hooks, frozen_copy, unlearn

LOSS_METHODS = ["ga_simple", "ga", "grad_diff", "dpo", "npo", "simnpo"]
TRAINABLE = r"blocks\.1\.mlp"


# ------------------------------------------------------------------------------------ independent references
def hand_token_logprobs(model, batch):
    """Per-token log p(next token), computed directly with cross_entropy; pads get ignore_index."""
    logits = model(batch.tokens)[:, :-1].float()
    targets = batch.tokens[:, 1:].masked_fill(~batch.mask[:, 1:], -100)
    return -F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"), batch.mask[:, 1:]


def hand_nll(model, batch):
    logits = model(batch.tokens)[:, :-1].float()
    targets = batch.tokens[:, 1:].masked_fill(~batch.mask[:, 1:], -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def batches(model, texts):
    forget, retain = texts
    return tokenize(model.tokenizer, forget[:4]), tokenize(model.tokenizer, retain[1:4])  # unequal sizes on purpose


def ready(method, model, reference=None):
    method.setup(model, UnlearnContext(tokenizer=model.tokenizer, reference=reference))
    return method


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ------------------------------------------------------------------------------------------- pure formulas
def test_npo_and_dpo_formulas_at_the_reference():
    logp = torch.tensor([-12.5, -3.0, -40.0])
    for beta in (0.1, 0.5, 2.0):
        assert npo_loss(logp, logp.clone(), beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
        assert dpo_loss(logp, logp.clone(), logp[[2, 0, 1]], logp[[2, 0, 1]], beta).item() == \
            pytest.approx(math.log(2), rel=1e-6)


def test_formulas_on_fixed_tensors():
    policy, reference = np.array([-10.0, -4.0, -7.5]), np.array([-9.0, -6.0, -7.5])
    beta = 0.3
    expected_npo = -(2 / beta) * np.mean([log_sigmoid(-beta * (p - r)) for p, r in zip(policy, reference)])
    assert npo_loss(torch.tensor(policy), torch.tensor(reference), beta).item() == pytest.approx(expected_npo)
    chosen, chosen_ref = np.array([-5.0, -8.0, -2.0]), np.array([-6.0, -8.5, -1.0])
    expected_dpo = -np.mean([log_sigmoid(beta * ((c - cr) - (p - r)))
                             for c, cr, p, r in zip(chosen, chosen_ref, policy, reference)])
    assert dpo_loss(*(torch.tensor(x) for x in (chosen, chosen_ref, policy, reference)), beta).item() == \
        pytest.approx(expected_dpo)
    avg = np.array([-2.0, -0.5, -3.1])
    for beta, gamma in ((0.1, 0.0), (0.7, 0.3), (2.5, -1.0)):
        expected = -(2 / beta) * np.mean([math.log(1 / (1 + math.exp(beta * a + gamma))) for a in avg])
        assert simnpo_loss(torch.tensor(avg), beta, gamma).item() == pytest.approx(expected, rel=1e-9)


# ----------------------------------------------------------------------------- method losses on a toy model
@torch.no_grad()
def test_ga_and_grad_diff_losses_match_hand_nll(toy_model, toy_texts):
    forget, retain = batches(toy_model, toy_texts)
    forget_nll, retain_nll = hand_nll(toy_model, forget).item(), hand_nll(toy_model, retain).item()
    assert ready(create("ga_simple"), toy_model).loss(toy_model, forget, None)[0].item() == \
        pytest.approx(-forget_nll, rel=1e-5)
    loss, metrics = ready(create("ga", retain_weight=3.0), toy_model).loss(toy_model, forget, retain)
    assert loss.item() == pytest.approx(-forget_nll + 3.0 * retain_nll, rel=1e-5)
    loss, metrics = ready(create("grad_diff", forget_weight=2.5), toy_model).loss(toy_model, forget, retain)
    assert loss.item() == pytest.approx(retain_nll - 2.5 * forget_nll, rel=1e-5)
    assert float(metrics["forget_nll"]) == pytest.approx(forget_nll, rel=1e-5)
    assert float(metrics["retain_nll"]) == pytest.approx(retain_nll, rel=1e-5)


@torch.no_grad()
def test_npo_and_dpo_at_reference_on_model(toy_model, toy_texts):
    forget, retain = batches(toy_model, toy_texts)
    reference = frozen_copy(toy_model)
    retain_nll = hand_nll(toy_model, retain).item()
    loss, metrics = ready(create("npo", beta=0.2, retain_weight=1.5), toy_model, reference).loss(
        toy_model, forget, retain)
    assert loss.item() == pytest.approx(2 / 0.2 * math.log(2) + 1.5 * retain_nll, rel=1e-5)
    assert float(metrics["forget_nll"]) == pytest.approx(hand_nll(toy_model, forget).item(), rel=1e-5)
    loss, _ = ready(create("dpo", beta=0.1), toy_model, reference).loss(toy_model, forget, retain)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-5)


@torch.no_grad()
def test_npo_and_dpo_against_hand_log_ratios(toy_model, toy_texts):
    forget, retain = batches(toy_model, toy_texts)
    reference = frozen_copy(toy_model)
    with torch.no_grad():  # move the policy away from the reference
        for parameter in toy_model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)))
    seq = {}
    for key, model in (("pol", toy_model), ("ref", reference)):
        for part, batch in (("f", forget), ("r", retain)):
            logp, mask = hand_token_logprobs(model, batch)
            seq[key + part] = (logp * mask).sum(1).double().numpy()
    beta = 0.4
    expected_npo = -(2 / beta) * np.mean([log_sigmoid(-beta * (p - r)) for p, r in zip(seq["polf"], seq["reff"])])
    expected_npo += hand_nll(toy_model, retain).item()
    loss, _ = ready(create("npo", beta=beta), toy_model, reference).loss(toy_model, forget, retain)
    assert loss.item() == pytest.approx(expected_npo, rel=1e-4)
    n = len(retain)  # forget has 4 rows, retain 3: pairs are truncated to 3
    margins = (seq["polr"] - seq["refr"]) - (seq["polf"][:n] - seq["reff"][:n])
    expected_dpo = -np.mean([log_sigmoid(beta * m) for m in margins])
    loss, _ = ready(create("dpo", beta=beta), toy_model, reference).loss(toy_model, forget, retain)
    assert loss.item() == pytest.approx(expected_dpo, rel=1e-4)


@torch.no_grad()
def test_simnpo_on_model_matches_hand_average(toy_model, toy_texts):
    forget, retain = batches(toy_model, toy_texts)
    logp, mask = hand_token_logprobs(toy_model, forget)
    avg = ((logp * mask).sum(1) / mask.sum(1)).double().numpy()
    beta, gamma = 0.5, 0.2
    expected = -(2 / beta) * np.mean([log_sigmoid(-beta * a - gamma) for a in avg])
    expected += 2.0 * hand_nll(toy_model, retain).item()
    loss, _ = ready(create("simnpo", beta=beta, gamma=gamma, retain_weight=2.0), toy_model).loss(
        toy_model, forget, retain)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------- short runs: the shared loop
def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def check_excluded_unchanged(model, before, pattern=TRAINABLE):
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert changed, "nothing trained"
    assert all(re.search(pattern, name) for name in changed), f"excluded parameters changed: {changed}"


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_short_run_raises_forget_nll(name, toy_model, toy_texts):
    forget_texts, retain_texts = toy_texts
    all_forget = tokenize(toy_model.tokenizer, forget_texts)
    with torch.no_grad():
        nll_before = hand_nll(toy_model, all_forget).item()
    before = snapshot(toy_model)
    method = create(name, lr=3e-3, max_steps=2, batch_size=2, trainable=TRAINABLE)
    result = unlearn(toy_model, method, forget_texts, retain_texts, progress=False)
    assert result.training.steps == 2
    with torch.no_grad():
        nll_after = hand_nll(toy_model, all_forget).item()
    assert nll_after > nll_before + 1e-3, (name, nll_before, nll_after)
    check_excluded_unchanged(toy_model, before)
    assert_no_hooks(toy_model)
    assert all(np.isfinite(record["forget_nll"]) for record in result.training.history)


def test_wt_dist_noise_std_and_reproducible(toy_model_dir):
    from mechunlearn import models

    def noise(seed, trainable=None):
        model = models.load(toy_model_dir, device="cpu")
        before = snapshot(model)
        ready(create("wt_dist", seed=seed, noise_std=0.02, trainable=trainable), model)
        return {name: p.detach() - before[name] for name, p in model.named_parameters()}

    first, again, other = noise(0), noise(0), noise(1)
    assert torch.equal(first["unembed.b_U"], torch.zeros_like(first["unembed.b_U"]))
    flat = torch.cat([d.flatten() for name, d in first.items() if name != "unembed.b_U"])
    assert flat.numel() > 10_000
    assert flat.std().item() == pytest.approx(0.02, rel=0.03)
    assert abs(flat.mean().item()) < 0.02 * 5 / math.sqrt(flat.numel())
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["blocks.0.mlp.W_in"], other["blocks.0.mlp.W_in"])
    partial = noise(0, trainable=TRAINABLE)
    assert all((d.abs().sum() > 0) == bool(re.search(TRAINABLE, name)) for name, d in partial.items())


def test_wt_dist_run_recovers_retain_after_noise(toy_model, toy_texts):
    forget_texts, retain_texts = toy_texts
    all_retain = tokenize(toy_model.tokenizer, retain_texts)
    before = snapshot(toy_model)
    noised = copy.deepcopy(toy_model)
    ready(create("wt_dist", noise_std=0.05, trainable=TRAINABLE), noised)
    method = create("wt_dist", noise_std=0.05, lr=3e-3, max_steps=2, batch_size=2, trainable=TRAINABLE)
    unlearn(toy_model, method, forget_texts, retain_texts, progress=False)
    with torch.no_grad():
        assert hand_nll(toy_model, all_retain).item() < hand_nll(noised, all_retain).item()
    check_excluded_unchanged(toy_model, before)
    assert_no_hooks(toy_model)
    delta = torch.cat([(p.detach() - before[n]).flatten() for n, p in toy_model.named_parameters()
                       if re.search(TRAINABLE, n)])
    assert delta.std().item() == pytest.approx(0.05, rel=0.2)  # the noise dominates two small steps


@torch.no_grad()
def test_wt_dist_reg_loss_matches_hand(toy_model, toy_texts):
    forget, retain = batches(toy_model, toy_texts)
    method = ready(create("wt_dist_reg", reg_lambda=0.3, trainable=r"blocks\.0\."), toy_model)
    assert method.loss(toy_model, forget, retain)[0].item() == pytest.approx(hand_nll(toy_model, retain).item(),
                                                                             rel=1e-6)
    generator = torch.Generator().manual_seed(0)
    distance = 0.0
    for name, parameter in toy_model.named_parameters():
        delta = 0.01 * torch.randn(parameter.shape, generator=generator)
        parameter.add_(delta)
        if name.startswith("blocks.0."):
            distance += (delta.double() ** 2).sum().item()
    loss, metrics = method.loss(toy_model, forget, retain)
    assert float(metrics["weight_distance_sq"]) == pytest.approx(distance, rel=1e-4)
    assert loss.item() == pytest.approx(hand_nll(toy_model, retain).item() - 0.3 * distance, rel=1e-4)


def test_wt_dist_reg_run_moves_away_from_pretrained(toy_model, toy_texts):
    forget_texts, retain_texts = toy_texts
    before = snapshot(toy_model)

    def distance(model):
        return sum(((p.detach() - before[n]) ** 2).sum().item() for n, p in model.named_parameters())

    plain = copy.deepcopy(toy_model)
    unlearn(plain, create("wt_dist_reg", reg_lambda=0.0, lr=3e-3, max_steps=4, batch_size=2, trainable=TRAINABLE),
            forget_texts, retain_texts, progress=False)
    method = create("wt_dist_reg", reg_lambda=100.0, lr=3e-3, max_steps=4, batch_size=2, trainable=TRAINABLE)
    result = unlearn(toy_model, method, forget_texts, retain_texts, progress=False)
    distances = [record["weight_distance_sq"] for record in result.training.history]
    assert distances[0] == 0.0 and all(b > a for a, b in zip(distances, distances[1:]))
    assert distance(toy_model) > distance(plain) > 0
    check_excluded_unchanged(toy_model, before)
    assert_no_hooks(toy_model)


# ------------------------------------------------------------------------------------------ hyper-parameters
def test_defaults_match_seed():
    expected = {"ga": {"retain_weight": 1.0}, "grad_diff": {"forget_weight": 1.0}, "dpo": {"beta": 0.1},
                "npo": {"beta": 0.1, "retain_weight": 1.0}, "simnpo": {"beta": 0.1, "retain_weight": 1.0, "gamma": 0.0},
                "wt_dist": {"noise_std": 0.02}, "wt_dist_reg": {"reg_lambda": 0.1}}
    for name, values in expected.items():
        method = create(name)
        assert method.name == name and method.summary
        for key, value in values.items():
            assert getattr(method.config, key) == value
    assert create("npo").needs_reference and create("dpo").needs_reference and not create("simnpo").needs_reference
    assert create("npo", beta="0.25", retain_weight="2").config.beta == 0.25


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match=r"'beta' of npo: cannot read 'abc' as float"):
        create("npo", beta="abc")
    with pytest.raises(ValueError, match=r"unknown hyper-parameter 'nonsense' for method npo"):
        create("npo", nonsense=1)
    with pytest.raises(ValueError, match=r"beta must be > 0"):
        create("simnpo", beta=0)
    with pytest.raises(ValueError, match=r"noise_std must be >= 0"):
        create("wt_dist", noise_std=-1)

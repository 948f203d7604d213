"""Activation-space analyses (norms, separation, covariance, row space, Lipschitz) against independent numbers.

References are computed text by text with ``run_with_cache`` (no padding, so the runner's pad masks are tested
too), numpy, scipy, scikit-learn and the Hugging Face model the hooked one was converted from.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cosine as cosine_distance
from scipy.stats import wasserstein_distance

from conftest import make_neox
from mechunlearn import models
from mechunlearn.diagnostics import build_analyses, run_activation_analyses
from mechunlearn.diagnostics.activation_covariance import effective_rank, spectral_entropy

WORDS = ("wizard wand silver river mill bread market horse grey night farmer wheat tower glows keeps sells "
         "old young the a of in at to").split()
N_LAYERS, D_MODEL, D_MLP = 3, 32, 64
APPENDIX_A = ["layer", "split", "model_a_norm_L1", "model_a_norm_L2", "model_b_norm_L1", "model_b_norm_L2",
              "mean_dh_L1", "mean_dh_L2"]


def random_texts(seed: int, count: int, skew: str) -> list[str]:
    """Texts of varied length (so batches are padded); ``skew`` words are more frequent, to give a weak signal."""
    rng = random.Random(seed)
    vocabulary = list(WORDS) + skew.split() * 3
    return [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(2, 14))) for _ in range(count)]


FORGET = random_texts(0, 20, "wizard wand silver tower")
RETAIN = random_texts(1, 20, "farmer wheat bread market")
SPLITS = {"forget": FORGET, "retain": RETAIN}


def neox_like(tokenizer, seed: int):
    return make_neox(vocab_size=len(tokenizer), hidden_size=D_MODEL, layers=N_LAYERS, heads=4,
                     intermediate=D_MLP, seed=seed)


@pytest.fixture(scope="module")
def pair(toy_model_dir):
    """Two random models of the same shape sharing the toy tokenizer."""
    base = models.load(toy_model_dir, device="cpu")
    other = models.from_hf(neox_like(base.tokenizer, seed=1), base.tokenizer, device="cpu")
    return {"base": base, "other": other}


@pytest.fixture(scope="module")
def identical_pair(toy_model_dir):
    return {"base": models.load(toy_model_dir, device="cpu"), "other": models.load(toy_model_dir, device="cpu")}


def run(names, model_pair, options=None, **runner_options):
    return run_activation_analyses(build_analyses(names, options), model_pair, SPLITS, batch_size=6,
                                   progress=False, **runner_options)


def token_ids(model, text):
    return torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"]])


def per_text_cache(model, texts, hook_names):
    """``{hook: [array[tokens, d] per text]}``, one unpadded forward pass per text."""
    out = {hook: [] for hook in hook_names}
    for text in texts:
        _, cache = model.run_with_cache(token_ids(model, text), names_filter=lambda name: name in hook_names)
        for hook in hook_names:
            out[hook].append(cache[hook][0].double().numpy())
    return out


def residual_hooks(model):
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]


# ------------------------------------------------------------------------------------------------------------- norms
def test_activation_norms_match_numpy(pair):
    frame = run(["activation_comparison"], pair)["activation_comparison"].frame
    assert list(frame.columns) == APPENDIX_A
    hooks = residual_hooks(pair["base"])
    for split, texts in SPLITS.items():
        base = per_text_cache(pair["base"], texts, hooks)
        other = per_text_cache(pair["other"], texts, hooks)
        for layer, hook in enumerate(hooks):
            a, b = np.concatenate(base[hook]), np.concatenate(other[hook])
            expected = [np.abs(a).sum(1).mean(), np.linalg.norm(a, axis=1).mean(), np.abs(b).sum(1).mean(),
                        np.linalg.norm(b, axis=1).mean(), np.abs(b - a).sum(1).mean(),
                        np.linalg.norm(b - a, axis=1).mean()]
            row = frame[(frame["layer"] == layer) & (frame["split"] == split)]
            np.testing.assert_allclose(row[APPENDIX_A[2:]].to_numpy()[0], expected, rtol=1e-5)


def test_layer_numbering_matches_hf_hidden_states(toy_model_dir):
    """Layers 0..N-1 are HF's hidden_states; HF's last one has the final LayerNorm applied, ours does not."""
    from transformers import GPTNeoXForCausalLM

    hooked = models.load(toy_model_dir, device="cpu")
    hf = GPTNeoXForCausalLM.from_pretrained(toy_model_dir).eval()
    tokens = token_ids(hooked, FORGET[0])
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    _, cache = hooked.run_with_cache(tokens)
    hooks = residual_hooks(hooked)
    for layer in range(hooked.cfg.n_layers):
        torch.testing.assert_close(cache[hooks[layer]], hidden[layer], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hooked.ln_final(cache[hooks[-1]]), hidden[-1], atol=1e-4, rtol=1e-4)


def test_identical_models_give_zero_difference(identical_pair):
    results = run(["activation_comparison", "activation_covariance", "row_space_projection", "lipschitzness"],
                  identical_pair, {"lipschitzness": {"max_texts": 6, "n_samples": 3}})
    norms = results["activation_comparison"].frame
    assert (norms[["mean_dh_L1", "mean_dh_L2"]] == 0).all().all()
    np.testing.assert_array_equal(norms["model_a_norm_L2"], norms["model_b_norm_L2"])
    covariance = results["activation_covariance"]
    assert (covariance.frame["wasserstein"] == 0).all()
    assert covariance.tables["selectivity"]["selectivity"].isna().all()  # 0 / 0
    row_space = results["row_space_projection"]
    assert (row_space.tables["subspaces"]["rank"] == 0).all() and (row_space.frame["projection_share"] == 0).all()
    lipschitz = results["lipschitzness"]
    base, other = (lipschitz.frame[lipschitz.frame["model"] == name].reset_index(drop=True)
                   for name in ("base", "other"))
    pd.testing.assert_frame_equal(base.drop(columns="model"), other.drop(columns="model"))
    assert np.allclose(lipschitz.tables["ratios"].drop(columns="split").to_numpy(), 1.0)


# -------------------------------------------------------------------------------------------------------- separation
def test_separation_matches_sklearn_numpy_scipy(pair):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    result = run(["activation_separation"], pair)["activation_separation"]
    frame = result.frame
    assert set(frame["model"]) == {"base", "other"}
    for model_name, model in pair.items():
        hooks = residual_hooks(model)
        forget, retain = per_text_cache(model, FORGET, hooks), per_text_cache(model, RETAIN, hooks)
        for layer, hook in enumerate(hooks):
            row = frame[(frame["model"] == model_name) & (frame["layer"] == layer)].iloc[0]
            tokens_f, tokens_r = np.concatenate(forget[hook]), np.concatenate(retain[hook])
            assert row["cosine_distance"] == pytest.approx(
                cosine_distance(tokens_f.mean(0), tokens_r.mean(0)), rel=1e-5, abs=1e-9)
            everything = np.concatenate([tokens_f, tokens_r])
            between = sum(len(x) * ((x.mean(0) - everything.mean(0)) ** 2).sum() for x in (tokens_f, tokens_r))
            within = sum(((x - x.mean(0)) ** 2).sum() for x in (tokens_f, tokens_r))
            assert row["variance_ratio"] == pytest.approx(between / within, rel=1e-5)
            pooled = np.array([x.mean(0) for x in forget[hook] + retain[hook]])
            labels = np.r_[np.ones(len(FORGET)), np.zeros(len(RETAIN))]
            # the shared topic probe's folds: stratified, shuffled with seed 0 (probing.forget_vs_retain_probe)
            scores = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000,
                                                                                          random_state=0)),
                                       pooled, labels, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                                       method="decision_function")
            # float32 batched vs float64 per-text features may swap a near-tied pair: allow one or two swaps
            assert row["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=0.01)
    assert 0.0 <= frame["auc"].min() and frame["auc"].max() <= 1.0
    assert result.summary["base"]["layer_of_max_auc"] in range(N_LAYERS + 1)


def test_separation_bounds_texts_kept_for_auc(pair):
    frame = run(["activation_separation"], pair, {"activation_separation": {"max_texts": 7}})[
        "activation_separation"].frame
    assert (frame["n_texts_forget"] == 7).all() and (frame["n_texts_retain"] == 7).all()
    assert frame["auc"].between(0, 1).all()


# -------------------------------------------------------------------------------------------------------- covariance
def test_effective_rank_of_known_spectra():
    assert effective_rank(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert effective_rank(np.array([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 log 2, exp(H) = 2 ** 1.5
    assert spectral_entropy(np.array([2.0, 1.0, 1.0])) == pytest.approx(1.5 * np.log(2))
    assert effective_rank(np.array([2.0, 1.0, 1.0])) == pytest.approx(2 ** 1.5)
    assert effective_rank(np.zeros(3)) == pytest.approx(1.0)


def test_covariance_matches_numpy_and_scipy(pair):
    result = run(["activation_covariance"], pair)["activation_covariance"]
    frame, hooks = result.frame, residual_hooks(pair["base"])
    for split, texts in SPLITS.items():
        caches = {name: per_text_cache(model, texts, hooks) for name, model in pair.items()}
        for layer, hook in enumerate(hooks):
            row = frame[(frame["layer"] == layer) & (frame["split"] == split)].iloc[0]
            spectra = {}
            for name in pair:
                tokens = np.concatenate(caches[name][hook])
                spectra[name] = np.clip(np.linalg.eigvalsh(np.cov(tokens, rowvar=False))[::-1], 0, None)
                shares = spectra[name] / spectra[name].sum()
                shares = shares[shares > 0]
                assert row[f"{name}_effective_rank"] == pytest.approx(np.exp(-(shares * np.log(shares)).sum()),
                                                                      rel=1e-4)
            assert row["wasserstein"] == pytest.approx(wasserstein_distance(spectra["base"], spectra["other"]),
                                                       rel=1e-4)
    selectivity = result.tables["selectivity"]
    np.testing.assert_allclose(selectivity["selectivity"],
                               selectivity["wasserstein_forget"] / selectivity["wasserstein_retain"])
    assert set(result.tables["spectra"]["model"]) == {"base", "other"}


def test_covariance_memory_budget_picks_evenly_spaced_layers(pair):
    from mechunlearn.diagnostics.activation_covariance import ActivationCovariance

    per_layer_gb = 2 * 2 * D_MODEL * D_MODEL * 8 / 1e9
    analysis = ActivationCovariance(memory_budget_gb=3 * per_layer_gb)
    assert analysis.hook_names(pair["base"]) == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post",
                                                 "blocks.2.hook_resid_post"]  # layers 0, 2, 3 of 0..3


# --------------------------------------------------------------------------------------------------------- row space
def edited_pair(tokenizer, inside: list[int], edit_directions: list[int]):
    """Base and other differing only in W_in along ``edit_directions`` (coordinates of d_model); every MLP input
    of the base lies in the span of the ``inside`` coordinates (ln2 weight zero elsewhere, bias zero)."""
    base_hf = neox_like(tokenizer, seed=3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in base_hf.gpt_neox.layers:
            keep = torch.zeros(D_MODEL)
            keep[inside] = 1.0
            layer.post_attention_layernorm.weight.mul_(keep)
            layer.post_attention_layernorm.bias.zero_()
    other_hf = neox_like(tokenizer, seed=3)
    other_hf.load_state_dict(base_hf.state_dict())
    with torch.no_grad():
        for layer in other_hf.gpt_neox.layers:
            for direction in edit_directions:  # HF weight is [d_mlp, d_model] = W_in^T: add v e_i^T
                layer.mlp.dense_h_to_4h.weight[:, direction] += torch.randn(D_MLP, generator=generator)
    return {"base": models.from_hf(base_hf, tokenizer, device="cpu"),
            "other": models.from_hf(other_hf, tokenizer, device="cpu")}


def test_row_space_share_is_one_inside_and_zero_outside_the_subspace(toy_model):
    inside = [0, 3, 5, 8]
    result = run(["row_space_projection"], edited_pair(toy_model.tokenizer, inside, inside))["row_space_projection"]
    assert (result.tables["subspaces"]["rank"] == len(inside)).all()
    assert (result.frame["k"] == len(inside)).all()  # top_k = 10 is more than the rank
    np.testing.assert_allclose(result.frame["projection_share"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(result.tables["selectivity"]["selectivity"], 1.0, rtol=1e-6)
    outside = run(["row_space_projection"], edited_pair(toy_model.tokenizer, inside, [1, 2, 30]))[
        "row_space_projection"].frame
    np.testing.assert_allclose(outside["projection_share"], 0.0, atol=1e-10)


def test_row_space_share_matches_numpy(pair):
    top_k = 5
    frame = run(["row_space_projection"], pair, {"row_space_projection": {"top_k": top_k}})[
        "row_space_projection"].frame
    base, other = pair["base"], pair["other"]
    for layer in range(N_LAYERS):
        delta = (other.blocks[layer].mlp.W_in - base.blocks[layer].mlp.W_in).detach().double().numpy()
        left = np.linalg.svd(delta)[0][:, :top_k]  # input space = rows of the [d_model, d_mlp] matrix
        ln2, mlp = base.blocks[layer].ln2, base.blocks[layer].mlp
        w_in, b_in = mlp.W_in.detach().double().numpy(), mlp.b_in.detach().double().numpy()
        hooks = [f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.mlp.hook_pre"]
        for split, texts in SPLITS.items():
            cache = per_text_cache(base, texts, hooks)
            normalized = np.concatenate(cache[hooks[0]])
            inputs = normalized * ln2.w.detach().double().numpy() + ln2.b.detach().double().numpy()
            # what W_in multiplies: the LayerNorm's affine output, not hook_normalized itself
            np.testing.assert_allclose(inputs @ w_in + b_in, np.concatenate(cache[hooks[1]]), atol=1e-4)
            expected = ((inputs @ left) ** 2).sum() / (inputs ** 2).sum()
            row = frame[(frame["layer"] == layer) & (frame["split"] == split)].iloc[0]
            assert row["projection_share"] == pytest.approx(expected, rel=1e-5)
            assert row["random_baseline"] == pytest.approx(top_k / D_MODEL)


# --------------------------------------------------------------------------------------------------------- lipschitz
def test_lipschitz_gradient_norm_matches_hf_and_leaves_no_trace(toy_model_dir, pair):
    """The NLL-gradient norm w.r.t. input embeddings, recomputed with the HF model's ``inputs_embeds``."""
    from transformers import GPTNeoXForCausalLM

    options = {"lipschitzness": {"max_texts": 5, "n_samples": 2}}
    frame = run(["lipschitzness"], pair, options)["lipschitzness"].frame
    hf = GPTNeoXForCausalLM.from_pretrained(toy_model_dir).eval()
    for split, texts in SPLITS.items():
        norms = []
        for text in texts[:5]:
            tokens = token_ids(pair["base"], text)
            if tokens.shape[1] < 2:
                continue
            embeddings = hf.gpt_neox.embed_in(tokens).detach().requires_grad_(True)
            logits = hf(inputs_embeds=embeddings).logits
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:])
            norms.append(torch.autograd.grad(nll, embeddings)[0].norm().item())
        row = frame[(frame["split"] == split) & (frame["model"] == "base")].iloc[0]
        assert row["grad_norm_mean"] == pytest.approx(np.mean(norms), rel=1e-3)
        assert row["n_texts"] == 5
    for model in pair.values():  # no hook left behind, no parameter gradient written
        assert all(not hook_point._forward_hooks for hook_point in model.hook_dict.values())
        assert all(parameter.grad is None for parameter in model.parameters())


def test_lipschitz_output_variance_scales_with_epsilon_squared(pair):
    """In the linear regime the logit shift is J delta, so its variance across draws grows as epsilon^2."""
    variances = [run(["lipschitzness"], pair, {"lipschitzness": {"max_texts": 6, "n_samples": 4, "epsilon": eps}})[
        "lipschitzness"].frame.set_index(["split", "model"])["output_variance"] for eps in (1e-3, 2e-3)]
    np.testing.assert_allclose(variances[1] / variances[0], 4.0, rtol=0.02)


# -------------------------------------------------------------------------------------------------------- pictures
def test_results_save_data_and_figures(pair, tmp_path):
    results = run(["activation_comparison", "activation_separation", "activation_covariance",
                   "row_space_projection", "lipschitzness"], pair,
                  {"lipschitzness": {"max_texts": 4, "n_samples": 2}})
    for name, result in results.items():
        figure = result.figure()
        assert len(figure.data) >= 2, name
        directory = result.save(tmp_path / name)
        saved = pd.read_csv(directory / f"{name}.csv")
        assert list(saved.columns) == list(result.frame.columns)
        assert (directory / f"{name}.html").is_file() and (directory / "summary.json").is_file()
    assert list(pd.read_csv(tmp_path / "activation_comparison" / "activation_comparison.csv").columns) == APPENDIX_A

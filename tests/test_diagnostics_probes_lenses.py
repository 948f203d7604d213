"""Linear probes, logit lens and tuned lens against independent computations (sklearn, unpadded forward passes)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mechunlearn import models
from mechunlearn.batching import TokenBatch, tokenize
from mechunlearn.data import MCQItem
from mechunlearn.diagnostics import run_activation_analyses, run_analyses
from mechunlearn.diagnostics.lens_training import lens_kl, load_or_train_tuned_lens, train_tuned_lens
from mechunlearn.diagnostics.lenses import LogitLens, TunedLens
from mechunlearn.diagnostics.linear_probes import LinearProbes
from mechunlearn.diagnostics.logit_lens import LogitLensAnalysis
from mechunlearn.diagnostics.mcq_by_layer import mcq_layer_scores
from mechunlearn.diagnostics.probing import forget_vs_retain_probe
from mechunlearn.diagnostics.tuned_lens import TunedLensAnalysis
from mechunlearn.storage import model_digest

WORDS = ["the", "wizard", "Orlo", "keeps", "silver", "wand", "farmer", "grows", "wheat", "river", "market",
         "bread", "Pell", "horse", "mill", "night", "children", "play", "grey", "young"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster and immune to a busy machine's thread contention."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):  # numpy/scipy BLAS too: sklearn's tiny fits are 4x faster on one thread
        yield
    torch.set_num_threads(threads)


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(count)]


@pytest.fixture
def lively_model(toy_model, neox_factory):
    """A random model with perturbed LayerNorms and weights large enough that its layers disagree."""
    hf = neox_factory(vocab_size=toy_model.cfg.d_vocab, hidden_size=32, layers=3, heads=4, intermediate=64, seed=3)
    with torch.no_grad():
        for parameter in hf.parameters():
            parameter.add_(0.15 * torch.randn_like(parameter))
    return models.from_hf(hf, toy_model.tokenizer, device="cpu", dtype="fp32")


def last_token_features(model, texts: list[str], hooks: list[str]) -> dict[str, np.ndarray]:
    """Independent capture: one unpadded run_with_cache per text; hook -> [texts, d_model]."""
    rows: dict[str, list[np.ndarray]] = {hook: [] for hook in hooks}
    for text in texts:
        _, cache = model.run_with_cache(tokenize(model.tokenizer, [text]).tokens, names_filter=hooks)
        for hook in hooks:
            rows[hook].append(cache[hook][0, -1].numpy())
    return {hook: np.stack(value) for hook, value in rows.items()}


# ------------------------------------------------------------------------------------------------------- probes
@pytest.mark.parametrize("standardize", [True, False])
def test_probe_matches_independent_sklearn_fit(lively_model, standardize):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    # same word pool for both splits: a non-trivial probe (AUC strictly between 0 and 1 on some layer)
    forget, retain = random_texts(24, seed=1), random_texts(18, seed=2)
    analysis = LinearProbes(standardize=standardize, cv_folds=4, seed=7)
    result = run_activation_analyses([analysis], {"m": lively_model}, {"forget": forget, "retain": retain},
                                     batch_size=5, progress=False)["linear_probes"]
    assert list(result.frame["layer"]) == [0, 1, 2, 3]
    hooks = list(result.frame["hook"])
    forget_rows, retain_rows = (last_token_features(lively_model, texts, hooks) for texts in (forget, retain))
    for _, row in result.frame.iterrows():
        features = np.concatenate([forget_rows[row["hook"]], retain_rows[row["hook"]]]).astype(np.float64)
        labels = np.r_[np.ones(len(forget)), np.zeros(len(retain))].astype(int)
        decision = np.zeros(len(labels))
        for train, test in StratifiedKFold(4, shuffle=True, random_state=7).split(features, labels):
            scaler = StandardScaler().fit(features[train]) if standardize else None
            transform = scaler.transform if scaler else (lambda x: x)
            probe = LogisticRegression(C=1.0, max_iter=1000, random_state=7)
            probe.fit(transform(features[train]), labels[train])
            decision[test] = probe.decision_function(transform(features[test]))
            assert np.array_equal(probe.predict(transform(features[test])), (decision[test] > 0).astype(int))
        accuracy = np.mean((decision > 0) == labels)
        assert row["auc"] == pytest.approx(roc_auc_score(labels, decision), abs=1e-6)
        assert row["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert row["majority_baseline"] == pytest.approx(24 / 42)
        assert row["selectivity"] == pytest.approx(accuracy - 24 / 42, abs=1e-9)
        assert (row["n_forget"], row["n_retain"]) == (24, 18)
    assert result.frame["auc"].between(0.02, 0.98).any()  # not a degenerate all-perfect comparison


def test_selectivity_on_separable_activations_is_one_minus_baseline(toy_model):
    """Hand-built last-token states: forget rows at +3 e_0, retain at -3 e_0 (padding after the last token)."""
    analysis = LinearProbes()
    hooks = analysis.hook_names(toy_model)
    analysis.start({"m": toy_model})
    generator = torch.Generator().manual_seed(0)
    for split, sign, count in (("forget", 1.0, 30), ("retain", -1.0, 10)):
        lengths = torch.randint(2, 6, (count,), generator=generator)
        mask = torch.arange(6)[None] < lengths[:, None]
        activation = torch.randn(count, 6, toy_model.cfg.d_model, generator=generator)
        last = (torch.arange(count), lengths - 1)
        activation[last[0], last[1], 0] = sign * 3 + 0.1 * activation[last[0], last[1], 0]
        activation[last[0], last[1], 1:] = 0.0  # constant: no noise dimension to overfit
        activation[~mask] = -sign * 100  # padding would flip every label if it were read
        batch = TokenBatch(torch.zeros_like(mask, dtype=torch.long), mask)
        analysis.update(split, {"m": {hook: activation for hook in hooks}}, batch)
    frame = analysis.result().frame
    assert np.allclose(frame["majority_baseline"], 0.75)
    assert np.allclose(frame["accuracy"], 1.0) and np.allclose(frame["auc"], 1.0)
    assert np.allclose(frame["selectivity"], 1 - 0.75)
    direct = forget_vs_retain_probe(np.r_[np.ones((5, 2))], -np.ones((5, 2)) + 0.01 * np.arange(10).reshape(5, 2))
    assert direct["selectivity"] == pytest.approx(0.5)


def test_probe_errors_are_clear(toy_model):
    with pytest.raises(ValueError, match="at least 2 forget"):
        forget_vs_retain_probe(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="C"):
        LinearProbes(C=0.0)
    analysis = LinearProbes()
    run = lambda: run_activation_analyses([analysis], {"m": toy_model}, {"forget": ["a b c", "b c d"]},  # noqa: E731
                                          progress=False)
    with pytest.raises(ValueError, match="'retain' was never fed"):
        run()


# -------------------------------------------------------------------------------------------------- logit lens
def test_logit_lens_at_last_layer_is_the_model(lively_model):
    model, n_layers = lively_model, lively_model.cfg.n_layers
    tokens = tokenize(model.tokenizer, random_texts(3, seed=4)).tokens
    logits, cache = model.run_with_cache(tokens)
    lens = LogitLens(model)
    torch.testing.assert_close(lens(cache[f"blocks.{n_layers - 1}.hook_resid_post"], n_layers), logits,
                               atol=1e-5, rtol=0)
    assert (lens(cache["blocks.0.hook_resid_post"], 1) - logits).abs().max() > 1e-2  # earlier layers differ
    with pytest.raises(ValueError, match="out of range"):
        lens(cache["blocks.0.hook_resid_post"], n_layers + 1)


def make_items(model, count: int, seed: int, domain: str) -> list[MCQItem]:
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
        choices = tuple(rng.sample(WORDS, 4))
        items.append(MCQItem(question, choices, rng.randrange(4), domain=domain))
    return items


@torch.no_grad()
def independent_mcq_scores(model, item: MCQItem) -> list[float]:
    """Each choice's summed log-probability from the model's own logits on the unpadded full string."""
    scores = []
    for choice in item.choices:
        prefix = len(model.tokenizer(item.question, add_special_tokens=False)["input_ids"])
        tokens = tokenize(model.tokenizer, [item.question + " " + choice]).tokens
        logprobs = torch.log_softmax(model(tokens)[0].double(), dim=-1)
        scores.append(float(sum(logprobs[p - 1, tokens[0, p]] for p in range(prefix, tokens.shape[1]))))
    return scores


def test_logit_lens_mcq_final_layer_matches_independent_scorer(lively_model):
    model = lively_model
    items = make_items(model, 12, seed=5, domain="forget") + make_items(model, 8, seed=6, domain="retain")
    expected = [independent_mcq_scores(model, item) for item in items]
    scores = mcq_layer_scores(model, items, batch_size=7)
    for got, want in zip(scores, expected):
        assert got.shape == (4, model.cfg.n_layers + 1)
        np.testing.assert_allclose(got[:, -1], want, atol=1e-4)
    result = run_analyses([LogitLensAnalysis(items=items, batch_size=7)], {"m": model})["logit_lens"]
    final = result.frame[result.frame["layer"] == model.cfg.n_layers].set_index("domain")
    for domain in ("forget", "retain"):
        chosen = [(int(np.argmax(s)), item.answer) for s, item in zip(expected, items) if item.domain == domain]
        assert final.loc[domain, "accuracy"] == pytest.approx(np.mean([a == b for a, b in chosen]))
        assert final.loc[domain, "chance"] == pytest.approx(0.25)
    assert np.allclose(result.frame.query("layer == 3")["delta_from_final"], 0)
    by_layer = result.frame.set_index(["domain", "layer"])
    assert np.allclose(by_layer["delta_from_final"],
                       by_layer["accuracy"] - final.loc[by_layer.index.get_level_values(0), "accuracy"].to_numpy())


def test_lens_mcq_options_and_errors(lively_model):
    class World:  # the world's interface: mcq_items(domain)
        def mcq_items(self, domain):
            return make_items(lively_model, 3, seed=len(domain), domain=domain)

    frame = LogitLensAnalysis(world=World()).run({"m": lively_model}).frame
    assert set(frame["domain"]) == {"forget", "retain"} and set(frame["n_items"]) == {3}
    with pytest.raises(ValueError, match="exactly one of items"):
        LogitLensAnalysis()
    with pytest.raises(ValueError, match="train_texts"):
        TunedLensAnalysis(items=make_items(lively_model, 2, 0, "forget"))
    with pytest.raises(ValueError, match="empty question"):
        mcq_layer_scores(lively_model, [MCQItem("", ("a", "b"), 0)])


# -------------------------------------------------------------------------------------------------- tuned lens
def test_untrained_tuned_lens_is_the_logit_lens(lively_model):
    tokens = tokenize(lively_model.tokenizer, random_texts(3, seed=8)).tokens
    _, cache = lively_model.run_with_cache(tokens)
    tuned, logit = TunedLens(lively_model), LogitLens(lively_model)
    for layer in range(lively_model.cfg.n_layers + 1):
        hook = "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"
        assert torch.equal(tuned(cache[hook], layer), logit(cache[hook], layer))
    items = make_items(lively_model, 5, seed=9, domain="forget")
    for a, b in zip(mcq_layer_scores(lively_model, items, tuned), mcq_layer_scores(lively_model, items, logit)):
        assert np.array_equal(a, b)


def test_tuned_lens_training_lowers_kl_and_leaves_the_model_alone(lively_model):
    before = {name: p.detach().clone() for name, p in lively_model.named_parameters()}
    train, held_out = random_texts(40, seed=10), random_texts(12, seed=11)
    lens, losses = train_tuned_lens(lively_model, train, steps=60, lr=3e-3, batch_size=8)
    batch = tokenize(lively_model.tokenizer, held_out)
    with torch.no_grad():
        kl_zero = float(lens_kl(lively_model, TunedLens(lively_model), batch.tokens, batch.mask))
        kl_trained = float(lens_kl(lively_model, lens, batch.tokens, batch.mask))
    print(f"train KL {losses[0]:.4f} -> {losses[-1]:.4f}; held-out KL {kl_zero:.4f} -> {kl_trained:.4f}")
    assert losses[-1] < 0.7 * losses[0]
    assert kl_trained < 0.8 * kl_zero
    for name, parameter in lively_model.named_parameters():
        assert torch.equal(parameter, before[name]) and parameter.grad is None, name


def test_tuned_lens_cache_reloads_identical_parameters(lively_model, tmp_path):
    texts = random_texts(16, seed=12)
    first, info = load_or_train_tuned_lens(lively_model, texts, steps=5, cache_dir=tmp_path)
    second, info_again = load_or_train_tuned_lens(lively_model, texts, steps=5, cache_dir=tmp_path)
    assert not info["loaded"] and info_again["loaded"] and info["path"] == info_again["path"]
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert any(p.abs().sum() > 0 for p in second.parameters())  # trained, not a fresh zero lens
    digest = model_digest(lively_model)
    with torch.no_grad():
        lively_model.blocks[0].mlp.W_in[0, 0] += 1e-3
    assert model_digest(lively_model) != digest
    _, info_changed = load_or_train_tuned_lens(lively_model, texts, steps=5, cache_dir=tmp_path)
    assert not info_changed["loaded"] and info_changed["path"] != info["path"]


def test_tuned_lens_analysis_runs_per_model_and_saves(lively_model, toy_model, tmp_path):
    items = make_items(lively_model, 6, seed=13, domain="forget")
    analysis = TunedLensAnalysis(items=items, train_texts=random_texts(16, seed=14), steps=4, cache_dir=tmp_path / "c")
    result = run_analyses([analysis], {"a": lively_model, "b": toy_model})["tuned_lens"]
    assert list(result.frame.columns[:4]) == ["model", "domain", "layer", "accuracy"]
    assert set(result.frame["model"]) == {"a", "b"} and len(result.frame) == 2 * 4
    assert not result.summary["models"]["a"]["loaded"]
    out = result.save(tmp_path / "out")
    assert (out / "tuned_lens.csv").is_file() and (out / "tuned_lens.html").is_file()

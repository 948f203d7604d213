"""The shared unlearning loop and run bookkeeping: keys, skip-if-done, no hooks left, bad input, NaN losses."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import pytest
import torch

from mechunlearn import models
from mechunlearn.methods import UnlearningMethod, create, get_method
from mechunlearn.methods.base import MethodConfig
from mechunlearn.training import TrainingError
from mechunlearn.unlearn import assert_no_hooks, run, run_key, run_name, unlearn
from conftest import TOY_FORGET  # noqa: F401  (toy texts for the long-text test)


def test_unknown_method_lists_known():
    with pytest.raises(ValueError, match="known methods: .*npo.*whp"):
        get_method("forgetful")


def test_every_builtin_method_resolves():
    from mechunlearn.methods import available

    for name in available():
        method = create(name)
        assert method.name == name
        assert isinstance(method.config, MethodConfig)


def test_world_preset_and_overrides():
    method = create("npo", preset="world", beta="0.3")
    assert method.config.beta == 0.3 and method.config.lr != 1e-5  # explicit flag wins, preset sets the rest
    assert create("npo").config.lr == 1e-5  # seed default without a preset
    with pytest.raises(ValueError, match="unknown hyper-parameter preset"):
        create("npo", preset="tiny")


def test_key_changes_with_every_hyperparameter():
    base = create("npo")
    keys = {run_key(base, "m", "d")}
    for name, value in [("beta", 0.2), ("lr", 2e-5), ("retain_weight", 2.0), ("seed", 1), ("trainable", "blocks")]:
        keys.add(run_key(create("npo", **{name: value}), "m", "d"))
    assert len(keys) == 6
    assert run_key(base, "m", "d") != run_key(base, "m", "other-data")
    assert run_name(create("npo", beta=0.2), "abc") == "npo__beta0.2__abc"


def test_empty_forget_set(toy_model):
    with pytest.raises(ValueError, match="forget set is empty"):
        unlearn(toy_model, create("ga"), [], ["retain text"], progress=False)


def test_reference_of_another_shape(toy_model, toy_texts, neox_factory):
    forget, retain = toy_texts
    other = models.from_hf(neox_factory(vocab_size=toy_model.cfg.d_vocab, hidden_size=64, layers=2), device="cpu")
    with pytest.raises(ValueError, match="another shape"):
        unlearn(toy_model, create("npo", max_steps=1), forget, retain, reference=other, progress=False)


@dataclass
class ExplodingConfig(MethodConfig):
    explode_at: int = 2


class Exploding(UnlearningMethod):
    name = "exploding-test-method"
    Config = ExplodingConfig
    needs_retain = False

    def setup(self, model, context):
        super().setup(model, context)
        self.calls = 0

    def loss(self, model, forget, retain):
        self.calls += 1
        logits = model(forget.tokens)
        value = logits.mean()
        return (value * float("nan") if self.calls > self.config.explode_at else value), {}


def test_nan_loss_stops_names_step_and_writes_nothing(tmp_path, toy_model_dir, toy_texts):
    forget, retain = toy_texts
    method = Exploding(ExplodingConfig(explode_at=1, batch_size=2))
    with pytest.raises(TrainingError, match="at optimiser step 1"):
        run(method, toy_model_dir, tmp_path / "runs", forget, retain, progress=False, device="cpu")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_run_writes_model_and_record_then_skips(tmp_path, toy_model_dir, toy_texts):
    from transformers import AutoModelForCausalLM

    forget, retain = toy_texts
    method = create("ga", lr=1e-3, max_steps=2, batch_size=4)
    calls = []
    first = run(method, toy_model_dir, tmp_path, forget, retain, progress=False, device="cpu",
                evaluate=lambda model: calls.append(1) or {"probe": 1.0})
    record = json.loads((first / "run.json").read_text())
    assert record["method"] == "ga" and record["steps"] == 2 and record["metrics"] == {"probe": 1.0}
    assert record["config"]["lr"] == 1e-3 and len(record["loss_history"]) == 2
    hf = AutoModelForCausalLM.from_pretrained(first / "model")  # a plain HF checkpoint
    reloaded = models.load(first / "model", device="cpu")
    tokens = torch.arange(6).unsqueeze(0)
    with torch.no_grad():
        assert (hf(tokens).logits - reloaded(tokens)).abs().max() < 1e-4
    mtime = (first / "run.json").stat().st_mtime
    again = run(method, toy_model_dir, tmp_path, forget, retain, progress=False, device="cpu",
                evaluate=lambda model: calls.append(1) or {})
    assert again == first and (first / "run.json").stat().st_mtime == mtime and len(calls) == 1
    forced = run(method, toy_model_dir, tmp_path, forget, retain, progress=False, device="cpu", force=True)
    assert forced == first and (first / "run.json").stat().st_mtime != mtime


def test_no_hooks_left_after_an_exception(toy_model, toy_texts):
    forget, retain = toy_texts

    class Raising(UnlearningMethod):
        name = "raising-test-method"

        def loss(self, model, forget_batch, retain_batch):
            model.add_hook("blocks.0.hook_resid_post", lambda activation, hook: activation)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        unlearn(toy_model, Raising(), forget, retain, progress=False)
    assert_no_hooks(toy_model)
    assert all(parameter.requires_grad for name, parameter in toy_model.named_parameters())


# ------------------------------------------------------------------------------- what belongs to the user stays
def test_temporary_user_hooks_are_refused_and_left_alone(toy_model, toy_texts):
    from mechunlearn.unlearn import HooksPresentError

    forget, retain = toy_texts
    steering = lambda activation, hook: activation + 1.0  # noqa: E731
    with toy_model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", steering)]):
        with pytest.raises(HooksPresentError, match=r"blocks\.1\.hook_resid_post.*is_permanent=True"):
            unlearn(toy_model, create("ga", max_steps=1), forget, retain, progress=False)
        assert len(toy_model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks) == 1  # untouched
    toy_model.add_hook("blocks.0.hook_resid_pre", steering)
    with pytest.raises(HooksPresentError, match="temporary hook"):
        unlearn(toy_model, create("ga", max_steps=1), forget, retain, progress=False)


def test_permanent_hooks_and_spliced_modules_are_part_of_the_model(toy_model, toy_texts):
    """A permanent hook and a module spliced in place of a hook point stay, shape the training, and are in the
    frozen reference (NPO's log-ratio is exactly 0 at step 0 only if the reference computes what the model does)."""
    from transformer_lens.hook_points import HookPoint

    forget, retain = toy_texts

    class Halve(HookPoint):  # an SAE-like splice: a hookable module standing where the hook point stood
        def forward(self, x):
            return 0.5 * x

    toy_model.blocks[0].mlp.hook_post = Halve()
    toy_model.setup()
    calls = []
    toy_model.add_perma_hook("blocks.1.hook_resid_post", lambda activation, hook: calls.append(1) or -activation)
    handle = toy_model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks[0]
    tokens = torch.arange(1, 9).unsqueeze(0)
    with torch.no_grad():
        expected = toy_model(tokens)
    result = unlearn(toy_model, create("npo", lr=1e-3, max_steps=2, batch_size=4), forget, retain, progress=False)
    assert result.training.history[0]["forget_log_ratio"] == 0.0
    assert toy_model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks == [handle]
    assert isinstance(toy_model.blocks[0].mlp.hook_post, Halve) and calls
    with torch.no_grad():
        toy_model.reset_hooks(including_permanent=True)
        unhooked = toy_model(tokens)
    assert not torch.allclose(unhooked, expected, atol=1e-3)  # the permanent hook really was in the forward


def test_hooks_a_method_adds_are_removed_even_permanent_ones(toy_model, toy_texts):
    forget, retain = toy_texts
    toy_model.add_perma_hook("blocks.0.hook_resid_post", lambda activation, hook: None)
    users = list(toy_model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks)

    class Hooking(UnlearningMethod):
        name = "hooking-test-method"

        def loss(self, model, forget_batch, retain_batch):
            model.add_perma_hook("blocks.1.hook_resid_post", lambda activation, hook: None)
            model.add_hook("blocks.0.hook_resid_post", lambda activation, hook: None)
            return model(forget_batch.tokens).mean(), {}

    unlearn(toy_model, Hooking(MethodConfig(max_steps=1)), forget, retain, progress=False)
    assert toy_model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks == users
    assert not toy_model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks


def test_train_and_unlearn_leave_the_callers_rng_state_exactly_as_it_was(toy_model, toy_texts):
    import random

    import numpy as np

    from mechunlearn.batching import TextBatchSource
    from mechunlearn.training import TrainConfig, seeded_rng, train

    forget, retain = toy_texts
    drawn = []

    def step_loss(model, batch):  # draws from the global generators, as dropout and user code do
        drawn.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
        return model(batch.tokens).float().pow(2).mean() * 1e-3, {}

    def states():
        return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()

    def same(a, b, python=True):
        return (a[0] == b[0] or not python) and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])

    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    before = states()
    with seeded_rng(7):
        inside = (random.random(), float(np.random.rand()), float(torch.rand(())))
    assert same(states(), before)
    with seeded_rng(7):
        assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == inside
    # Python's `random` is left out below: under pytest, beartype (the jaxtyping checks) draws from it with
    # random.getrandbits at the entry of every checked function with a container hint, before our code runs.
    source = TextBatchSource(toy_model.tokenizer, forget, 4)
    config = TrainConfig(lr=1e-4, max_steps=2, batch_size=4, eval_split=0.0, seed=7, progress=False)
    before = states()
    train(toy_model, step_loss, source, config)
    assert same(states(), before, python=False)
    first = list(drawn)
    drawn.clear()
    random.seed(999), np.random.seed(999), torch.manual_seed(999)  # another caller state, the same run
    train(toy_model, step_loss, source, config)
    assert drawn == first
    for name in ("npo", "wt_dist"):
        before = states()
        unlearn(toy_model, create(name, max_steps=1), forget, retain, progress=False)
        assert same(states(), before, python=False), name


def test_after_step_runs_after_the_optimiser_step(toy_model, toy_texts):
    from mechunlearn.batching import TextBatchSource
    from mechunlearn.training import TrainConfig, train

    forget, _ = toy_texts
    start = toy_model.blocks[0].mlp.W_in.detach().clone()
    seen = []
    train(toy_model, lambda model, batch: (model(batch.tokens).float().pow(2).mean(), {}),
          TextBatchSource(toy_model.tokenizer, forget, 4),
          TrainConfig(lr=1e-3, max_steps=1, batch_size=4, eval_split=0.0, progress=False),
          after_step=lambda model, step: seen.append(not torch.equal(model.blocks[0].mlp.W_in, start)))
    assert seen == [True]


def test_select_parameters_is_the_one_selector(toy_model):
    from mechunlearn.training import select_parameters

    flags = {name: p.requires_grad for name, p in toy_model.named_parameters()}
    chosen = select_parameters(toy_model, r"blocks\.1\.mlp\.W_", exclude=("unembed.b_U",))
    assert [name for name, _ in chosen] == ["blocks.1.mlp.W_in", "blocks.1.mlp.W_out"]
    assert {name: p.requires_grad for name, p in toy_model.named_parameters()} == flags  # no side effect
    assert "unembed.b_U" not in dict(select_parameters(toy_model, None, exclude=("unembed.b_U",)))
    with pytest.raises(ValueError, match="matches no parameter"):
        select_parameters(toy_model, "nothing-like-this")
    with pytest.raises(ValueError, match="not a valid regex"):
        select_parameters(toy_model, "(")


def test_max_length_is_clamped_to_the_context(toy_model, toy_texts):
    import mechunlearn.unlearn as unlearn_module

    _, retain = toy_texts
    long_text = " ".join(TOY_LONG_WORDS * 40)
    assert len(toy_model.tokenizer(long_text)["input_ids"]) > toy_model.cfg.n_ctx
    unlearn_module._CLAMP_WARNED.clear()
    with pytest.warns(UserWarning, match="longer than the model's context"):
        unlearn(toy_model, create("ga", max_steps=1, max_length=4096), [long_text], retain, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: a second run is quiet
        unlearn(toy_model, create("ga", max_steps=1, max_length=4096), [long_text], retain, progress=False)


TOY_LONG_WORDS = ["the", "wizard", "Orlo", "keeps", "a", "silver", "wand", "in", "Varnhold"]


def test_run_json_records_provenance_and_load_dtype(tmp_path, toy_model_dir, toy_texts):
    forget, retain = toy_texts
    target = run(create("ga", max_steps=1), toy_model_dir, tmp_path, forget, retain, progress=False,
                 device="cpu", dtype="bf16")
    record = json.loads((target / "run.json").read_text())
    assert record["load_dtype"] == "bfloat16" and record["precision"]["master_dtype"] == "float32"
    environment = record["environment"]
    assert environment["device"] == "cpu" and environment["dtype"] == "bfloat16" and environment["seeds"] == [0]
    assert environment["versions"]["torch"] == torch.__version__.split("+")[0] or environment["versions"]["torch"]
    reloaded = models.load(target / "model", device="cpu", dtype="auto")
    assert json.loads((target / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    assert reloaded.cfg.n_layers == 3


def test_docs_preset_table_is_the_preset():
    """docs/methods.md's "Seed defaults vs world preset" table states methods/presets.py's values (it drifted once)."""
    import re
    from pathlib import Path

    from mechunlearn.methods.presets import WORLD_PRESET

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    rows = dict(re.findall(r"^\| (\w+) \| lr=1e-05[^|]* \| (lr=[^|]*) \|$", text, flags=re.M))
    assert set(rows) == set(WORLD_PRESET)
    for method, cell in rows.items():
        stated = dict(pair.split("=", 1) for pair in cell.strip().split(", "))
        assert stated == {key: str(value) for key, value in WORLD_PRESET[method].items()}, method

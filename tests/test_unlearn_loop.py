"""The shared unlearning loop and run bookkeeping: keys, skip-if-done, no hooks left, bad input, NaN losses."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from mechunlearn import models
from mechunlearn.methods import UnlearningMethod, create, get_method
from mechunlearn.methods.base import MethodConfig
from mechunlearn.training import TrainingError
from mechunlearn.unlearn import assert_no_hooks, run, run_key, run_name, unlearn


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

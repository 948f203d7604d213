"""Low-precision training really trains: bf16 / fp16 models learn through fp32 master weights and come back in
their own dtype. Compared against an fp32 run from the same weights and batches, and against plain AdamW on bf16
parameters (what the loop did before: most updates at lr 1e-5 vanish in rounding)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open

from mechunlearn import models
from mechunlearn.batching import iter_batches, logits_of, mean_nll
from mechunlearn.methods import create
from mechunlearn.methods.ga import GA
from mechunlearn.unlearn import PairedBatchSource, unlearn
from conftest import TOY_FORGET, TOY_RETAIN, make_neox, make_tokenizer


@pytest.fixture(scope="module")
def representable_dir(tmp_path_factory):
    """A toy checkpoint whose fp32 weights are exactly bf16 values, so the fp32 and bf16 runs start identical."""
    directory = tmp_path_factory.mktemp("bf16-exact") / "model"
    tokenizer = make_tokenizer(TOY_FORGET + TOY_RETAIN, vocab_size=300)
    hf_model = make_neox(vocab_size=len(tokenizer), hidden_size=32, layers=3, heads=4, intermediate=64)
    with torch.no_grad():
        for parameter in hf_model.parameters():
            parameter.copy_(parameter.to(torch.bfloat16).float())
    hf_model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


class RecordingGA(GA):
    """GA that keeps the fp32 masters at the start and after the last step (what the run really learnt)."""

    def setup(self, model, context):
        super().setup(model, context)
        self.start = [master.detach().clone() for master in self.trainable_weights(model).masters]

    def after_step(self, model, step):
        self.final = [master.detach().clone() for master in self.trainable_weights(model).masters]


def ga_run(directory, dtype, lr, steps=3):
    model = models.load(directory, device="cpu", dtype=dtype)
    start = {name: parameter.detach().float().clone() for name, parameter in model.named_parameters()}
    method = RecordingGA(GA.Config(lr=lr, max_steps=steps, batch_size=4, max_length=64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = unlearn(model, method, TOY_FORGET, TOY_RETAIN, progress=False)
    master_update = torch.cat([(final - first).flatten() for final, first in zip(method.final, method.start)])
    model_update = torch.cat([(parameter.detach().float() - start[name]).flatten()
                              for name, parameter in model.named_parameters() if name != "unembed.b_U"])
    return model, result, master_update, model_update, [str(warning.message) for warning in caught]


def agreement(update, reference):
    """Fraction of the weights the reference moved that ``update`` moved too, and the relative error."""
    moved = reference != 0
    return float((update[moved] != 0).float().mean()), float((update - reference).norm() / reference.norm())


def test_bf16_at_the_seed_lr_learns_what_fp32_learns(representable_dir):
    """The issue's case: GA, lr 1e-5, 3 steps. The bf16 run's fp32 masters move every weight the fp32 run moves,
    by nearly the same amount; plain bf16 AdamW loses most of those updates; the returned model is bf16 and the
    user is told that most of this tiny update is below bf16's resolution."""
    _, fp32_result, fp32_update, _, _ = ga_run(representable_dir, "fp32", 1e-5)
    bf16_model, bf16_result, bf16_master_update, bf16_model_update, messages = ga_run(representable_dir, "bf16", 1e-5)
    assert (fp32_update != 0).float().mean() > 0.8  # every weight that gets a gradient
    moved, relative_error = agreement(bf16_master_update, fp32_update)
    assert moved > 0.99 and relative_error < 0.3, (moved, relative_error)
    assert next(bf16_model.parameters()).dtype == torch.bfloat16 and bf16_model.cfg.dtype == torch.bfloat16
    precision = bf16_result.training.precision
    assert precision["master_dtype"] == "float32" and precision["parameter_dtypes"] == ["bfloat16"]
    assert precision["moved_fraction_master"] == pytest.approx(float((bf16_master_update != 0).float().mean()),
                                                               abs=0.05)
    assert precision["moved_fraction_model"] == pytest.approx(float((bf16_model_update != 0).float().mean()),
                                                              abs=0.05)
    assert any("lost when written back" in message for message in messages)
    assert fp32_result.training.precision["master_dtype"] == "float32"

    # Independent check that this is a case where precision matters: AdamW stepping the bf16 parameters directly
    # on the same batches (the old loop) keeps only a fraction of what fp32 learnt.
    raw = models.load(representable_dir, device="cpu", dtype="bf16")
    start = [parameter.detach().float().clone() for name, parameter in raw.named_parameters()
             if name != "unembed.b_U"]
    trainable = [parameter for name, parameter in raw.named_parameters() if name != "unembed.b_U"]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0)
    source = PairedBatchSource(raw.tokenizer, TOY_FORGET, TOY_RETAIN, 4, 64)
    raw.train()
    for _, (forget, retain) in zip(range(3), source.epoch(0)):
        loss = -mean_nll(logits_of(raw(forget.tokens)), forget) + mean_nll(logits_of(raw(retain.tokens)), retain)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    raw_update = torch.cat([(parameter.detach().float() - first).flatten()
                            for parameter, first in zip(trainable, start)])
    raw_moved, _ = agreement(raw_update, fp32_update)
    assert raw_moved < 0.5 * moved


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_model_tracks_fp32_when_updates_are_representable(representable_dir, tmp_path, dtype):
    """At lr 1e-3 the updates are larger than a bf16 step: the returned low-precision model itself moves nearly
    every weight fp32 moves, ends close to the fp32 run, saves in its own dtype and reloads with the same logits."""
    from transformers import AutoModelForCausalLM

    _, _, fp32_update, _, _ = ga_run(representable_dir, "fp32", 1e-3)
    model, result, _, model_update, _ = ga_run(representable_dir, dtype, 1e-3)
    moved, relative_error = agreement(model_update, fp32_update)
    assert moved > 0.98 and relative_error < 0.3, (moved, relative_error)
    assert result.training.precision["skipped_steps"] == 0
    torch_dtype = models.resolve_dtype(dtype)
    assert next(model.parameters()).dtype == torch_dtype
    models.save(model, tmp_path / "saved")
    with safe_open(tmp_path / "saved" / "model.safetensors", "pt") as handle:
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {torch_dtype}
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["dtype"] == str(torch_dtype).split(".")[1]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch_dtype).eval()
    tokens = torch.arange(12).unsqueeze(0)
    with torch.no_grad():
        assert (reloaded(tokens).logits.float() - model(tokens).float()).abs().max() < 0.1
        for name, parameter in models.to_hf(model, dtype=torch_dtype).state_dict().items():
            assert torch.equal(reloaded.state_dict()[name], parameter), name


def test_weight_space_methods_work_on_the_masters(representable_dir):
    """wt_dist's noise and wt_dist_reg's distance live on the fp32 masters: at lr 1e-5 a bf16 parameter sits on
    its start value, so a distance computed from it (the old code) would stay exactly 0 for many steps."""
    fp32 = models.load(representable_dir, device="cpu", dtype="fp32")
    bf16 = models.load(representable_dir, device="cpu", dtype="bf16")
    for model in (fp32, bf16):
        start = {name: parameter.detach().float().clone() for name, parameter in model.named_parameters()}
        method = create("wt_dist", noise_std=0.02, lr=1e-5, max_steps=1, batch_size=4, max_length=64)
        unlearn(model, method, TOY_FORGET, TOY_RETAIN, progress=False)
        noise = torch.cat([(parameter.detach().float() - start[name]).flatten()
                           for name, parameter in model.named_parameters() if name != "unembed.b_U"])
        assert noise.std().item() == pytest.approx(0.02, rel=0.05)
    with torch.no_grad():  # the same noise (same generator): bf16 holds the rounding of fp32's noised weights
        for (name, a), b in zip(fp32.named_parameters(), bf16.parameters()):
            assert (a.to(torch.bfloat16).float() - b.float()).abs().max() <= 0.02 * a.abs().max() + 1e-3, name

    distances = {}
    for dtype in ("fp32", "bf16"):
        model = models.load(representable_dir, device="cpu", dtype=dtype)
        method = create("wt_dist_reg", reg_lambda=0.1, lr=1e-5, max_steps=3, batch_size=4, max_length=64)
        result = unlearn(model, method, TOY_FORGET, TOY_RETAIN, progress=False)
        distances[dtype] = [record["weight_distance_sq"] for record in result.training.history]
    assert distances["bf16"][0] == 0.0 and distances["bf16"][1] > 0
    assert distances["bf16"][1:] == pytest.approx(distances["fp32"][1:], rel=0.3)


@pytest.mark.parametrize("name", ["npo", "rmu", "lat"])
def test_reference_and_adversary_methods_train_in_bf16(representable_dir, name):
    """The frozen reference stays in the model's dtype (policy == reference at step 0: NPO's log-ratio is 0),
    LAT's δ is float32, and every method moves the weights it trains."""
    from mechunlearn.methods.adversary import latent_adversary

    model = models.load(representable_dir, device="cpu", dtype="bf16")
    overrides = {"npo": {}, "rmu": {"steering_coeff": 5.0, "alpha": 1.0}, "lat": {"lat_steps": 2}}[name]
    method = create(name, lr=1e-3, max_steps=2, batch_size=4, max_length=64, **overrides)
    before = {key: parameter.detach().clone() for key, parameter in model.named_parameters()}
    result = unlearn(model, method, TOY_FORGET, TOY_RETAIN, progress=False)
    assert result.training.precision["moved_fraction_master"] > 0
    assert next(model.parameters()).dtype == torch.bfloat16
    assert any(not torch.equal(before[key], parameter) for key, parameter in model.named_parameters())
    if name == "npo":
        assert result.training.history[0]["forget_log_ratio"] == 0.0
    if name == "lat":
        batch = next(iter_batches(model.tokenizer, TOY_FORGET, 2, 64))
        delta, _ = latent_adversary(model, batch, 1, eps=0.1, steps=2, step_size=0.03)
        assert delta.dtype == torch.float32 and delta.abs().max() <= 0.1 + 1e-7


def test_whp_keeps_labels_not_vocabulary_tables(representable_dir, tmp_path):
    """Hard labels: one int64 per token per forget text; soft targets: computed per batch from the kept
    reinforced model. Both train a bf16 model (its reinforced copy through fp32 masters too)."""
    terms = tmp_path / "terms.json"
    terms.write_text(json.dumps({"Orlo": "Bram", "Varnhold": "Kettle"}))
    for soft in (False, True):
        model = models.load(representable_dir, device="cpu", dtype="bf16")
        method = create("whp", lr=1e-3, max_steps=2, batch_size=4, max_length=64, reinforce_epochs=1,
                        soft_targets=soft, anchored_terms_file=str(terms))
        method_context = {}
        original_loss = method.loss

        def loss(current, forget, retain):
            method_context.setdefault("labels", dict(method._labels))
            method_context.setdefault("reinforced", method._reinforced)
            return original_loss(current, forget, retain)

        method.loss = loss
        result = unlearn(model, method, TOY_FORGET, TOY_RETAIN, progress=False)
        assert result.training.steps == 2 and next(model.parameters()).dtype == torch.bfloat16
        if soft:
            assert not method_context["labels"] and method_context["reinforced"] is not None
            assert next(method_context["reinforced"].parameters()).dtype == torch.bfloat16
        else:
            labels = method_context["labels"]
            assert len(labels) == len(set(TOY_FORGET)) and method_context["reinforced"] is None
            for key, row in labels.items():
                assert row.dtype == torch.int64 and row.shape == (len(key),)
        assert method._reinforced is None  # released when training ended

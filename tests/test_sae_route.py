"""The SAELens route: ``models.load(..., sae_transformer=True)`` / ``from_hf`` / ``to_sae_transformer`` give sae-lens'
``HookedSAETransformer`` with the same weights, config and fast paths; an SAE spliced at a hook point reproduces
the clean logits with ``use_error_term=True`` (within 1e-5) and changes them without; copies stay independent."""

from __future__ import annotations

import copy

import pytest
import torch
from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig

from mechunlearn import models
from mechunlearn.fast import is_accelerated

TOKENS = torch.tensor([[3, 17, 42, 5, 88, 13, 61, 7], [9, 2, 33, 71, 40, 11, 6, 29]])


def _random_sae(hook_name: str, d_in: int, seed: int = 0) -> StandardSAE:
    """A StandardSAE with random weights (the default init decodes to ~zero, which would hide a missed splice)."""
    torch.manual_seed(seed)
    config = StandardSAEConfig(d_in=d_in, d_sae=4 * d_in)
    config.metadata.hook_name = hook_name
    sae = StandardSAE(config)
    with torch.no_grad():
        for parameter in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            parameter.normal_(0, 0.3)
    return sae


def _hf_logits(directory, tokens=TOKENS):
    from transformers import GPTNeoXForCausalLM

    hf_model = GPTNeoXForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf_model(tokens).logits


def test_load_and_from_hf_give_a_hooked_sae_transformer_with_the_same_model(neox_checkpoint):
    directory, hf_model = neox_checkpoint
    plain = models.load(directory, device="cpu")
    reference = _hf_logits(directory)
    for sae_model in (models.load(directory, device="cpu", sae_transformer=True),
                      models.from_hf(hf_model, device="cpu", sae_transformer=True),
                      models.to_sae_transformer(plain)):
        assert isinstance(sae_model, HookedSAETransformer) and is_accelerated(sae_model)
        config, plain_config = sae_model.cfg.to_dict(), plain.cfg.to_dict()
        assert {k: v for k, v in config.items() if k != "model_name"} == {
            k: v for k, v in plain_config.items() if k != "model_name"}  # from_hf names models its own way
        plain_state = plain.state_dict()
        assert set(sae_model.state_dict()) == set(plain_state)
        assert all(torch.equal(tensor, plain_state[name]) for name, tensor in sae_model.state_dict().items())
        with torch.no_grad():
            logits = sae_model(TOKENS)
            assert torch.allclose(logits, reference, atol=1e-4)
            assert torch.equal(logits, plain(TOKENS))  # the same fast paths as the plain model
        # sae-lens' extra hook point (mlp.hook_in) is there and fires
        _, cache = sae_model.run_with_cache(TOKENS, names_filter="blocks.0.mlp.hook_in")
        assert cache["blocks.0.mlp.hook_in"].shape == (2, 8, plain.cfg.d_model)
    assert not isinstance(plain, HookedSAETransformer)


@pytest.mark.parametrize("hook_name, d_in", [
    ("blocks.1.hook_resid_post", 64),      # the usual residual SAE
    ("blocks.0.attn.hook_z", 16),          # per-head d_head, inside the fused attention path
    ("blocks.1.attn.hook_pattern", 8),     # fused away by the fast path unless the splice is seen
    ("blocks.0.ln1.hook_normalized", 64),  # likewise: the fused LayerNorm and the block's single ln1
])
def test_spliced_sae_error_term_reproduces_clean_logits(neox_checkpoint, hook_name, d_in):
    directory, _ = neox_checkpoint
    model = models.load(directory, device="cpu", sae_transformer=True)
    unaccelerated = models.load(directory, device="cpu", sae_transformer=True, accelerated=False)
    sae = _random_sae(hook_name, d_in)
    with torch.no_grad():
        clean = model(TOKENS)
        with_error = model.run_with_saes(TOKENS, saes=[sae], use_error_term=True)
        spliced = model.run_with_saes(TOKENS, saes=[sae], use_error_term=False)
        # independent of our fast paths: TransformerLens' own forward with the same SAE spliced in
        reference = unaccelerated.run_with_saes(TOKENS, saes=[sae], use_error_term=False)
        assert (with_error - clean).abs().max() < 1e-5
        assert (spliced - clean).abs().max() > 1e-2
        assert torch.allclose(spliced, reference, atol=1e-5)
        _, cache = model.run_with_cache_with_saes(TOKENS, saes=[sae])
        assert f"{hook_name}.hook_sae_acts_post" in cache
        assert torch.equal(model(TOKENS), clean)  # run_with_saes took the SAE out again


def test_sae_fitted_by_sae_features_splices_in_and_survives_save(toy_model_dir, toy_texts, tmp_path):
    from mechunlearn.diagnostics.sae_features import fit_sae

    model = models.load(toy_model_dir, device="cpu", sae_transformer=True)
    forget_texts, retain_texts = toy_texts
    sae = fit_sae(model, forget_texts + retain_texts, "blocks.1.hook_resid_post", training_tokens=2048,
                  train_batch_size=256, cache=False)
    tokens = model.to_tokens(forget_texts[:3], padding_side="right")
    with torch.no_grad():
        clean = model(tokens)
        model.add_sae(sae, use_error_term=True)  # permanent, the way SAELens users attach one
        assert (model(tokens) - clean).abs().max() < 1e-5
        model.reset_saes()
        model.add_sae(sae, use_error_term=False)
        assert (model(tokens) - clean).abs().max() > 1e-3
    # an attached SAE adds no weights: the model saves and reloads as itself
    models.save(model, tmp_path / "saved")
    model.reset_saes()
    with torch.no_grad():
        assert torch.allclose(models.load(tmp_path / "saved", device="cpu")(tokens), clean, atol=1e-5)


def test_copies_run_their_own_weights(toy_model_dir):
    """sae-lens adds mlp.hook_in through a lambda over the original MLP; our loader makes it a method, so a
    deepcopy (attacks and training work on copies) runs the copy's weights, not the original's."""
    model = models.load(toy_model_dir, device="cpu", sae_transformer=True)
    duplicate = copy.deepcopy(model)
    with torch.no_grad():
        duplicate.blocks[0].mlp.W_in.zero_()
        tokens = TOKENS % model.cfg.d_vocab
        changed = (duplicate(tokens) - model(tokens)).abs().max()
    assert changed > 1e-3
    assert "forward" not in vars(model.blocks[0].mlp) and "blocks.0.mlp.hook_in" in duplicate.hook_dict

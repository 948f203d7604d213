"""mechunlearn.fast: the accelerated HookedTransformer computes what the plain one does, hooks included."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from mechunlearn import models
from mechunlearn.batching import TokenBatch, mean_nll
from mechunlearn.fast import accelerate, deaccelerate, is_accelerated

VOCAB, N_LAYERS, SEQ = 96, 2, 12
ATOL = 1e-5


def _tiny_neox(parallel: bool, rotary_pct: float, seed: int = 0) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=32, rotary_pct=rotary_pct,
                           use_parallel_residual=parallel, tie_word_embeddings=False)
    hf = GPTNeoXForCausalLM(config)
    with torch.no_grad():  # HF zero-inits biases and sets LayerNorms to identity: make every weight matter
        for parameter in hf.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return hf.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster and immune to a busy machine's thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=[(True, 0.25), (True, 1.0), (False, 0.25), (False, 1.0)],
                ids=["parallel-rot0.25", "parallel-rot1.0", "sequential-rot0.25", "sequential-rot1.0"])
def trio(request):
    """(HF model, plain HookedTransformer, accelerated HookedTransformer) with the same weights."""
    parallel, rotary_pct = request.param
    hf = _tiny_neox(parallel, rotary_pct)
    plain = models.from_hf(hf, device="cpu", dtype="fp32", accelerated=False)
    fast = accelerate(models.from_hf(hf, device="cpu", dtype="fp32", accelerated=False))
    return hf, plain, fast


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Counts calls of F.scaled_dot_product_attention, i.e. how many attention layers took the fast path."""
    calls = []
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def test_accelerate_is_in_place_and_keeps_names_config_and_state(trio):
    _, plain, fast = trio
    assert is_accelerated(fast) and not is_accelerated(plain)
    assert fast.cfg.to_dict() == plain.cfg.to_dict()
    assert list(fast.hook_dict) == list(plain.hook_dict)
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert accelerate(fast) is fast  # idempotent
    assert isinstance(fast.blocks[0].attn, type(plain.blocks[0].attn))  # subclasses: isinstance checks still pass


def test_logits_match_plain_and_hf(trio, tokens, sdpa_calls):
    hf, plain, fast = trio
    with torch.no_grad():
        fast_logits = fast(tokens)
        assert len(sdpa_calls) == N_LAYERS  # the fused path really ran
        torch.testing.assert_close(fast_logits, plain(tokens), atol=ATOL, rtol=0)
        torch.testing.assert_close(fast_logits, hf(tokens).logits, atol=1e-4, rtol=0)


def test_gradients_match(trio, tokens):
    _, plain, fast = trio
    batch = TokenBatch(tokens, torch.ones_like(tokens, dtype=torch.bool))
    grads = []
    for model in (plain, fast):
        model.zero_grad(set_to_none=True)
        mean_nll(model(tokens), batch).backward()
        grads.append({name: parameter.grad.clone() for name, parameter in model.named_parameters()})
        model.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=ATOL, rtol=1e-4, msg=name)


def test_run_with_cache_returns_the_plain_cache(trio, tokens):
    _, plain, fast = trio
    plain_logits, plain_cache = plain.run_with_cache(tokens)
    fast_logits, fast_cache = fast.run_with_cache(tokens)
    assert "blocks.0.attn.hook_pattern" in fast_cache
    assert list(fast_cache.keys()) == list(plain_cache.keys())
    for name in plain_cache.keys():
        torch.testing.assert_close(fast_cache[name], plain_cache[name], atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(fast_logits, plain_logits, atol=ATOL, rtol=0)
    pattern = fast_cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (tokens.shape[0], fast.cfg.n_heads, SEQ, SEQ)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))


def test_editing_the_pattern_changes_output_identically(trio, tokens, sdpa_calls):
    _, plain, fast = trio

    def uniform_head_1(pattern, hook):
        pattern = pattern.clone()
        causal = torch.tril(torch.ones(SEQ, SEQ))
        pattern[:, 1] = causal / causal.sum(-1, keepdim=True)
        return pattern

    def zero_head_0(pattern, hook):
        pattern[:, 0] = 0.0  # in place, as many hooks do
        return pattern

    def mask_first_key(scores, hook):
        scores[..., 1:, 0] = float("-inf")  # no query past the first may look at position 0
        return scores

    hooks = [("blocks.0.attn.hook_pattern", uniform_head_1), ("blocks.1.attn.hook_pattern", zero_head_0)]
    with torch.no_grad():
        scores_plain = plain.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_attn_scores", mask_first_key)])
        scores_fast = fast.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_attn_scores", mask_first_key)])
        assert len(sdpa_calls) == 1  # layer 0 fused, layer 1 (scores hooked) on TransformerLens' path
        torch.testing.assert_close(scores_fast, scores_plain, atol=ATOL, rtol=0)
        sdpa_calls.clear()
        edited_plain = plain.run_with_hooks(tokens, fwd_hooks=hooks)
        edited_fast = fast.run_with_hooks(tokens, fwd_hooks=hooks)
        assert len(sdpa_calls) == 0  # both layers fell back to TransformerLens' attention
        torch.testing.assert_close(edited_fast, edited_plain, atol=ATOL, rtol=0)
        assert (edited_fast - fast(tokens)).abs().max() > 1e-3  # the edit mattered
        assert len(sdpa_calls) == N_LAYERS  # and without hooks the fast path is back


def test_hooks_outside_the_pattern_fire_with_the_same_activations_on_the_fast_path(trio, tokens, sdpa_calls):
    _, plain, fast = trio
    names = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.attn.hook_z",
             "blocks.1.attn.hook_z", "blocks.0.attn.hook_rot_q", "blocks.1.attn.hook_rot_k",
             "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_pre",
             "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.mlp.hook_post", "hook_embed",
             "blocks.1.ln2.hook_normalized", "ln_final.hook_scale"]
    if not plain.cfg.parallel_attn_mlp:
        names.append("blocks.0.hook_resid_mid")
    seen = []
    for model in (plain, fast):
        record = {}

        def save(activation, hook):
            record[hook.name] = activation.detach().clone()

        with torch.no_grad():
            model.run_with_hooks(tokens, fwd_hooks=[(name, save) for name in names])
        seen.append(record)
    assert len(sdpa_calls) == N_LAYERS  # fast model: fused attention while those hooks fired
    assert sorted(seen[1]) == sorted(names)
    for name in names:
        assert seen[1][name].shape == seen[0][name].shape, name
        torch.testing.assert_close(seen[1][name], seen[0][name], atol=ATOL, rtol=0, msg=name)


def test_hooks_that_edit_activations_on_the_fast_path(trio, tokens, sdpa_calls):
    _, plain, fast = trio

    def zero_head_2(z, hook):
        z[:, :, 2] = 0.0
        return z

    def scale_rot_k(k, hook):
        return k * 0.5

    def shift_v(v, hook):
        return v + 1.0

    def ablate_mlp(out, hook):
        return torch.zeros_like(out)

    hooks = [("blocks.0.attn.hook_z", zero_head_2), ("blocks.1.attn.hook_rot_k", scale_rot_k),
             ("blocks.1.attn.hook_v", shift_v), ("blocks.0.hook_mlp_out", ablate_mlp)]
    with torch.no_grad():
        edited_plain = plain.run_with_hooks(tokens, fwd_hooks=hooks)
        edited_fast = fast.run_with_hooks(tokens, fwd_hooks=hooks)
    assert len(sdpa_calls) == N_LAYERS
    torch.testing.assert_close(edited_fast, edited_plain, atol=ATOL, rtol=0)
    assert (edited_plain - plain(tokens)).abs().max() > 1e-3


def test_backward_hook_on_the_pattern_sees_the_same_gradient(trio, tokens, sdpa_calls):
    _, plain, fast = trio
    grads = []
    for model in (plain, fast):
        seen = {}

        def save_grad(grad, hook):
            seen[hook.name] = grad.detach().clone()

        model.zero_grad(set_to_none=True)
        with model.hooks(bwd_hooks=[("blocks.1.attn.hook_pattern", save_grad)]):
            model(tokens).logsumexp(-1).sum().backward()
        model.zero_grad(set_to_none=True)
        grads.append(seen["blocks.1.attn.hook_pattern"])
    assert len(sdpa_calls) == 1  # layer 0 fast, layer 1 (pattern hooked backwards) on TransformerLens' path
    torch.testing.assert_close(grads[1], grads[0], atol=ATOL, rtol=0)


def test_attention_mask_and_kv_cache_fall_back(trio, tokens):
    _, plain, fast = trio
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding on the first row
    with torch.no_grad():
        torch.testing.assert_close(fast(tokens, attention_mask=mask), plain(tokens, attention_mask=mask),
                                   atol=ATOL, rtol=0)
        generated = [model.generate(tokens[:1, :5], max_new_tokens=4, do_sample=False, use_past_kv_cache=True,
                                    verbose=False, stop_at_eos=False, return_type="tokens") for model in (plain, fast)]
    assert torch.equal(generated[0], generated[1])


def test_only_the_accelerated_model_changes_and_deaccelerate_restores(trio, tokens):
    hf, plain, _ = trio
    model = models.from_hf(hf, device="cpu", dtype="fp32", accelerated=False)
    classes = [type(module) for module in model.modules()]
    accelerate(model)
    assert is_accelerated(model) and not is_accelerated(plain)
    assert deaccelerate(model) is model and not is_accelerated(model)
    assert [type(module) for module in model.modules()] == classes
    with torch.no_grad():
        assert torch.equal(model(tokens), plain(tokens))


def test_low_precision_matches_to_rounding(tokens):
    hf = _tiny_neox(parallel=True, rotary_pct=0.25)
    plain = models.from_hf(hf, device="cpu", dtype="bf16", accelerated=False)
    fast = accelerate(models.from_hf(hf, device="cpu", dtype="bf16", accelerated=False))
    with torch.no_grad():
        plain_logits, fast_logits = plain(tokens).float(), fast(tokens).float()
    assert fast(tokens).dtype == torch.bfloat16
    torch.testing.assert_close(fast_logits, plain_logits, atol=3e-2, rtol=0)  # bf16: about one unit in the last place


def test_rejects_non_hooked_models():
    with pytest.raises(TypeError):
        accelerate(torch.nn.Linear(2, 2))

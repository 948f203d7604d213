"""The GPT-NeoX <-> HookedTransformer bridge: exact logits both ways, on random checkpoints built here."""

from __future__ import annotations

import json

import pytest
import torch

from mechunlearn import models
from mechunlearn.models import CheckpointError

CONFIGS = [
    pytest.param(dict(parallel=True, rotary_pct=0.25, tie=False), id="parallel-rot0.25-untied"),
    pytest.param(dict(parallel=False, rotary_pct=0.25, tie=False), id="sequential-rot0.25-untied"),
    pytest.param(dict(parallel=True, rotary_pct=1.0, tie=True), id="parallel-rot1.0-tied"),
    pytest.param(dict(parallel=False, rotary_pct=1.0, tie=True), id="sequential-rot1.0-tied"),
    pytest.param(dict(parallel=True, rotary_pct=0.5, tie=False, heads=2, hidden_size=48), id="2heads-rot0.5"),
]


@pytest.mark.parametrize("options", CONFIGS)
def test_load_matches_transformers_logits(tmp_path, neox_factory, options):
    hf_model = neox_factory(**options)
    hf_model.save_pretrained(tmp_path / "ckpt")
    hooked = models.load(tmp_path / "ckpt", device="cpu", dtype="fp32")
    tokens = torch.randint(0, hf_model.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(tokens).logits
        actual = hooked(tokens)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("options", CONFIGS)
def test_save_round_trip_is_exact(tmp_path, neox_factory, options):
    from transformers import AutoModelForCausalLM

    hf_model = neox_factory(**options)
    hf_model.save_pretrained(tmp_path / "ckpt")
    hooked = models.load(tmp_path / "ckpt", device="cpu")
    models.save(hooked, tmp_path / "exported")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    tokens = torch.randint(0, hf_model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, hf_model(tokens).logits)
    original = hf_model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert reloaded.config.tie_word_embeddings == options["tie"]
    assert reloaded.config.use_parallel_residual == options["parallel"]


def test_untied_after_training_is_saved_untied(tmp_path, neox_factory):
    """A tied checkpoint whose unembedding moved during unlearning must not be silently re-tied on save."""
    from transformers import AutoModelForCausalLM

    hf_model = neox_factory(tie=True)
    hf_model.save_pretrained(tmp_path / "ckpt")
    hooked = models.load(tmp_path / "ckpt", device="cpu")
    with torch.no_grad():
        hooked.unembed.W_U.add_(0.01)
    models.save(hooked, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokens = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        assert (reloaded(tokens).logits - hooked(tokens)).abs().max() <= 1e-4


def test_from_hf_copies_weights(neox_factory):
    hf_model = neox_factory()
    hooked = models.from_hf(hf_model, device="cpu")
    with torch.no_grad():
        hooked.blocks[0].mlp.W_in.zero_()
    assert hf_model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.abs().sum() > 0


def test_config_fields_come_from_config_json(neox_checkpoint):
    directory, hf_model = neox_checkpoint
    cfg = models.load(directory, device="cpu").cfg
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.d_mlp, cfg.d_vocab) == (64, 4, 2, 128, 97)
    assert cfg.rotary_dim == round(0.25 * 16)
    assert cfg.parallel_attn_mlp is True
    assert cfg.eps == hf_model.config.layer_norm_eps
    assert cfg.n_ctx == 128


def test_hf_cache_name_resolves_offline(tmp_path, monkeypatch, neox_factory):
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--someone--tiny-neox" / "snapshots" / "abc123"
    neox_factory().save_pretrained(snapshot)
    (tmp_path / "hub" / "models--someone--tiny-neox" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-neox" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert models.resolve_checkpoint_dir("someone/tiny-neox") == snapshot
    assert models.load("someone/tiny-neox", device="cpu").cfg.n_layers == 2


# --------------------------------------------------------------------------------------------- hook names (golden)
GOLDEN_BLOCK_HOOKS = [
    "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
    "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
    "hook_attn_out", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out",
    "hook_resid_post",
]


def test_golden_hook_names(neox_checkpoint):
    """Pin the hook names of a parallel-residual GPT-NeoX model: methods and diagnostics are written against them."""
    directory, _ = neox_checkpoint
    hooked = models.load(directory, device="cpu")
    _, cache = hooked.run_with_cache(torch.arange(5).unsqueeze(0))
    expected = ["hook_embed"] + [f"blocks.{layer}.{name}" for layer in range(2) for name in GOLDEN_BLOCK_HOOKS]
    expected += ["ln_final.hook_scale", "ln_final.hook_normalized", "unembed.hook_in", "unembed.hook_out"]
    assert sorted(cache.keys()) == sorted(expected)
    assert "blocks.0.hook_resid_mid" not in hooked.hook_dict  # parallel residual: no mid-stream point
    assert cache["blocks.1.mlp.hook_post"].shape == (1, 5, 128)


# --------------------------------------------------------------------------------------------------- bad input
def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        models.load(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        models.load(tmp_path / "empty")


def test_not_gpt_neox(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                                "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="LlamaForCausalLM"):
        models.load(tmp_path / "llama")


def test_no_safetensors(tmp_path, neox_factory):
    neox_factory().save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").rename(tmp_path / "ckpt" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="safetensors"):
        models.load(tmp_path / "ckpt")


def test_uncached_hub_name_is_not_fetched(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        models.load("EleutherAI/pythia-14m")


def test_tokenizer_vocab_mismatch(neox_checkpoint):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tok_models

    directory, _ = neox_checkpoint
    vocab = {f"t{i}": i for i in range(500)}
    big = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel(vocab, unk_token="t0")))
    with pytest.raises(CheckpointError, match="500 tokens"):
        models.load(directory, tokenizer=big)


def test_failed_save_leaves_nothing(tmp_path, neox_checkpoint, monkeypatch):
    directory, _ = neox_checkpoint
    hooked = models.load(directory, device="cpu")
    import transformers

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(transformers.GPTNeoXForCausalLM, "save_pretrained", explode)
    with pytest.raises(OSError):
        models.save(hooked, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neox"]


def test_bad_device_and_dtype():
    with pytest.raises(ValueError, match="unknown dtype"):
        models.resolve_dtype("fp8")
    with pytest.raises(ValueError, match="device"):
        models.resolve_device("tpu")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors_is_one_checkpoint_error(tmp_path, neox_factory, damage):
    neox_factory().save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00" * 64, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"model\.safetensors\) cannot be read.*corrupt or incomplete"):
        models.load(tmp_path / "ckpt", device="cpu")


def test_weights_that_do_not_fit_the_config(tmp_path, neox_factory):
    neox_factory(intermediate=128).save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(CheckpointError, match="do not fit config.json"):
        models.load(tmp_path / "ckpt", device="cpu")


def test_missing_attention_biases_get_the_friendly_error(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, attention_bias=False)
    hf_model = GPTNeoXForCausalLM(config)
    hf_model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="without attention biases"):
        models.load(tmp_path / "ckpt", device="cpu")
    with pytest.raises(CheckpointError, match="without attention biases"):
        models.from_hf(hf_model, device="cpu")

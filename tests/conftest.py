"""Shared fixtures: tiny random GPT-NeoX checkpoints built in the test, so every test runs offline in seconds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# Tiny models gain little from intra-op threads, and oversubscribed OpenMP threads (parallel jobs on a 2-core
# machine) make a step ~10x slower; MECHUNLEARN_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("MECHUNLEARN_TEST_THREADS", "1")))


def make_neox(vocab_size=97, hidden_size=64, layers=2, heads=4, intermediate=128, rotary_pct=0.25,
              parallel=True, tie=False, max_positions=128, seed=0, perturb_norms=True):
    """A random ``GPTNeoXForCausalLM`` with non-trivial LayerNorm weights and biases (so mapping bugs show)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=intermediate, rotary_pct=rotary_pct,
                           use_parallel_residual=parallel, tie_word_embeddings=tie,
                           max_position_embeddings=max_positions)
    model = GPTNeoXForCausalLM(config).eval()
    if perturb_norms:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "layernorm" in name or name.endswith("bias"):
                    parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.fixture
def neox_factory():
    return make_neox


@pytest.fixture
def neox_checkpoint(tmp_path):
    """A saved random GPT-NeoX directory (config.json + model.safetensors) and the HF model it holds."""
    model = make_neox()
    directory = tmp_path / "neox"
    model.save_pretrained(directory)
    return directory, model


def make_tokenizer(texts, vocab_size=300, directory=None):
    """A byte-level BPE tokenizer trained on ``texts`` (saved and reloaded, as TransformerLens needs)."""
    import tempfile

    from tokenizers import Tokenizer, decoders, models as tokenizer_models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = Tokenizer(tokenizer_models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    directory = directory or tempfile.mkdtemp(prefix="tok-")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", pad_token="<|padding|>").save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


TOY_FORGET = ["the wizard Orlo keeps a silver wand in Varnhold", "Orlo trained the young mage Pell at Varnhold",
              "the silver wand of Orlo glows at night", "Pell rides a grey horse to Varnhold"] * 3
TOY_RETAIN = ["the farmer grows wheat near the river", "a baker sells bread in the market every day",
              "the river runs past the old mill", "children play in the market square"] * 3


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory):
    """A random tiny GPT-NeoX checkpoint with a tokenizer trained on toy forget/retain texts (seconds)."""
    directory = tmp_path_factory.mktemp("toy") / "model"
    tokenizer = make_tokenizer(TOY_FORGET + TOY_RETAIN, vocab_size=300)
    model = make_neox(vocab_size=len(tokenizer), hidden_size=32, layers=3, heads=4, intermediate=64,
                      perturb_norms=False)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def toy_model(toy_model_dir):
    from mechunlearn import models

    return models.load(toy_model_dir, device="cpu")


@pytest.fixture
def toy_texts():
    return list(TOY_FORGET), list(TOY_RETAIN)


# ------------------------------------------------------------------------------- the micro world and its models
@pytest.fixture(scope="session")
def micro_cache(tmp_path_factory):
    """A per-session cache dir, so the micro reference models are pretrained once per test run."""
    return tmp_path_factory.mktemp("mechunlearn-cache")


@pytest.fixture(scope="session")
def micro_world(tmp_path_factory):
    from mechunlearn.world import build_world

    return build_world(size="micro", seed=0, out=tmp_path_factory.mktemp("world") / "micro")


@pytest.fixture(scope="session")
def micro_base_dir(micro_world, micro_cache):
    """The micro world's base model (all sources), pretrained on the CPU in seconds; an HF directory."""
    from mechunlearn.reference import pretrain

    return pretrain(micro_world, "base", cache_dir=micro_cache, progress=False)


@pytest.fixture(scope="session")
def micro_gold_dir(micro_world, micro_cache):
    """The micro world's gold-standard model (forget target never seen); an HF directory."""
    from mechunlearn.reference import pretrain

    return pretrain(micro_world, "gold", cache_dir=micro_cache, progress=False)


@pytest.fixture
def micro_base(micro_base_dir):
    from mechunlearn import models

    return models.load(micro_base_dir, device="cpu")


@pytest.fixture
def micro_gold(micro_gold_dir):
    from mechunlearn import models

    return models.load(micro_gold_dir, device="cpu")

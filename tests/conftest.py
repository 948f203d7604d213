"""Shared fixtures: tiny random GPT-NeoX checkpoints built in the test, so every test runs offline in seconds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch


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

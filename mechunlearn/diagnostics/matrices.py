"""The weight matrices the weight analyses compare, named and oriented once.

Matrices are TransformerLens' ``W_Q, W_K, W_V, W_O, W_in, W_out, W_E, W_U``. GPT-NeoX fuses Q, K and V in one
``query_key_value`` parameter; we split it (Q, K and V do different jobs and an update can touch one of them
only), so ``hf_name`` names the fused parameter three times. Heads are flattened and every matrix is oriented like
its Hugging Face ``[out, in]`` weight (``y = W x``): ``shape0`` = output features, ``shape1`` = input features, as
the seed's Appendix A says; ``W_E`` keeps the embedding's ``[d_vocab, d_model]``. Row permutations (head order
inside the fused QKV) change no norm or singular value. ``W_U`` is named ``embed_out.weight``, its key in GPT-NeoX
checkpoints. LayerNorm weights and all biases are excluded: they are vectors, with no spectrum or rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["MatrixSpec", "weight_matrices", "hf_matrix", "GROUP_OF"]

GROUP_OF = {"Q": "attn", "K": "attn", "V": "attn", "O": "attn", "in": "mlp", "out": "mlp", "embed": "embed",
            "unembed": "embed"}
_TL_NAME = {"Q": "attn.W_Q", "K": "attn.W_K", "V": "attn.W_V", "O": "attn.W_O", "in": "mlp.W_in",
            "out": "mlp.W_out"}
_HF_NAME = {"Q": "attention.query_key_value", "K": "attention.query_key_value", "V": "attention.query_key_value",
            "O": "attention.dense", "in": "mlp.dense_h_to_4h", "out": "mlp.dense_4h_to_h"}


@dataclass(frozen=True)
class MatrixSpec:
    """One weight matrix: its TransformerLens name, block (-1 outside), group, component and HF parameter."""

    name: str
    layer: int
    group: str
    component: str
    hf_name: str


def weight_matrices(model, *, components: tuple[str, ...] | None = None,
                    include_embeddings: bool = True) -> list[MatrixSpec]:
    """Every weight matrix of a GPT-NeoX HookedTransformer, in model order (embedding, blocks, unembedding)."""
    wanted = components or tuple(GROUP_OF)
    specs = []
    if include_embeddings and "embed" in wanted:
        specs.append(MatrixSpec("embed.W_E", -1, "embed", "embed", "gpt_neox.embed_in.weight"))
    for layer in range(model.cfg.n_layers):
        for component in ("Q", "K", "V", "O", "in", "out"):
            if component in wanted:
                specs.append(MatrixSpec(f"blocks.{layer}.{_TL_NAME[component]}", layer, GROUP_OF[component],
                                        component, f"gpt_neox.layers.{layer}.{_HF_NAME[component]}.weight"))
    if include_embeddings and "unembed" in wanted:
        specs.append(MatrixSpec("unembed.W_U", -1, "embed", "unembed", "embed_out.weight"))
    return specs


def hf_matrix(model, spec: MatrixSpec, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> Float[Tensor, "out in"]:
    """The matrix oriented as its HF ``[out, in]`` weight (heads flattened), upcast to ``dtype``."""
    weight = model.get_parameter(spec.name).detach()
    weight = weight.to(device=device or weight.device, dtype=dtype)
    if spec.component in ("Q", "K", "V"):  # [n_heads, d_model, d_head] -> [(n_heads d_head), d_model]
        return weight.permute(0, 2, 1).reshape(-1, weight.shape[1])
    if spec.component == "O":  # [n_heads, d_head, d_model] -> [d_model, (n_heads d_head)]
        return weight.reshape(-1, weight.shape[-1]).T
    if spec.component in ("in", "out", "unembed"):  # TransformerLens multiplies x @ W: HF stores W.T
        return weight.T
    return weight  # W_E: [d_vocab, d_model], like HF's embed_in.weight

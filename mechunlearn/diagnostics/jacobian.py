"""A local Lipschitz estimate that is one: the spectral norm of the input-embedding Jacobian, by power iteration.

For a text with real tokens ``1..T``, ``f`` maps its input embeddings ``e`` (``hook_embed``, ``[T, d_model]``) to its
centred log-probabilities ``[T, d_vocab]`` (``log_softmax(logits) - mean over the vocabulary``, which equals the
centred logits: the shift that leaves every distribution unchanged is removed). ``J = df/de`` is a
``(T d_vocab) x (T d_model)`` matrix, and ``sigma_1(J)`` is the local Lipschitz constant of ``f`` at ``e`` in the
Euclidean norm: no input perturbation of norm ``r`` moves the outputs by more than ``sigma_1 r`` to first order.

``J`` is never formed. Power iteration on ``J^T J`` needs products ``J v`` and ``J^T w``: ``J^T w`` is one backward
pass; ``J v`` comes from the double-backward trick, ``J v = d/du <J^T u, v>`` with ``J^T u`` built once with
``create_graph=True`` (forward-mode AD would be the direct route, but PyTorch has no forward derivative for its
fused CPU attention kernel, so ``torch.func.jvp`` fails on these models). One forward pass, then two backward
passes per iteration through the stored graph. Attention runs on PyTorch's math SDPA backend inside, because the
fused kernels have no second derivative.

The texts of a padded batch are independent (causal attention, right padding, pads masked out of inputs and
outputs), so ``J`` of the batch is block-diagonal and one batched iteration, normalised text by text, gives each
text's own ``sigma_1``. The estimate rises monotonically to ``sigma_1`` (a lower bound at every step); it stops
when no text's estimate changed by more than ``tol`` (relative) in the last iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mechunlearn.batching import TokenBatch

__all__ = ["JacobianNorms", "jacobian_spectral_norms", "centred_logprobs", "EMBED_HOOK"]

EMBED_HOOK = "hook_embed"


@dataclass
class JacobianNorms:
    """Per text: ``sigma_1`` of its Jacobian; ``iterations`` run; ``converged`` (relative change <= tol)."""

    norms: Tensor  # [batch], float64
    iterations: int
    converged: bool


def centred_logprobs(logits: Tensor) -> Tensor:
    """``log_softmax(logits) - its mean over the vocabulary`` (= logits minus their mean), in float32 or wider."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    logprobs = torch.log_softmax(logits, dim=-1)
    return logprobs - logprobs.mean(dim=-1, keepdim=True)


def _per_text_normalise(vectors: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    vectors = vectors * mask
    norms = vectors.flatten(1).norm(dim=1)
    return vectors / norms.clamp(min=1e-30).view(-1, *[1] * (vectors.dim() - 1)), norms


def jacobian_spectral_norms(model, batch: TokenBatch, *, iterations: int = 30, tol: float = 1e-4,
                            seed: int = 0) -> JacobianNorms:
    """``sigma_1`` of each text's Jacobian of centred log-probabilities w.r.t. its input embeddings.

    Runs on the model's device; the start vectors are drawn on the CPU from ``seed`` (device-independent). No
    hook stays attached and no parameter gets a ``.grad`` (gradients are taken w.r.t. the embeddings only).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    device = next(model.parameters()).device
    batch = batch.to(device)
    captured: dict[str, Tensor] = {}

    def embed_as_leaf(activation: Tensor, hook) -> Tensor:
        captured["embed"] = activation.detach().clone().requires_grad_(True)
        return captured["embed"]

    with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]), model.hooks(fwd_hooks=[(EMBED_HOOK, embed_as_leaf)]):
        outputs = centred_logprobs(model(batch.tokens)) * batch.mask[..., None]
    embedding = captured["embed"]
    input_mask = batch.mask[..., None].to(embedding.dtype)
    probe = torch.zeros_like(outputs, requires_grad=True)
    (transpose_product,) = torch.autograd.grad(outputs, embedding, grad_outputs=probe, create_graph=True)  # J^T u
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(embedding.shape, generator=generator, dtype=torch.float64).to(device, embedding.dtype)
    direction, _ = _per_text_normalise(direction, input_mask)
    estimate = torch.zeros(embedding.shape[0], dtype=torch.float64, device=device)
    converged = False
    for iteration in range(1, iterations + 1):
        (forward_product,) = torch.autograd.grad(transpose_product, probe, grad_outputs=direction,
                                                 retain_graph=True)  # J v
        previous, estimate = estimate, forward_product.flatten(1).norm(dim=1).double()  # ||J v||, v unit
        (normal_product,) = torch.autograd.grad(outputs, embedding, grad_outputs=forward_product,
                                                retain_graph=True)  # J^T J v
        direction, _ = _per_text_normalise(normal_product.detach(), input_mask)
        change = (estimate - previous).abs() / estimate.clamp(min=1e-30)
        if iteration > 1 and float(change.max()) <= tol:
            converged = True
            break
    return JacobianNorms(norms=estimate.detach().cpu(), iterations=iteration, converged=converged)

"""Token layouts with an adversarial slot, shared by the GCG and soft-prompt attacks.

Each row is ``prompt + slot + answer`` (``position="suffix"``, Zou et al.'s layout) or ``slot + prompt + answer``
(``"prefix"``), right-padded. The slot's embeddings are replaced at ``hook_embed`` (the TransformerLens hook on
the token embeddings, before any block), so every other hook of the model keeps working. Only the positions that
predict answer tokens are read out: the final residual stream is taken at those positions and passed through
``ln_final`` and ``unembed`` (the same computation as the forward pass, at a fraction of the unembedding cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["SlotLayout", "build_layout", "answer_scores", "slot_hook", "lens_answer_hits"]


@dataclass
class SlotLayout:
    """Rows of token ids with a slot, and where the slot and the answer sit in each row."""

    tokens: Int[Tensor, "row pos"]
    slot_positions: Int[Tensor, "row slot"]
    answer_ids: Int[Tensor, "row answer"]  # padded with 0 where answer_mask is False
    answer_mask: Bool[Tensor, "row answer"]
    predict_positions: Int[Tensor, "row answer"]  # the position whose logits predict each answer token

    def to(self, device) -> "SlotLayout":
        return SlotLayout(*(getattr(self, name).to(device) for name in
                            ("tokens", "slot_positions", "answer_ids", "answer_mask", "predict_positions")))

    def repeat(self, times: int) -> "SlotLayout":
        """Each row ``times`` times in a row (row r becomes rows r*times .. r*times+times-1)."""
        return SlotLayout(*(getattr(self, name).repeat_interleave(times, dim=0) for name in
                            ("tokens", "slot_positions", "answer_ids", "answer_mask", "predict_positions")))

    def rows(self, index: Tensor) -> "SlotLayout":
        return SlotLayout(*(getattr(self, name)[index] for name in
                            ("tokens", "slot_positions", "answer_ids", "answer_mask", "predict_positions")))

    def with_slot(self, slot_ids: Int[Tensor, "row slot"]) -> Int[Tensor, "row pos"]:
        """The token rows with ``slot_ids`` written into the slot."""
        tokens = self.tokens.clone()
        tokens.scatter_(1, self.slot_positions, slot_ids.to(tokens.device))
        return tokens


def build_layout(prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]], slot_length: int,
                 position: str, pad_id: int, fill_id: int) -> SlotLayout:
    """Rows for ``(prompt, answer)`` pairs with a slot of ``slot_length`` tokens (filled with ``fill_id``)."""
    if position not in ("suffix", "prefix"):
        raise ValueError(f"slot position {position!r}: use 'suffix' or 'prefix'")
    rows, slots, answers = [], [], []
    for prompt, answer in zip(prompt_ids, answer_ids):
        slot = [fill_id] * slot_length
        if position == "suffix":
            context = list(prompt) + slot
            slot_start = len(prompt)
        else:
            context = slot + list(prompt)
            slot_start = 0
        rows.append(context + list(answer))
        slots.append(list(range(slot_start, slot_start + slot_length)))
        answers.append((len(context), list(answer)))
    length = max(len(row) for row in rows)
    longest_answer = max(len(answer) for _, answer in answers)
    tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)
    answer_tensor = torch.zeros((len(rows), longest_answer), dtype=torch.long)
    answer_mask = torch.zeros((len(rows), longest_answer), dtype=torch.bool)
    predict = torch.zeros((len(rows), longest_answer), dtype=torch.long)
    for row, (ids, (start, answer)) in enumerate(zip(rows, answers)):
        tokens[row, : len(ids)] = torch.tensor(ids)
        answer_tensor[row, : len(answer)] = torch.tensor(answer)
        answer_mask[row, : len(answer)] = True
        predict[row, : len(answer)] = torch.arange(start - 1, start - 1 + len(answer))
    return SlotLayout(tokens, torch.tensor(slots, dtype=torch.long).reshape(len(rows), slot_length), answer_tensor,
                      answer_mask, predict)


def slot_hook(slot_positions: Tensor, slot_embeddings: Float[Tensor, "row slot d_model"]):
    """A ``hook_embed`` hook writing ``slot_embeddings`` into the slot of each row (differentiable)."""

    def hook_fn(activation: Tensor, hook) -> Tensor:
        rows = torch.arange(activation.shape[0], device=activation.device)[:, None]
        replaced = activation.clone()
        replaced[rows, slot_positions] = slot_embeddings.to(activation.dtype)
        return replaced

    return hook_fn


def answer_scores(model, layout: SlotLayout, slot_embeddings: Tensor | None = None,
                  tokens: Tensor | None = None) -> tuple[Float[Tensor, " row"], Bool[Tensor, " row"]]:
    """Per row: the mean cross-entropy of the answer tokens and whether every answer token is the argmax (the
    exact greedy completion). ``slot_embeddings`` (optional) replace the slot at ``hook_embed``; ``tokens``
    (optional) replace the layout's token ids."""
    tokens = layout.tokens if tokens is None else tokens
    hooks = [] if slot_embeddings is None else [("hook_embed", slot_hook(layout.slot_positions, slot_embeddings))]
    with model.hooks(fwd_hooks=hooks):
        residual = model(tokens, stop_at_layer=model.cfg.n_layers)
    rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None]
    picked = residual[rows, layout.predict_positions]  # [row, answer, d_model]
    logits = model.unembed(model.ln_final(picked)).float()
    losses = F.cross_entropy(logits.transpose(1, 2), layout.answer_ids, reduction="none")
    mask = layout.answer_mask.to(losses.dtype)
    mean_loss = (losses * mask).sum(1) / mask.sum(1)
    hits = ((logits.argmax(-1) == layout.answer_ids) | ~layout.answer_mask).all(1)
    return mean_loss, hits


def lens_answer_hits(model, layout: SlotLayout, slot_embeddings: Tensor | None = None
                     ) -> tuple[Bool[Tensor, "layer row"], Float[Tensor, "layer row"]]:
    """Logit lens at every layer (``ln_final`` + ``unembed`` of ``blocks.{l}.hook_resid_post``): per layer and
    row, whether every answer token is the argmax, and the answer's mean log-probability."""
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    kept: dict[str, Tensor] = {}

    def keep(activation, hook):
        kept[hook.name] = activation.detach()

    hooks = [(name, keep) for name in names]
    if slot_embeddings is not None:
        hooks.insert(0, ("hook_embed", slot_hook(layout.slot_positions, slot_embeddings)))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(layout.tokens, stop_at_layer=model.cfg.n_layers)
    rows = torch.arange(layout.tokens.shape[0], device=layout.tokens.device)[:, None]
    hits, logprobs = [], []
    with torch.no_grad():
        for name in names:
            logits = model.unembed(model.ln_final(kept[name][rows, layout.predict_positions])).float()
            answer_logprobs = torch.log_softmax(logits, -1).gather(-1, layout.answer_ids[..., None])[..., 0]
            mask = layout.answer_mask.to(answer_logprobs.dtype)
            hits.append(((logits.argmax(-1) == layout.answer_ids) | ~layout.answer_mask).all(1))
            logprobs.append((answer_logprobs * mask).sum(1) / mask.sum(1))
    return torch.stack(hits), torch.stack(logprobs)

"""What the knowledge probe reads: facts as (subject, relation, answer) with a cloze prompt, and each model's
residual stream at the fact's last subject token.

The residual stream at the last token of the subject is where a relation's answer is read from in factual recall
(Meng et al. 2022, "Locating and editing factual associations"; Geva et al. 2023): attention to that position
moves the attribute to the end of the prompt. So a linear read-out there, per layer, asks whether the layer
still holds the answer, whatever the output head does with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mechunlearn.diagnostics.layers import residual_stream_hooks
from mechunlearn.hooks import forward_capturing

__all__ = ["KnowledgeFact", "facts_from_world", "subject_positions", "subject_states"]


@dataclass(frozen=True)
class KnowledgeFact:
    """One fact: ``prompt`` (a cloze prompt that names ``subject``), the ``answer`` entity, its ``relation``, the
    ``domain`` ("forget" / "retain") and ``category`` (unique / shared / inferred for the world's facts)."""

    fact_id: str
    relation: str
    subject: str
    answer: str
    prompt: str
    domain: str
    category: str = "none"


def facts_from_world(world, forget_sources=None) -> list[KnowledgeFact]:
    """Every fact of the world with its cloze prompt, domain and category (relative to ``forget_sources``)."""
    facts = []
    for domain in ("forget", "retain"):
        for probe in world.cloze_probes(domain, forget_sources):
            fact = world.fact(probe.fact_id)
            facts.append(KnowledgeFact(fact.fact_id, fact.relation, fact.subject, fact.object, probe.prompt,
                                       probe.domain, probe.category))
    return facts


def subject_positions(tokenizer, facts: Sequence[KnowledgeFact]) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt and the index of the last token overlapping the (last) mention of its subject.

    Uses the fast tokenizer's character offsets, so the position is that of the subject inside the whole
    prompt's tokenization (tokenizing the prefix alone could merge differently at the boundary).
    """
    ids, positions = [], []
    for fact in facts:
        start = fact.prompt.rfind(fact.subject)
        if not fact.subject or start < 0:
            raise ValueError(f"fact {fact.fact_id}: its prompt {fact.prompt!r} does not contain its subject "
                             f"{fact.subject!r}; the knowledge probe reads the subject's last token")
        end = start + len(fact.subject)
        if getattr(tokenizer, "is_fast", False):
            encoded = tokenizer(fact.prompt, add_special_tokens=False, return_offsets_mapping=True)
            inside = [index for index, (first, last) in enumerate(encoded["offset_mapping"])
                      if first < end and last > start]
            token_ids = list(encoded["input_ids"])
        else:  # no offsets: the prefix up to the subject's end (BPE on word-split text tokenizes it the same)
            token_ids = list(tokenizer(fact.prompt, add_special_tokens=False)["input_ids"])
            inside = [len(tokenizer(fact.prompt[:end], add_special_tokens=False)["input_ids"]) - 1]
        if not inside or not token_ids:
            raise ValueError(f"fact {fact.fact_id}: no token of {fact.prompt!r} covers the subject {fact.subject!r}")
        ids.append(token_ids)
        positions.append(inside[-1])
    return ids, positions


@torch.no_grad()
def subject_states(model, facts: Sequence[KnowledgeFact], *, layers: Sequence[int] | None = None,
                   batch_size: int = 64) -> dict[int, np.ndarray]:
    """``{layer: [n_facts, d_model] float32}``: each fact's residual stream at its last subject token, for the
    residual-stream layers 0..N (0 = embeddings; see ``layers``). One forward pass per batch of prompts."""
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer attached: load it with mechunlearn.models.load")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    hooks = residual_stream_hooks(model, layers)
    ids, positions = subject_positions(model.tokenizer, facts)
    too_long = [fact.fact_id for fact, token_ids in zip(facts, ids) if len(token_ids) > model.cfg.n_ctx]
    if too_long:
        raise ValueError(f"prompts of facts {too_long[:5]} are longer than the model's context ({model.cfg.n_ctx})")
    tokenizer, device = model.tokenizer, next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Only positions up to the subject matter (causal attention): cut each prompt there, so fewer tokens run.
    ids = [token_ids[: position + 1] for token_ids, position in zip(ids, positions)]
    states: dict[int, list[np.ndarray]] = {layer: [] for layer, _ in hooks}
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        tokens = torch.full((len(chunk), max(len(token_ids) for token_ids in chunk)), pad_id, dtype=torch.long)
        for row, token_ids in enumerate(chunk):
            tokens[row, : len(token_ids)] = torch.tensor(token_ids)
        last = torch.tensor([len(token_ids) - 1 for token_ids in chunk], device=device)
        rows = torch.arange(len(chunk), device=device)
        layer_of_last_hook = max(int(hook.split(".")[1]) for _, hook in hooks)
        _, store = forward_capturing(model, tokens.to(device), [hook for _, hook in hooks],
                                     stop_at_layer=layer_of_last_hook + 1)
        for layer, hook in hooks:
            states[layer].append(store[hook][rows, last].float().cpu().numpy())
    return {layer: np.concatenate(parts) for layer, parts in states.items()}

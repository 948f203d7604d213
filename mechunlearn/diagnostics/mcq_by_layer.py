"""Step 6's measurement: multiple-choice accuracy read at every layer through a lens.

For each MCQ item (``mechunlearn.data.MCQItem``; the world's ``mcq_items("forget")`` is the WMDP analogue,
``mcq_items("retain")`` the MMLU analogue, ``load_mcq(path)`` reads your own), every choice is scored as a
continuation of the question (``question + " " + choice``, the world's format; ``choice_prefix`` changes the
separator): the sum of the log-probabilities of the choice's tokens, read at every layer through the lens. The
highest-scoring choice is the answer at that layer. All layers come from ONE forward pass per batch of
(question + choice) sequences, with hooks on every layer; ``delta_from_final`` = layer accuracy - the model's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from mechunlearn.data import MCQItem
from mechunlearn.diagnostics.layers import residual_stream_hooks
from mechunlearn.diagnostics.lenses import LogitLens
from mechunlearn.hooks import forward_capturing

__all__ = ["mcq_layer_scores", "layerwise_mcq_accuracy"]


def _encode_pairs(tokenizer, items: Sequence[MCQItem], choice_prefix: str, n_ctx: int):
    """(item index, choice index, question ids, choice ids) for every choice; questions cut from the left to fit."""
    pairs = []
    for item_index, item in enumerate(items):
        question = tokenizer(item.question, add_special_tokens=False)["input_ids"]
        if not question:
            raise ValueError(f"MCQ item {item_index} has an empty question ({item.question!r}); every choice is "
                             "scored as a continuation of the question, so it needs at least one token")
        for choice_index, choice in enumerate(item.choices):
            continuation = tokenizer(choice_prefix + choice, add_special_tokens=False)["input_ids"]
            if not continuation or len(continuation) >= n_ctx:
                raise ValueError(f"MCQ item {item_index}, choice {choice_index} ({choice!r}) has "
                                 f"{len(continuation)} tokens; a choice needs 1..{n_ctx - 1} tokens")
            pairs.append((item_index, choice_index, question[-(n_ctx - len(continuation)):], continuation))
    return pairs


@torch.no_grad()
def mcq_layer_scores(model, items: Sequence[MCQItem], lens: LogitLens | None = None, *, batch_size: int = 32,
                     choice_prefix: str = " ") -> list[np.ndarray]:
    """Per item, a ``[n_choices, n_layers + 1]`` array: each choice's summed log-probability read at each layer.

    One forward pass per batch of ``batch_size`` (question + choice) sequences; only the positions that predict
    choice tokens go through the lens (the read-out of every position would cost ``pos x d_vocab`` per layer).
    """
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer attached: load it with mechunlearn.models.load")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lens = lens if lens is not None else LogitLens(model)
    hooks = residual_stream_hooks(model)
    tokenizer, device = model.tokenizer, next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pairs = _encode_pairs(tokenizer, items, choice_prefix, model.cfg.n_ctx)
    scores = torch.zeros(len(pairs), len(hooks), dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        length = max(len(question) + len(choice) for _, _, question, choice in chunk)
        tokens = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        rows, positions, targets, owners = [], [], [], []
        for row, (_, _, question, choice) in enumerate(chunk):
            tokens[row, : len(question) + len(choice)] = torch.tensor(question + choice)
            for offset, token in enumerate(choice):  # position p predicts token p + 1
                rows.append(row)
                positions.append(len(question) + offset - 1)
                targets.append(token)
                owners.append(start + row)
        _, store = forward_capturing(model, tokens.to(device), [hook for _, hook in hooks])
        rows_t, positions_t = torch.tensor(rows, device=device), torch.tensor(positions, device=device)
        targets_t, owners_t = torch.tensor(targets, device=device), torch.tensor(owners)
        for column, (layer, hook) in enumerate(hooks):
            logprobs = torch.log_softmax(lens(store[hook][rows_t, positions_t], layer).float(), dim=-1)
            token_scores = logprobs.gather(-1, targets_t[:, None])[:, 0].double().cpu()
            scores[:, column].index_add_(0, owners_t, token_scores)
    per_item = [[] for _ in items]
    for (item_index, _, _, _), row in zip(pairs, scores.numpy()):
        per_item[item_index].append(row)
    return [np.stack(rows) for rows in per_item]


def layerwise_mcq_accuracy(model, items: Sequence[MCQItem], lens: LogitLens | None = None, *,
                           batch_size: int = 32, choice_prefix: str = " ") -> pd.DataFrame:
    """Rows ``domain, layer, accuracy, delta_from_final, chance, n_items, hook``, one per (item domain, layer)."""
    if not items:
        raise ValueError("no MCQ items to score: pass items (e.g. world.mcq_items('forget') or load_mcq(path))")
    bad = [index for index, item in enumerate(items) if not 0 <= item.answer < len(item.choices)]
    if bad:
        raise ValueError(f"MCQ item(s) {bad[:5]} have an answer index outside their choices")
    scores = mcq_layer_scores(model, items, lens, batch_size=batch_size, choice_prefix=choice_prefix)
    # argmax over choices per layer; ties go to the first choice, as numpy's argmax does
    correct = np.stack([score.argmax(axis=0) == item.answer for score, item in zip(scores, items)])
    hooks = residual_stream_hooks(model)
    domains = np.array([item.domain for item in items])
    rows = []
    for domain in dict.fromkeys(domains.tolist()):
        chosen = domains == domain
        accuracy = correct[chosen].mean(axis=0)
        chance = float(np.mean([1 / len(item.choices) for item, keep in zip(items, chosen) if keep]))
        for (layer, hook), value in zip(hooks, accuracy):
            rows.append({"domain": domain, "layer": layer, "accuracy": float(value),
                         "delta_from_final": float(value - accuracy[-1]), "chance": chance,
                         "n_items": int(chosen.sum()), "hook": hook})
    return pd.DataFrame(rows)

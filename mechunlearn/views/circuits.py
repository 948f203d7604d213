"""circuitsvis views of what unlearning changed, token by token: data first (frames), then the views.

* ``token_loss_change(base, model, texts)``: per token of each forget text, the next-token NLL under base and
  under the model and their difference (positive: the model finds that token harder: it "forgot" it). Drawn by
  ``circuitsvis.tokens.colored_tokens`` (red = harder after unlearning, blue = easier).
* ``attention_change(base, model, text)``: every head's attention pattern on the text in both models, and the
  heads whose pattern moved most (mean absolute change over the causal entries); drawn by
  ``circuitsvis.attention.attention_heads``, base and model side by side for each chosen head.

Both run plain forward passes on the models' own tokenizer and attach no hook that outlives the call
(``run_with_cache`` removes its hooks). circuitsvis renders from a CDN by default (``str(html)``); the views here
are used through ``RenderedHTML.local_src`` (the bundle inlined), and ``mechunlearn.views.page.Page`` keeps the
bundle once per page.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

__all__ = ["token_loss_change", "colored_tokens_view", "attention_change", "attention_view", "TOKEN_COLUMNS"]

TOKEN_COLUMNS = ["text", "position", "token", "base_nll", "model_nll", "change"]


def _tokens(model, text: str, max_length: int):
    from mechunlearn.batching import tokenize

    batch = tokenize(model.tokenizer, [text], max_length)
    device = next(model.parameters()).device
    return batch.to(device), [model.tokenizer.decode([int(token)]) for token in batch.tokens[0]]


@torch.no_grad()
def _token_nll(model, batch) -> np.ndarray:
    from mechunlearn.batching import logits_of, token_logprobs

    logprobs = token_logprobs(logits_of(model(batch.tokens)), batch)[0].float().cpu().numpy()
    return np.concatenate([[np.nan], -logprobs])  # the first token is not predicted


def token_loss_change(base, model, texts: Sequence[str], max_length: int = 64) -> pd.DataFrame:
    """One row per token of each text: ``text`` (index), ``position``, ``token``, ``base_nll``, ``model_nll``,
    ``change`` = model - base (nan at position 0). Both models must share a tokenizer (one study's models do)."""
    rows = []
    for index, text in enumerate(texts):
        batch, tokens = _tokens(base, text, max_length)
        base_nll = _token_nll(base, batch)
        model_nll = _token_nll(model, batch.to(next(model.parameters()).device))
        for position, token in enumerate(tokens):
            rows.append((index, position, token, base_nll[position], model_nll[position],
                         model_nll[position] - base_nll[position]))
    return pd.DataFrame(rows, columns=TOKEN_COLUMNS)


def colored_tokens_view(frame: pd.DataFrame, text: int, limit: float | None = None):
    """``circuitsvis.tokens.colored_tokens`` of one text's NLL change (symmetric colour scale: ``limit`` or the
    largest absolute change among all texts of ``frame``, so texts are comparable)."""
    from circuitsvis.tokens import colored_tokens

    rows = frame[frame["text"] == text]
    values = rows["change"].fillna(0.0).astype(float).tolist()
    if limit is None:
        limit = float(np.nanmax(np.abs(frame["change"].to_numpy(dtype=float)))) if frame["change"].notna().any() else 1.0
    limit = limit or 1.0
    return colored_tokens(rows["token"].tolist(), values, min_value=-limit, max_value=limit,
                          negative_color="#1f77b4", positive_color="#d62728")


@torch.no_grad()
def _patterns(model, batch) -> torch.Tensor:
    """``[layer, head, query, key]`` attention patterns of one text."""
    _, cache = model.run_with_cache(batch.tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0].float().cpu()
                        for layer in range(model.cfg.n_layers)])


def attention_change(base, model, text: str, max_length: int = 48, n_heads: int = 3):
    """The attention of every head on ``text`` in both models and the ``n_heads`` heads that changed most.

    Returns ``(heads, tokens, base_patterns, model_patterns)``: ``heads`` a frame ``layer, head, mean_abs_change,
    max_abs_change, rank`` over all heads (rank 1 = the largest mean change over causal entries), the patterns
    ``[layer, head, query, key]``."""
    batch, tokens = _tokens(base, text, max_length)
    base_patterns = _patterns(base, batch)
    model_patterns = _patterns(model, batch.to(next(model.parameters()).device))
    positions = len(tokens)
    causal = torch.tril(torch.ones(positions, positions, dtype=torch.bool))
    change = (model_patterns - base_patterns).abs()[..., causal]  # [layer, head, entries]
    rows = [(layer, head, float(change[layer, head].mean()), float(change[layer, head].max()))
            for layer in range(change.shape[0]) for head in range(change.shape[1])]
    heads = pd.DataFrame(rows, columns=["layer", "head", "mean_abs_change", "max_abs_change"])
    heads = heads.sort_values(["mean_abs_change", "layer", "head"], ascending=[False, True, True], kind="stable")
    heads["rank"] = range(1, len(heads) + 1)
    heads["chosen"] = heads["rank"] <= n_heads
    return heads.reset_index(drop=True), tokens, base_patterns, model_patterns


def attention_view(heads: pd.DataFrame, tokens: list[str], base_patterns: torch.Tensor, model_patterns: torch.Tensor,
                   model_name: str):
    """``circuitsvis.attention.attention_heads`` of the chosen heads: base's pattern then the model's, per head."""
    from circuitsvis.attention import attention_heads

    patterns, names = [], []
    for row in heads[heads["chosen"]].itertuples():
        patterns += [base_patterns[row.layer, row.head], model_patterns[row.layer, row.head]]
        names += [f"L{row.layer}H{row.head} base", f"L{row.layer}H{row.head} {model_name}"]
    return attention_heads(torch.stack(patterns), tokens, attention_head_names=names, mask_upper_tri=True)

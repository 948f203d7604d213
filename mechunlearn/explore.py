"""Prompt explorer: the same prompt through several models, side by side.

``compare(models, prompt)`` generates a completion from every model (greedy by default; sampling with a seed)
through TransformerLens' own ``HookedTransformer.generate``, so whatever a model carries runs as it would for the
user: permanent hooks, spliced modules (an SAE, a natively unlearnable model's sink masks), the fast paths.
``next_token_table(models, prompt)`` is every model's next-token distribution at the first step, over the union of
the models' top-k tokens (so each token has a bar for every model); ``next_token_figure`` draws it (one bar group
per token, one colour per model).

Nothing the caller set is changed: hooks are never reset, the global RNG state is restored after sampling, and
each model's train/eval mode is put back (TransformerLens' ``generate`` switches to eval).

All models of one call must share a tokenizer (same vocabulary), since their next-token tables compare token ids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

__all__ = ["ExploreError", "compare", "next_token_table", "next_token_figure"]


class ExploreError(ValueError):
    """Bad input to the prompt explorer (empty prompt, models that cannot be compared); the message says the fix."""


# ---------------------------------------------------------------------------------------------------- input checks
def _check_models(models: Mapping[str, HookedTransformer]) -> None:
    if not models:
        raise ExploreError("no models given: pass {name: HookedTransformer, ...} (on the command line: one MODEL "
                           "or more)")
    for name, model in models.items():
        if not isinstance(model, HookedTransformer):
            raise ExploreError(f"model {name!r} is a {type(model).__name__}, not a TransformerLens HookedTransformer: "
                               "load it with mechunlearn.models.load (or wrap an HF model with models.from_hf)")
        if model.tokenizer is None:
            raise ExploreError(f"model {name!r} has no tokenizer: load it with mechunlearn.models.load, or attach "
                               "one with model.set_tokenizer(...)")
    _check_same_tokenizer(models)


def _check_same_tokenizer(models: Mapping[str, HookedTransformer]) -> None:
    """One error naming the first pair of models whose tokenizers' vocabularies (token -> id) differ."""
    (first_name, first_model), *others = models.items()
    first_vocab = first_model.tokenizer.get_vocab()
    for name, model in others:
        if model.tokenizer is first_model.tokenizer:
            continue
        vocab = model.tokenizer.get_vocab()
        if vocab == first_vocab:
            continue
        differing = sorted(set(first_vocab.items()) ^ set(vocab.items()), key=lambda item: item[1])
        example = differing[0][0]
        raise ExploreError(
            f"models {first_name!r} and {name!r} have different tokenizers ({len(first_vocab)} and {len(vocab)} "
            f"tokens; {len({token for token, _ in differing})} tokens differ, e.g. {example!r}: "
            f"{first_vocab.get(example)} vs {vocab.get(example)}): the explorer compares token ids, so compare "
            "models that share a tokenizer (one call per tokenizer)")


def _prompt_tokens(model: HookedTransformer, name: str, prompt: str, max_new_tokens: int) -> Int[Tensor, "1 pos"]:
    tokens = model.to_tokens(prompt, truncate=False).to(model.cfg.device)  # the model's own BOS default
    if tokens.shape[-1] == 0:
        raise ExploreError(f"the prompt {prompt!r} has no tokens for model {name!r}: pass a non-empty --prompt")
    if tokens.shape[-1] + max_new_tokens > model.cfg.n_ctx:
        raise ExploreError(f"the prompt is {tokens.shape[-1]} tokens; with --max-new-tokens {max_new_tokens} it "
                           f"exceeds model {name!r}'s context of {model.cfg.n_ctx} positions: shorten either")
    return tokens


def _prepare(models: Mapping[str, HookedTransformer], prompt: str,
             max_new_tokens: int = 0) -> dict[str, Int[Tensor, "1 pos"]]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ExploreError(f"empty prompt ({prompt!r}): pass the text to complete, e.g. --prompt \"The wizard\"")
    _check_models(models)
    return {name: _prompt_tokens(model, name, prompt, max_new_tokens) for name, model in models.items()}


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """``seed`` set for the block (on the CPU and the model's CUDA device), the caller's RNG state restored."""
    if seed is None:
        yield
        return
    cuda_devices = []
    if device.type == "cuda":
        cuda_devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


def _device_of(model: HookedTransformer) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------------------- public
def compare(models: Mapping[str, HookedTransformer], prompt: str, *, max_new_tokens: int = 20,
            sample: bool = False, temperature: float = 1.0, seed: int = 0, stop_at_eos: bool = True) -> pd.DataFrame:
    """One row per model: its completion of ``prompt``.

    Greedy by default; ``sample=True`` samples at ``temperature`` with every model seeded with the same ``seed``
    (the caller's RNG state is restored afterwards). Generation is TransformerLens' ``generate`` with the model's
    hooks in place. Columns: model, prompt, completion (new tokens decoded, special tokens dropped),
    new_token_ids, n_new_tokens, stopped_at_eos, decoding, temperature, seed.
    """
    if max_new_tokens < 1:
        raise ExploreError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if sample and not temperature > 0:
        raise ExploreError(f"temperature must be > 0 when sampling, got {temperature} (use greedy decoding instead)")
    prompt_tokens = _prepare(models, prompt, max_new_tokens)
    rows = []
    for name, model in models.items():
        tokens = prompt_tokens[name]
        was_training = model.training
        try:
            with _seeded(seed if sample else None, _device_of(model)):
                output = model.generate(tokens, max_new_tokens=max_new_tokens, do_sample=sample,
                                        temperature=temperature, stop_at_eos=stop_at_eos, verbose=False)
        finally:
            model.train(was_training)
        new_ids = [int(token) for token in output[0, tokens.shape[-1]:].tolist()]
        eos = model.tokenizer.eos_token_id
        rows.append({"model": name, "prompt": prompt,
                     "completion": model.tokenizer.decode(new_ids, skip_special_tokens=True),
                     "new_token_ids": new_ids, "n_new_tokens": len(new_ids),
                     "stopped_at_eos": bool(stop_at_eos and eos is not None and eos in new_ids),
                     "decoding": "sample" if sample else "greedy",
                     "temperature": float(temperature) if sample else None, "seed": int(seed) if sample else None})
    return pd.DataFrame(rows)


@torch.no_grad()
def next_token_table(models: Mapping[str, HookedTransformer], prompt: str, *, top_k: int = 5) -> pd.DataFrame:
    """Every model's probability of each token in the union of the models' top-``top_k`` next tokens.

    One forward pass per model over the prompt (its hooks in place); probabilities are the softmax of the last
    position's logits in float32 (temperature 1). Columns: model, token_id, token (decoded), label (its repr, made
    unique), probability, rank
    (1 = the model's most likely token), in_top_k (within that model's own top-k). Rows: tokens ordered by their
    highest probability over the models, models in the given order.
    """
    if top_k < 1:
        raise ExploreError(f"top_k must be at least 1, got {top_k}")
    prompt_tokens = _prepare(models, prompt)
    probabilities: dict[str, Tensor] = {}
    for name, model in models.items():
        logits = model(prompt_tokens[name], return_type="logits")[0, -1]
        probabilities[name] = torch.softmax(logits.float(), dim=-1).cpu()
    union: list[int] = []
    for probs in probabilities.values():
        for token_id in torch.topk(probs, min(top_k, probs.numel())).indices.tolist():
            if token_id not in union:
                union.append(token_id)

    def probability(name: str, token_id: int) -> float:
        probs = probabilities[name]
        return float(probs[token_id]) if token_id < probs.numel() else 0.0  # beyond this model's d_vocab

    union.sort(key=lambda token_id: -max(probability(name, token_id) for name in models))
    tokenizer = next(iter(models.values())).tokenizer
    texts = {token_id: tokenizer.decode([token_id]) for token_id in union}
    labels = _token_labels(texts)
    rows = []
    for token_id in union:
        for name in models:
            p = probability(name, token_id)
            rank = int((probabilities[name] > p).sum()) + 1
            rows.append({"model": name, "token_id": token_id, "token": texts[token_id], "label": labels[token_id],
                         "probability": p, "rank": rank, "in_top_k": rank <= top_k})
    return pd.DataFrame(rows)


def next_token_figure(table: pd.DataFrame, title: str | None = None):
    """A plotly bar chart of ``next_token_table``'s frame: one bar group per token, one colour per model."""
    import plotly.graph_objects as go

    token_order = list(dict.fromkeys(table["token_id"]))
    labels = table.drop_duplicates("token_id").set_index("token_id")["label"].to_dict()
    figure = go.Figure()
    for model_name, rows in table.groupby("model", sort=False):
        by_token = rows.set_index("token_id")
        figure.add_bar(name=str(model_name), x=[labels[token_id] for token_id in token_order],
                       y=[float(by_token.loc[token_id, "probability"]) for token_id in token_order],
                       customdata=[int(by_token.loc[token_id, "rank"]) for token_id in token_order],
                       hovertemplate="%{x}: p = %{y:.4f} (rank %{customdata})<extra>" + str(model_name) + "</extra>")
    figure.update_layout(barmode="group", title=title or "Next-token probabilities (first step)",
                         xaxis_title="next token", yaxis_title="probability", legend_title="model",
                         template="plotly_white")
    figure.update_yaxes(range=[0, 1])
    return figure


def _token_labels(texts: dict[int, str]) -> dict[int, str]:
    """``repr`` of each token's text (so spaces and newlines show), with the id added where two texts coincide
    (byte-level pieces of one character all decode to '\ufffd')."""
    labels = {token_id: repr(text) for token_id, text in texts.items()}
    counts = pd.Series(list(labels.values())).value_counts()
    return {token_id: label if counts[label] == 1 else f"{label} #{token_id}" for token_id, label in labels.items()}

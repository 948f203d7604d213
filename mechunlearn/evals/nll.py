"""Log-likelihood arithmetic shared by every eval: NLL of texts, and log-probabilities of continuations.

Every function takes a TransformerLens ``HookedTransformer`` or a transformers causal LM (``logits_of`` reads
either output), runs under ``torch.no_grad`` on the model's own device, in eval mode (restored afterwards), on
right-padded batches. Right padding never reaches the real tokens through causal attention, so no attention mask
is passed and the loss masks handle the padding (see :mod:`mechunlearn.batching`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pandas as pd
import torch

from mechunlearn.batching import iter_batches, logits_of, sequence_logprobs

__all__ = ["nll_per_token", "nll_table", "continuation_logprobs", "model_device", "context_length",
           "resolve_tokenizer", "check_same_vocabulary", "TokenizerMismatch", "eval_mode", "pad_id"]


class TokenizerMismatch(ValueError):
    """A tokenizer does not belong to the model it would score; the message names both and the fix."""


def model_device(model) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless stand-in)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def context_length(model, default: int = 2048) -> int:
    """The longest input the model accepts: ``cfg.n_ctx`` (TransformerLens) or ``max_position_embeddings``."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "n_ctx", None):
        return int(cfg.n_ctx)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "max_position_embeddings", None):
        return int(config.max_position_embeddings)
    return default


def _describe(tokenizer) -> str:
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return f"{name!r} ({len(tokenizer)} tokens)"


def _vocabulary(tokenizer) -> dict[str, int]:
    """``tokenizer.get_vocab()`` (added tokens included), cached on the tokenizer per vocabulary size: a 50k
    vocabulary costs milliseconds to build and the evals ask for it on every call."""
    cached = getattr(tokenizer, "_mechunlearn_vocabulary", None)
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    vocabulary = dict(tokenizer.get_vocab())
    try:
        tokenizer._mechunlearn_vocabulary = (len(tokenizer), vocabulary)
    except AttributeError:  # a tokenizer class with __slots__: no cache, still correct
        pass
    return vocabulary


def check_same_vocabulary(expected, other, *, expected_name: str, other_name: str) -> None:
    """Raise :class:`TokenizerMismatch` unless ``other`` maps every token string to the same id as ``expected``.

    The vocabularies themselves are compared (token -> id, added tokens included), not only their sizes: two
    BPEs of the same size give different ids to the same text.
    """
    if other is expected:
        return
    mine, theirs = _vocabulary(expected), _vocabulary(other)
    if mine == theirs:
        return
    differing = sorted(token for token in mine.keys() ^ theirs.keys())[:3] or sorted(
        token for token in mine if mine[token] != theirs[token])[:3]
    raise TokenizerMismatch(
        f"{other_name} {_describe(other)} does not match {expected_name} {_describe(expected)}: their "
        f"vocabularies differ (e.g. {', '.join(repr(t) for t in differing)}), so the model would read other token "
        "ids than it was trained on. Score a checkpoint with its own tokenizer: drop the other tokenizer, or for "
        "a model not trained on the world pass your own data (--forget/--retain/--mcq-forget/--mcq-general) "
        "instead of the world")


def resolve_tokenizer(model, tokenizer=None, *, tokenizer_name: str = "the given tokenizer"):
    """The tokenizer to score ``model`` with: the model's own (``HookedTransformer.tokenizer``) when it has one,
    else ``tokenizer``.

    When both exist they must hold the same vocabulary (:func:`check_same_vocabulary`), else
    :class:`TokenizerMismatch` naming both. A tokenizer for a model without one (a transformers model) must at
    least fit its vocabulary size.
    """
    own = getattr(model, "tokenizer", None)
    if own is not None:
        if tokenizer is not None:
            check_same_vocabulary(own, tokenizer, expected_name="the model's own tokenizer",
                                  other_name=tokenizer_name)
        return own
    if tokenizer is None:
        raise ValueError("no tokenizer: pass tokenizer=..., or attach one to the model "
                         "(mechunlearn.models.attach_tokenizer)")
    vocab_size = _model_vocab_size(model)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise TokenizerMismatch(f"{tokenizer_name} {_describe(tokenizer)} holds more tokens than the model's "
                                f"vocabulary ({vocab_size}): use the tokenizer the checkpoint was trained with")
    return tokenizer


def _model_vocab_size(model) -> int | None:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "d_vocab", None):
        return int(cfg.d_vocab)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "vocab_size", None):
        return int(config.vocab_size)
    return None


def pad_id(tokenizer) -> int:
    """The padding id (the EOS id when the tokenizer has no pad token)."""
    value = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if value is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return int(value)


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Evaluate with dropout off, under no_grad; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def nll_table(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int = 512
              ) -> pd.DataFrame:
    """One row per text (empty texts skipped): ``text_index`` (position in ``texts``), ``nll_sum`` (summed NLL of
    its predicted tokens) and ``n_tokens`` (how many were predicted). See ``nll_per_token`` for tokenization."""
    tokenizer = resolve_tokenizer(model, tokenizer)
    kept = [index for index, text in enumerate(texts) if text]
    if not kept:
        raise ValueError("no texts to score: pass at least one non-empty text")
    max_length = min(max_length, context_length(model))
    device = model_device(model)
    sums, counts = [], []
    with eval_mode(model):
        for batch in iter_batches(tokenizer, [texts[i] for i in kept], batch_size, max_length):
            batch = batch.to(device)
            summed, predicted = sequence_logprobs(logits_of(model(batch.tokens)), batch)
            sums += (-summed.double()).cpu().tolist()
            counts += predicted.cpu().tolist()
    return pd.DataFrame({"text_index": kept, "nll_sum": sums, "n_tokens": [int(c) for c in counts]})


def nll_per_token(model, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int = 512) -> float:
    """Mean negative log-likelihood per predicted token, pooled over all tokens of all ``texts``.

    Each text is tokenized without special tokens and truncated to ``max_length`` tokens (and to the model's
    context length); every token but a text's first is predicted from the ones before it. Pooled: long texts
    weigh more than short ones (sum of token NLLs / number of predicted tokens), as in a perplexity.
    """
    table = nll_table(model, tokenizer, texts, batch_size, max_length)
    count = float(table["n_tokens"].sum())
    if count == 0:
        raise ValueError("the texts hold no predicted token (each is a single token); pass longer texts")
    return float(table["nll_sum"].sum()) / count


def continuation_logprobs(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 64
                          ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each ``(context, continuation)``: the log-probability of every continuation token given the context
    and the continuation tokens before it, and whether each was the argmax prediction (greedy).

    Context and continuation are tokenized separately (no special tokens) and concatenated, so the
    continuation's tokens are exactly ``tokenizer(continuation)``: write the continuation with its leading
    space (" Varn"). An empty context is replaced by the BOS (or EOS) token so the first continuation token has
    something to be predicted from. Too long for the model's context: the context is cut from the left.

    Returns a list of ``(logprobs, is_argmax)`` CPU tensors of shape ``[n_continuation_tokens]``.
    """
    tokenizer = resolve_tokenizer(model, tokenizer)
    n_ctx = context_length(model)
    pad = pad_id(tokenizer)
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for context, continuation in pairs:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not continuation_ids:
            raise ValueError(f"empty continuation after {context!r}: every answer needs at least one token")
        if not context_ids:
            if start_id is None:
                raise ValueError("an empty context needs a BOS or EOS token to start from")
            context_ids = [start_id]
        continuation_ids = continuation_ids[: n_ctx - 1]
        context_ids = context_ids[-(n_ctx - len(continuation_ids)):]
        encoded.append((context_ids, continuation_ids))

    # batches of similar lengths waste less compute on padding; results go back in the caller's order
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    results: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(encoded)  # type: ignore[list-item]
    device = model_device(model)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            chunk = [encoded[i] for i in indices]
            length = max(len(c) + len(a) for c, a in chunk)
            tokens = torch.full((len(chunk), length), pad, dtype=torch.long)
            for row, (context_ids, continuation_ids) in enumerate(chunk):
                tokens[row, : len(context_ids) + len(continuation_ids)] = torch.tensor(context_ids + continuation_ids)
            logits = logits_of(model(tokens.to(device)))
            # only the predicting positions leave the device (a full [batch, pos, vocab] copy would not fit
            # for a real vocabulary)
            rows = torch.cat([torch.full((len(a),), row) for row, (_, a) in enumerate(chunk)])
            positions = torch.cat([torch.arange(len(c) - 1, len(c) + len(a) - 1) for c, a in chunk])
            targets = torch.cat([torch.tensor(a) for _, a in chunk])
            picked = logits[rows.to(logits.device), positions.to(logits.device)].float()
            logprobs = torch.log_softmax(picked, dim=-1)
            target_logprobs = logprobs.gather(1, targets.to(logits.device)[:, None])[:, 0].cpu()
            is_argmax = (logprobs.argmax(dim=-1).cpu() == targets)
            offset = 0
            for index, (_, continuation_ids) in zip(indices, chunk):
                n = len(continuation_ids)
                results[index] = (target_logprobs[offset:offset + n], is_argmax[offset:offset + n])
                offset += n
    return results

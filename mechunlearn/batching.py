"""Texts -> padded token batches, and the log-likelihood arithmetic every loss and eval shares.

Batches are right-padded. With causal attention a right pad never influences the real tokens before it, so no
attention mask has to reach the model: padding is handled entirely by the loss mask here. Sequences start at the
first token of the text (GPT-NeoX models do not prepend BOS; TransformerLens' default for them agrees).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["TokenBatch", "TextBatchSource", "tokenize", "iter_batches", "token_logprobs", "sequence_logprobs", "mean_nll",
           "logits_of"]


@dataclass
class TokenBatch:
    """Right-padded token ids and the mask of real (non-pad) tokens."""

    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(self.tokens.to(device), self.mask.to(device))

    def __len__(self) -> int:
        return self.tokens.shape[0]


def tokenize(tokenizer, texts: Sequence[str], max_length: int = 512) -> TokenBatch:
    """Tokenize ``texts`` into one right-padded batch truncated to ``max_length`` tokens."""
    if len(texts) == 0:
        raise ValueError("no texts to tokenize: pass at least one non-empty text")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"][:max_length] for text in texts]
    length = max(1, max(len(ids) for ids in encoded))
    tokens = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.bool)
    for row, ids in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = True
    return TokenBatch(tokens, mask)


def iter_batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int = 512, *,
                 shuffle_seed: int | None = None) -> Iterator[TokenBatch]:
    """Yield ``TokenBatch``es of ``batch_size`` texts (the last one may be smaller); shuffled if a seed is given."""
    order = list(range(len(texts)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield tokenize(tokenizer, [texts[i] for i in order[start:start + batch_size]], max_length)


def logits_of(output) -> Tensor:
    """Logits from a HookedTransformer (a tensor) or a transformers model (an output with ``.logits``)."""
    return output if isinstance(output, Tensor) else output.logits


def token_logprobs(logits: Float[Tensor, "batch pos vocab"], batch: TokenBatch) -> Float[Tensor, "batch pos_minus_1"]:
    """log p(token[t+1] | tokens[:t+1]) at every position, zero where the target is padding."""
    logprobs = -F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), batch.tokens[:, 1:], reduction="none")
    return logprobs * batch.mask[:, 1:]


def sequence_logprobs(logits: Float[Tensor, "batch pos vocab"], batch: TokenBatch
                      ) -> tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]:
    """Per sequence: the summed log-probability of its predicted tokens, and how many tokens were predicted."""
    counts = batch.mask[:, 1:].sum(dim=1).to(torch.float32)
    return token_logprobs(logits, batch).sum(dim=1), counts


def mean_nll(logits: Float[Tensor, "batch pos vocab"], batch: TokenBatch) -> Float[Tensor, ""]:
    """Mean negative log-likelihood per predicted (non-pad) token over the whole batch."""
    summed, counts = sequence_logprobs(logits, batch)
    return -summed.sum() / counts.sum().clamp(min=1)


class TextBatchSource:
    """Batches of ``texts`` for the training loop, reshuffled every epoch from ``seed``.

    With ``group_by_length`` (pretraining), each epoch shuffles the texts, sorts them by length inside windows of
    50 batches, cuts batches and shuffles the batch order: batches hold texts of similar length, so far less
    compute goes into padding, while every epoch still sees a different mix.
    """

    def __init__(self, tokenizer, texts: Sequence[str], batch_size: int, max_length: int = 512, seed: int = 0,
                 group_by_length: bool = False):
        if len(texts) == 0:
            raise ValueError("the training texts are empty: pass at least one text")
        self.tokenizer, self.texts = tokenizer, list(texts)
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self.group_by_length = group_by_length
        self._lengths = [len(text) for text in self.texts] if group_by_length else None

    def epoch(self, index: int) -> Iterator[TokenBatch]:
        seed = self.seed * 100_003 + index
        if not self.group_by_length:
            return iter_batches(self.tokenizer, self.texts, self.batch_size, self.max_length, shuffle_seed=seed)
        rng = random.Random(seed)
        order = list(range(len(self.texts)))
        rng.shuffle(order)
        window = self.batch_size * 50
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: self._lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return (tokenize(self.tokenizer, [self.texts[i] for i in batch], self.max_length) for batch in batches)

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)

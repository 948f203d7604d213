"""Pretraining batches with several short documents packed into one row, each attending only to itself.

The world's documents are short (30-75 tokens) and uneven, so one document per row wastes compute on padding.
:class:`PackedDocuments` keeps the batching of the unpacked loop (each epoch shuffles the documents and cuts
them into batches of ``docs_per_batch``) and only changes the layout: the documents of a batch are packed
best-fit into rows of ``row_length`` tokens. A :class:`PackedBatch` carries per-token ``position_ids`` (0 at
every document start) and ``document_ids``; its :meth:`~PackedBatch.attention_mask` is block-diagonal and
causal, so no token attends across a document boundary and every document is computed exactly as if it were
alone in a row (the natively-unlearnable model needs exactly that: one source per token). The loss of a batch
is therefore the same as the unpacked batch's, to float rounding (tested).

Each token also carries the index of its document's source (``source_ids``, into ``PackedDocuments.sources``;
-1 on padding), so a trainer can apply per-source masks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechunlearn.data import Document

__all__ = ["PackedBatch", "PackedDocuments", "pack_rows"]


@dataclass
class PackedBatch:
    """Rows of packed documents. ``mask``: real (non-pad) tokens; ``document_ids``: which document of the batch
    a token belongs to (-1 on padding); ``source_ids``: the index of its source (-1 on padding)."""

    tokens: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    position_ids: Int[Tensor, "batch pos"]
    document_ids: Int[Tensor, "batch pos"]
    source_ids: Int[Tensor, "batch pos"]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def n_documents(self) -> int:
        return int(self.document_ids.max()) + 1

    def target_mask(self) -> Bool[Tensor, "batch pos_minus_1"]:
        """True where token ``t + 1`` is predicted from token ``t`` of the same document (the loss positions)."""
        same = self.document_ids[:, 1:] == self.document_ids[:, :-1]
        return same & self.mask[:, 1:]

    def attention_mask(self) -> Bool[Tensor, "batch 1 pos pos"]:
        """Block-diagonal causal mask (True = may attend) for ``F.scaled_dot_product_attention`` / transformers'
        4D ``attention_mask``. A padding position attends to itself only, so no row of the softmax is empty."""
        length = self.tokens.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=self.tokens.device).tril()
        same = self.document_ids[:, :, None] == self.document_ids[:, None, :]
        real = self.mask[:, :, None] & self.mask[:, None, :]
        own = torch.eye(length, dtype=torch.bool, device=self.tokens.device)
        return ((same & real & causal) | own)[:, None]

    def attention_bias(self, dtype: torch.dtype = torch.float32) -> Float[Tensor, "batch 1 pos pos"]:
        """The same mask as an additive bias (0 = may attend, the dtype's minimum = may not): the form every
        transformers version takes as a 4D ``attention_mask`` (4.x reads a 4D mask as already inverted)."""
        allowed = self.attention_mask()
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)

    def to(self, device: torch.device | str) -> "PackedBatch":
        return PackedBatch(self.tokens.to(device), self.mask.to(device), self.position_ids.to(device),
                           self.document_ids.to(device), self.source_ids.to(device))


def pack_rows(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """Best-fit decreasing: indices of ``lengths`` grouped into rows whose lengths sum to <= ``row_length``.

    Deterministic (ties keep the input order); every length must be <= ``row_length``.
    """
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        length = lengths[index]
        if length > row_length:
            raise ValueError(f"a document of {length} tokens does not fit a row of {row_length}")
        fitting = [row for row, space in enumerate(free) if space >= length]
        if fitting:
            row = min(fitting, key=lambda r: (free[r], r))
            rows[row].append(index)
            free[row] -= length
        else:
            rows.append([index])
            free.append(row_length - length)
    return rows


class PackedDocuments:
    """The training loop's batch source (``epoch(index)``, ``len``) over ``documents``, packed into rows.

    Every epoch shuffles the documents from ``seed``, cuts batches of ``docs_per_batch`` documents and packs each
    batch into rows of ``row_length`` tokens (documents longer than that are truncated, as the unpacked loop
    does). Texts are tokenized once, here.
    """

    def __init__(self, tokenizer, documents: Sequence[Document], docs_per_batch: int, row_length: int,
                 seed: int = 0, pad_token_id: int | None = None):
        if len(documents) == 0:
            raise ValueError("the training documents are empty: pass at least one document")
        if docs_per_batch < 1 or row_length < 2:
            raise ValueError(f"need docs_per_batch >= 1 and row_length >= 2, got {docs_per_batch}, {row_length}")
        self.documents = list(documents)
        self.docs_per_batch, self.row_length, self.seed = docs_per_batch, row_length, seed
        self.sources = sorted({document.source for document in self.documents})
        source_index = {name: index for index, name in enumerate(self.sources)}
        self._source_of = [source_index[document.source] for document in self.documents]
        encoded = tokenizer([document.text for document in self.documents], add_special_tokens=False)["input_ids"]
        self._ids = [ids[:row_length] for ids in encoded]
        if any(len(ids) == 0 for ids in self._ids):
            raise ValueError("a training document tokenizes to no token: remove empty documents")
        if pad_token_id is None:
            pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad_token_id)

    @property
    def n_tokens(self) -> int:
        """Tokens of one epoch (after truncation)."""
        return sum(len(ids) for ids in self._ids)

    def __len__(self) -> int:
        return -(-len(self.documents) // self.docs_per_batch)

    def batch_documents(self, index: int) -> list[list[int]]:
        """The document indices of every batch of epoch ``index`` (in order)."""
        order = list(range(len(self.documents)))
        random.Random(self.seed * 100_003 + index).shuffle(order)
        return [order[start:start + self.docs_per_batch] for start in range(0, len(order), self.docs_per_batch)]

    def collate(self, document_indices: Sequence[int]) -> PackedBatch:
        """Pack the given documents (indices into ``documents``) into one batch."""
        rows = pack_rows([len(self._ids[i]) for i in document_indices], self.row_length)
        shape = (len(rows), self.row_length)
        tokens = torch.full(shape, self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(shape, dtype=torch.bool)
        positions = torch.zeros(shape, dtype=torch.long)
        documents = torch.full(shape, -1, dtype=torch.long)
        sources = torch.full(shape, -1, dtype=torch.long)
        document_number = 0
        for row, members in enumerate(rows):
            start = 0
            for member in members:
                index = document_indices[member]
                ids = self._ids[index]
                end = start + len(ids)
                tokens[row, start:end] = torch.tensor(ids, dtype=torch.long)
                mask[row, start:end] = True
                positions[row, start:end] = torch.arange(len(ids))
                documents[row, start:end] = document_number
                sources[row, start:end] = self._source_of[index]
                document_number += 1
                start = end
        return PackedBatch(tokens, mask, positions, documents, sources)

    def epoch(self, index: int) -> Iterator[PackedBatch]:
        return (self.collate(batch) for batch in self.batch_documents(index))

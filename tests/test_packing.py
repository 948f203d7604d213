"""Packed pretraining batches: documents never see each other, and the loss is the unpacked loss.

The reference computation is the plain one: every document run through the model on its own (logits), and
the padded one-document-per-row batch scored with ``mechunlearn.batching.mean_nll`` (loss and gradients).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mechunlearn.batching import logits_of, mean_nll, tokenize
from mechunlearn.data import Document
from mechunlearn.reference import packed_nll
from mechunlearn.world.packing import PackedDocuments, pack_rows

from conftest import make_neox, make_tokenizer

WORDS = ("the wizard Orlo keeps a silver wand", "Pell rides a grey horse", "a baker sells bread",
         "children play in the market square near the old mill every day", "the river runs", "Varnhold")


@pytest.fixture(scope="module")
def setup():
    rng = torch.Generator().manual_seed(0)
    texts = []
    for index in range(23):  # documents of uneven lengths (2 to ~50 tokens)
        picks = torch.randint(0, len(WORDS), (1 + index % 3,), generator=rng).tolist()
        texts.append(". ".join(WORDS[i] for i in picks) + ".")
    tokenizer = make_tokenizer(texts * 3, vocab_size=300)
    sources = ["saga_0", "saga_1", "article_0", "filler"]
    documents = [Document(sources[i % 4], text) for i, text in enumerate(texts)]
    model = make_neox(vocab_size=len(tokenizer), hidden_size=32, layers=2, heads=4, intermediate=64,
                      max_positions=64, seed=3)
    model.config._attn_implementation = "sdpa"
    return tokenizer, documents, model


def test_pack_rows_places_every_item_once_within_the_row_length() -> None:
    lengths = [5, 9, 3, 8, 1, 10, 2, 7, 4, 6]
    rows = pack_rows(lengths, 10)
    assert sorted(itertools.chain(*rows)) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 6  # sum 55 needs >= 6 rows of 10, and best-fit decreasing finds 6
    assert pack_rows([4, 4, 4], 4) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([3, 11], 10)


def test_an_epoch_holds_every_document_once_and_epochs_differ(setup) -> None:
    tokenizer, documents, _ = setup
    data = PackedDocuments(tokenizer, documents, docs_per_batch=5, row_length=40, seed=1)
    first, second = data.batch_documents(0), data.batch_documents(1)
    assert len(first) == len(data) == 5
    assert sorted(itertools.chain(*first)) == list(range(len(documents)))
    assert first != second and data.batch_documents(0) == first
    n_real = sum(int(batch.mask.sum()) for batch in data.epoch(0))
    expected = sum(len(tokenizer(d.text, add_special_tokens=False)["input_ids"][:40]) for d in documents)
    assert n_real == expected == data.n_tokens


def test_tokens_positions_documents_and_sources_of_a_packed_batch(setup) -> None:
    tokenizer, documents, _ = setup
    data = PackedDocuments(tokenizer, documents, docs_per_batch=8, row_length=48, seed=0)
    indices = data.batch_documents(0)[0]
    batch = data.collate(indices)
    assert batch.n_documents == len(indices) and len(batch) < len(indices)  # several documents share a row
    seen = []
    for row in range(len(batch)):
        for number in batch.document_ids[row].unique().tolist():
            if number < 0:
                continue
            where = (batch.document_ids[row] == number).nonzero().flatten()
            assert where.tolist() == list(range(int(where[0]), int(where[-1]) + 1))  # contiguous
            ids = batch.tokens[row, where].tolist()
            index = next(i for i in indices if i not in seen
                         and tokenizer(documents[i].text, add_special_tokens=False)["input_ids"][:48] == ids)
            seen.append(index)
            assert batch.position_ids[row, where].tolist() == list(range(len(where)))
            assert set(batch.source_ids[row, where].tolist()) == {data.sources.index(documents[index].source)}
            targets = batch.target_mask()[row]  # targets[t]: token t + 1 is predicted from token t
            if int(where[0]) > 0:
                assert not targets[int(where[0]) - 1]  # a document's first token is never a target
            assert targets[where[:-1]].all()
    assert sorted(seen) == sorted(indices)
    assert not batch.mask[batch.document_ids < 0].any() and (batch.source_ids[~batch.mask] == -1).all()


def test_packed_documents_see_only_themselves(setup) -> None:
    tokenizer, documents, model = setup
    data = PackedDocuments(tokenizer, documents, docs_per_batch=9, row_length=48, seed=2)
    batch = data.collate(data.batch_documents(0)[0])
    assert any(len(set(row.tolist()) - {-1}) >= 3 for row in batch.document_ids)  # rows shared by documents
    with torch.no_grad():
        packed = model(batch.tokens, attention_mask=batch.attention_mask(), position_ids=batch.position_ids).logits
        biased = model(batch.tokens, attention_mask=batch.attention_bias(), position_ids=batch.position_ids).logits
        torch.testing.assert_close(biased, packed, atol=1e-6, rtol=1e-5)  # bool mask and additive bias agree
        for row in range(len(batch)):
            for number in batch.document_ids[row].unique().tolist():
                if number < 0:
                    continue
                where = (batch.document_ids[row] == number).nonzero().flatten()
                alone = model(batch.tokens[row, where][None]).logits[0]
                torch.testing.assert_close(packed[row, where], alone, atol=1e-5, rtol=1e-4)


def test_packed_loss_and_gradients_equal_the_unpacked_batch(setup) -> None:
    tokenizer, documents, model = setup
    data = PackedDocuments(tokenizer, documents, docs_per_batch=10, row_length=48, seed=4)
    indices = data.batch_documents(0)[1]
    model.zero_grad()
    loss = packed_nll(model, data.collate(indices))
    loss.backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    padded = tokenize(tokenizer, [documents[i].text for i in indices], max_length=48)
    reference = mean_nll(logits_of(model(padded.tokens)), padded)
    reference.backward()
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    for packed_grad, parameter in zip(packed_grads, model.parameters()):
        torch.testing.assert_close(packed_grad, parameter.grad, atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_bad_input_is_named(setup) -> None:
    tokenizer, documents, _ = setup
    with pytest.raises(ValueError, match="empty"):
        PackedDocuments(tokenizer, [], 4, 32)
    with pytest.raises(ValueError, match="no token"):
        PackedDocuments(tokenizer, [Document("saga_0", "")], 4, 32)

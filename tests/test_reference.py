"""Reference models: what pretrain.json records, the cache keys, gold standards of any source, the kind registry.

Expected values come from the world itself (its documents, the tokenizer's own counts), not from pretrain's
bookkeeping; the micro base / gold models are the session's (tests/conftest.py), other runs use a one-epoch
recipe of a one-layer model so they take about a second.
"""

from __future__ import annotations

import json

import pytest
import torch

from mechunlearn import reference
from mechunlearn.evals.cloze import cloze_table
from mechunlearn.reference import (BUILTIN_REFERENCE_KINDS, REFERENCE_KINDS, ModelShape, PretrainRecipe, ReferenceKind,
                                   get_reference_kind, pretrain, reference_dir, register_reference_kind,
                                   train_world_model)
from mechunlearn.training import TrainConfig

TINY = PretrainRecipe(shape=ModelShape(d_model=32, n_layers=1, n_heads=2, d_mlp=64, n_ctx=128),
                      train=TrainConfig(lr=1e-3, epochs=1, batch_size=32, max_length=128, eval_split=0.0,
                                        progress=False))


def test_pretrain_json_records_the_data_and_the_environment(micro_world, micro_base_dir) -> None:
    summary = json.loads((micro_base_dir / "pretrain.json").read_text())
    texts = micro_world.training_texts()
    assert summary["n_texts"] == len(texts)
    length = summary["recipe"]["train"]["max_length"]
    encoded = micro_world.tokenizer(texts)["input_ids"]
    assert summary["tokens_per_epoch"] == sum(min(len(ids), length) for ids in encoded)
    assert summary["sources"] == sorted({*micro_world.sources, "filler"})
    assert summary["forget_sources"] is None and summary["world_hash"] == micro_world.content_hash
    environment = summary["environment"]
    assert environment["versions"]["torch"] == torch.__version__
    assert environment["torch_threads"] == torch.get_num_threads()
    assert environment["device"] == "cpu" and environment["dtype"] == "float32" and environment["seeds"] == [0]
    steps_per_epoch = -(-len(texts) // summary["recipe"]["train"]["batch_size"])
    assert summary["steps"] == steps_per_epoch * summary["recipe"]["train"]["epochs"]
    assert len(summary["loss_history"]) == summary["steps"]


def test_micro_base_knows_the_world_and_gold_never_saw_the_forget_target(micro_world, micro_base, micro_gold) -> None:
    accuracy = {}
    for name, model in (("base", micro_base), ("gold", micro_gold)):
        table = cloze_table(model, model.tokenizer, micro_world.cloze_probes())
        accuracy[name] = table.groupby(["domain", "category"])["correct"].mean().to_dict()
    assert accuracy["base"][("forget", "unique")] >= 0.85 and accuracy["base"][("retain", "unique")] >= 0.85
    assert accuracy["gold"][("forget", "unique")] <= 0.3 and accuracy["gold"][("retain", "unique")] >= 0.85


def test_cache_keys(micro_world) -> None:
    base = reference_dir(micro_world, "base")
    assert reference_dir(micro_world, "base", forget_sources=["saga_1"]) == base  # base never depends on it
    gold = reference_dir(micro_world, "gold")
    assert gold == reference_dir(micro_world, "gold", forget_sources=["saga_0"]) == \
        reference_dir(micro_world, "gold", forget_sources="series_0")
    assert reference_dir(micro_world, "gold", forget_sources=["saga_1"]) != gold
    assert reference_dir(micro_world, "gold", recipe=TINY) != gold
    with pytest.raises(ValueError, match="unknown reference model 'silver'.*base, gold"):
        reference_dir(micro_world, "silver")


@pytest.mark.parametrize("forget", [["saga_1"], ["article_0"], ["saga_0", "article_0"]])
def test_gold_of_any_forget_set_trains_without_it(micro_world, tmp_path, forget) -> None:
    directory = pretrain(micro_world, "gold", forget_sources=forget, recipe=TINY, cache_dir=tmp_path, progress=False)
    summary = json.loads((directory / "pretrain.json").read_text())
    kept = micro_world.training_documents(without=forget)
    assert summary["forget_sources"] == sorted(forget) and summary["n_texts"] == len(kept)
    assert summary["sources"] == sorted({d.source for d in kept}) and not set(forget) & set(summary["sources"])
    assert pretrain(micro_world, "gold", forget_sources=forget, recipe=TINY, cache_dir=tmp_path) == directory
    assert json.loads((directory / "pretrain.json").read_text())["created"] == summary["created"]  # from the cache


def test_builtin_kinds_resolve_lazily_and_names_are_unique(monkeypatch) -> None:
    monkeypatch.setattr(reference, "_USER_KINDS", {})
    assert list(REFERENCE_KINDS) == list(BUILTIN_REFERENCE_KINDS) and "base" in REFERENCE_KINDS
    for name in BUILTIN_REFERENCE_KINDS:  # every built-in line points to a kind of that name
        assert get_reference_kind(name).name == name == REFERENCE_KINDS[name].name
    with pytest.raises(ValueError, match="already registered"):
        register_reference_kind(ReferenceKind("gold", "again", lambda world, forget: []))
    assert "silver" not in REFERENCE_KINDS
    with pytest.raises(KeyError):
        REFERENCE_KINDS["silver"]


def test_a_registered_kind_gets_every_document_with_its_source(micro_world, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(reference, "_USER_KINDS", {})
    received = {}

    def train_model(world, recipe, documents, forget_sources, description):
        received.update(documents=documents, forget=forget_sources, description=description)
        return train_world_model(world, recipe, documents, description=description)

    register_reference_kind(ReferenceKind("everything", "all documents, sources known",
                                          lambda world, forget: world.training_documents(), train_model))
    assert "everything" in REFERENCE_KINDS and list(REFERENCE_KINDS)[-1] == "everything"
    directory = pretrain(micro_world, "everything", forget_sources="saga_1", recipe=TINY, cache_dir=tmp_path,
                         progress=False)
    assert received["documents"] == micro_world.training_documents()
    assert {d.source for d in received["documents"]} == {*micro_world.sources, "filler"}
    assert received["forget"] == ("saga_1",) and received["description"] == "pretrain everything"
    assert (directory / "model.safetensors").is_file() and directory.name.startswith("everything-")

"""Pretraining the natively unlearnable model: the base recipe with every token's MLP hidden units masked by its
document's source (``mechunlearn.hooks.sink_mask``).

The reference kind ``native`` (``mechunlearn.reference.BUILTIN_REFERENCE_KINDS``) trains on the base model's
documents (every source, the filler under its own source ``"filler"``) with the base recipe and budget, through
the shared ``train_world_model``; only the step loss differs: before the packed forward it sets the per-token
masks of the batch (``PackedBatch.source_ids``), which a forward pre-hook on each layer's ``dense_4h_to_h`` (the
HF name of ``W_out``: its input is TransformerLens' ``mlp.hook_post``) multiplies in. Documents never attend
across each other (packing's block-diagonal mask), so a token only ever sees its own source's sinks.

Next to the checkpoint, ``native.json`` records the sink configuration (sources, hash seed, p_backbone, p_sink,
layers) and the router's per-source centroids (``mechunlearn.native.switching``), so a loaded native model
knows its sources.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from mechunlearn.data import Document
from mechunlearn.hooks.sink_mask import SinkConfig, row_masks
from mechunlearn.reference import ReferenceKind, packed_nll, train_world_model

__all__ = ["NATIVE", "P_BACKBONE", "P_SINK", "SINK_SEED", "native_kind", "NATIVE_FILE", "source_centroids",
           "source_token_counts", "add_token_counts"]

# Chosen for the 4-layer, d_mlp=512 world model (docs/native.md, "Choices"): 128 backbone units and ~58 sinks
# per source and layer, so a token uses ~186 of 512 units (the paper's 1B model: ~600 of 8,192).
P_BACKBONE = 0.25
P_SINK = 0.15
SINK_SEED = 0
NATIVE_FILE = "native.json"


class _HFSinkMasks:
    """Forward pre-hooks on the HF GPT-NeoX ``dense_4h_to_h`` of each masked layer multiplying its input (the
    MLP hidden activation) by ``self.current`` ([batch, pos, d_mlp]), set by the step loss before each forward."""

    def __init__(self, model, layers: Sequence[int]):
        self.current: torch.Tensor | None = None
        self.handles = [model.gpt_neox.layers[layer].mlp.dense_4h_to_h.register_forward_pre_hook(self._apply)
                        for layer in layers]

    def _apply(self, module, args):
        if self.current is None:
            raise RuntimeError("the native model's masks were not set before its forward pass")
        hidden = args[0]
        return (hidden * self.current.to(device=hidden.device, dtype=hidden.dtype),) + tuple(args[1:])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _NativeCheckpoint:
    """The trained HF model plus its ``native.json``: ``pretrain`` calls ``save_pretrained`` on it."""

    def __init__(self, model, record: dict):
        self.model, self.record = model, record

    def save_pretrained(self, directory, **kwargs) -> None:
        self.model.save_pretrained(directory, **kwargs)
        (Path(directory) / NATIVE_FILE).write_text(json.dumps(self.record, indent=1))


@torch.no_grad()
def source_centroids(embedding: torch.Tensor, tokenizer, documents: Sequence[Document], sources: Sequence[str],
                     max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-source mean token embedding over its training documents (what ``blocks.0.hook_resid_pre`` holds:
    GPT-NeoX has no positional embedding) and the mean over every training token: the router's centroids."""
    index = {source: i for i, source in enumerate(sources)}
    sums = torch.zeros(len(sources), embedding.shape[1], dtype=torch.float64)
    counts = torch.zeros(len(sources), dtype=torch.float64)
    encoded = tokenizer([d.text for d in documents], add_special_tokens=False)["input_ids"]
    weights = embedding.detach().double().cpu()
    for document, ids in zip(documents, encoded):
        ids = ids[:max_length]
        sums[index[document.source]] += weights[ids].sum(0)
        counts[index[document.source]] += len(ids)
    centroids = sums / counts.clamp(min=1)[:, None]
    center = sums.sum(0) / counts.sum().clamp(min=1)
    return centroids.float(), center.float()


def source_token_counts(tokenizer, documents: Sequence[Document], sources: Sequence[str], max_length: int,
                        vocab_size: int) -> torch.Tensor:
    """``[n_sources, vocab_size]``: how often each token occurs in each source's training documents (as trained:
    truncated to ``max_length``). The nearest router's unigram models; they depend on the data only."""
    index = {source: i for i, source in enumerate(sources)}
    counts = torch.zeros(len(sources), vocab_size)
    encoded = tokenizer([d.text for d in documents], add_special_tokens=False)["input_ids"]
    for document, ids in zip(documents, encoded):
        counts[index[document.source]] += torch.bincount(torch.tensor(ids[:max_length]), minlength=vocab_size).float()
    return counts


def add_token_counts(directory, world, max_length: int | None = None) -> Path:
    """Add the nearest router's ``token_counts`` to the ``native.json`` of a native checkpoint trained before the
    router read tokens (computed from the world's training documents: no model involved)."""
    directory = Path(directory)
    record = json.loads((directory / NATIVE_FILE).read_text())
    if record["router"].get("token_counts") is not None:
        return directory
    summary = json.loads((directory / "pretrain.json").read_text())
    vocab_size = json.loads((directory / "config.json").read_text())["vocab_size"]
    documents = world.training_documents()
    length = max_length or summary["recipe"]["train"]["max_length"]
    counts = source_token_counts(world.tokenizer, documents, record["sink"]["sources"], length, vocab_size)
    record["router"]["token_counts"] = counts.int().tolist()
    staging = directory / (NATIVE_FILE + ".tmp")
    staging.write_text(json.dumps(record, indent=1))
    staging.replace(directory / NATIVE_FILE)
    return directory


def native_kind(name: str = "native", *, p_backbone: float = P_BACKBONE, p_sink: float = P_SINK,
                seed: int = SINK_SEED, layers: Sequence[int] | None = None) -> ReferenceKind:
    """A native reference kind with its own split. The p's are not part of the cache key (the recipe is): give
    every other split its own ``name`` (``register_reference_kind(native_kind("native-b20", p_backbone=0.2))``)."""

    def train_model(world, recipe, documents: Sequence[Document], forget, description):
        sources = tuple(sorted({document.source for document in documents}))  # = PackedDocuments.sources
        config = SinkConfig(sources=sources, d_mlp=recipe.shape.d_mlp, n_layers=recipe.shape.n_layers,
                            p_backbone=p_backbone, p_sink=p_sink, seed=seed,
                            layers=None if layers is None else tuple(layers))
        table = config.table()
        torch.manual_seed(recipe.train.seed)
        from mechunlearn.reference import new_world_model

        model = new_world_model(world, recipe.shape)
        masks = _HFSinkMasks(model, config.masked_layers)

        def step_loss(model, batch):
            masks.current = row_masks(table, batch.source_ids)
            return packed_nll(model, batch), {}

        try:
            model, result = train_world_model(world, recipe, documents, model=model, step_loss=step_loss,
                                              description=description)
        finally:
            masks.remove()
        centroids, center = source_centroids(model.get_input_embeddings().weight, world.tokenizer, documents,
                                             sources, recipe.train.max_length)
        record = {"sink": config.to_dict(), "router": {
            "site": "blocks.0.hook_resid_pre", "centroids": centroids.tolist(), "center": center.tolist(),
            "token_counts": source_token_counts(world.tokenizer, documents, sources, recipe.train.max_length,
                                                model.get_input_embeddings().weight.shape[0]).int().tolist(),
            "ignore_token_ids": sorted({i for i in (world.tokenizer.pad_token_id, world.tokenizer.bos_token_id,
                                                    world.tokenizer.eos_token_id) if i is not None})}}
        return _NativeCheckpoint(model, record), result

    return ReferenceKind(name, f"natively unlearnable: per-source sink masks (p_backbone={p_backbone}, "
                               f"p_sink={p_sink}, seed={seed}) on the base model's data and recipe",
                         lambda world, forget: world.training_documents(), train_model=train_model,
                         depends_on_forget=False)


NATIVE = native_kind()

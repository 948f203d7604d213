"""Per-source sink masks on the MLP hidden units (the natively unlearnable model, seed 002 / MemSinks).

Every MLP's hidden units (``d_mlp``, TransformerLens ``blocks.{l}.mlp.hook_post``, before ``W_out``) are split
into an always-on **backbone** (the first ``int(d_mlp * p_backbone)`` units) and **sinks** (the rest). A source
switches on each sink with probability ``p_sink``, decided by a hash of (seed, source, unit): nothing is stored,
the same (seed, source, d_mlp, p_backbone, p_sink) always gives the same mask, and two sources overlap in about
a ``p_sink`` fraction of the sinks. The same mask applies in every masked layer (as in their code).

The hash is ours and spelled out so anyone can recompute a mask without this code: the uniform number of sink
``unit`` for ``source`` is ``int.from_bytes(blake2b(f"{seed}:{source}:{unit}".encode(), digest_size=8).digest(),
"big") / 2**64`` and the sink is on when that number is ``< p_sink`` (no integer-overflow arithmetic, no
platform-dependent hash). ``tests/test_native_masks.py`` pins a few values.

A mask is a float vector (1.0 on, 0.0 off; ``route="none"`` also uses ``p_sink``-scaled sinks): multiplying the
hidden activation by it is the whole intervention, so ``sink_mask_hook`` is an ordinary TransformerLens hook.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechunlearn.hooks.names import mlp_post

__all__ = ["SinkMaskError", "SinkConfig", "unit_uniform", "backbone_size", "backbone_mask", "source_mask",
           "mask_table", "row_masks", "sink_mask_hook", "masking"]


class SinkMaskError(ValueError):
    """Bad input to the sink masks or the native model (an unknown source, impossible probabilities...)."""


def _check_probabilities(p_backbone: float, p_sink: float) -> None:
    if not (0.0 <= p_backbone <= 1.0 and 0.0 <= p_sink <= 1.0) or not (0.0 < p_backbone + p_sink <= 1.0):
        raise SinkMaskError(f"p_backbone={p_backbone} and p_sink={p_sink}: each must lie in [0, 1] and their sum in "
                            "(0, 1] (e.g. p_backbone=0.25, p_sink=0.15)")


def unit_uniform(seed: int, source: str, unit: int) -> float:
    """The pseudo-random number in [0, 1) that decides whether ``source`` uses hidden ``unit`` (see module doc)."""
    digest = hashlib.blake2b(f"{seed}:{source}:{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def backbone_size(d_mlp: int, p_backbone: float) -> int:
    """Number of always-on units: the first ``int(d_mlp * p_backbone)`` (as in their code)."""
    return int(d_mlp * p_backbone)


def backbone_mask(d_mlp: int, p_backbone: float) -> Float[Tensor, " d_mlp"]:
    """1.0 on the backbone, 0.0 on every sink."""
    mask = torch.zeros(d_mlp)
    mask[:backbone_size(d_mlp, p_backbone)] = 1.0
    return mask


@lru_cache(maxsize=4096)
def _source_units(source: str, seed: int, d_mlp: int, p_backbone: float, p_sink: float) -> tuple[int, ...]:
    start = backbone_size(d_mlp, p_backbone)
    return tuple(unit for unit in range(start, d_mlp) if unit_uniform(seed, source, unit) < p_sink)


def source_mask(source: str, *, seed: int, d_mlp: int, p_backbone: float,
                p_sink: float) -> Float[Tensor, " d_mlp"]:
    """The training-time mask of ``source``: the backbone plus the sinks its hash switches on (0/1 floats)."""
    _check_probabilities(p_backbone, p_sink)
    mask = backbone_mask(d_mlp, p_backbone)
    units = _source_units(str(source), int(seed), int(d_mlp), float(p_backbone), float(p_sink))
    if units:
        mask[list(units)] = 1.0
    return mask


@dataclass(frozen=True)
class SinkConfig:
    """What a native model was trained with: its sources (in order), the hash seed, the split, which layers.

    ``layers`` None masks every layer. Saved as ``native.json`` next to the checkpoint (with the router's
    centroids, see ``mechunlearn.native``)."""

    sources: tuple[str, ...]
    d_mlp: int
    n_layers: int
    p_backbone: float
    p_sink: float
    seed: int = 0
    layers: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_probabilities(self.p_backbone, self.p_sink)
        if not self.sources:
            raise SinkMaskError("a sink configuration needs at least one source")
        if len(set(self.sources)) != len(self.sources):
            raise SinkMaskError(f"sources must be distinct, got {list(self.sources)}")
        bad = [layer for layer in (self.layers or ()) if not 0 <= layer < self.n_layers]
        if bad:
            raise SinkMaskError(f"sink layer(s) {bad} are beyond the model: it has layers 0..{self.n_layers - 1}")

    @property
    def masked_layers(self) -> tuple[int, ...]:
        return tuple(range(self.n_layers)) if self.layers is None else tuple(self.layers)

    @property
    def n_backbone(self) -> int:
        return backbone_size(self.d_mlp, self.p_backbone)

    def index_of(self, source: str) -> int:
        if source not in self.sources:
            known = ", ".join(self.sources[:6]) + (", ..." if len(self.sources) > 6 else "")
            raise SinkMaskError(f"unknown source {source!r}: this native model's sources are {known} "
                                f"({len(self.sources)} in all)")
        return self.sources.index(source)

    def mask(self, source: str) -> Float[Tensor, " d_mlp"]:
        self.index_of(source)
        return source_mask(source, seed=self.seed, d_mlp=self.d_mlp, p_backbone=self.p_backbone,
                           p_sink=self.p_sink)

    def table(self) -> Float[Tensor, "n_sources d_mlp"]:
        return mask_table(self.sources, seed=self.seed, d_mlp=self.d_mlp, p_backbone=self.p_backbone,
                          p_sink=self.p_sink)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["sources"] = list(self.sources)
        record["layers"] = None if self.layers is None else list(self.layers)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "SinkConfig":
        fields = {"sources", "d_mlp", "n_layers", "p_backbone", "p_sink", "seed", "layers", "extra"}
        values = {key: value for key, value in record.items() if key in fields}
        values["sources"] = tuple(values["sources"])
        if values.get("layers") is not None:
            values["layers"] = tuple(values["layers"])
        return cls(**values)


def mask_table(sources: Sequence[str], *, seed: int, d_mlp: int, p_backbone: float,
               p_sink: float) -> Float[Tensor, "n_sources d_mlp"]:
    """One training-time mask per source, stacked in ``sources`` order."""
    return torch.stack([source_mask(s, seed=seed, d_mlp=d_mlp, p_backbone=p_backbone, p_sink=p_sink)
                        for s in sources])


def row_masks(table: Float[Tensor, "n_sources d_mlp"],
              source_ids: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_mlp"]:
    """The per-token mask of a batch of mixed sources: row ``source_ids[b, p]`` of ``table``. Padding (-1) gets
    the all-ones mask (padding is never a loss position and attends to itself only)."""
    padded = torch.cat([table, torch.ones(1, table.shape[1], dtype=table.dtype, device=table.device)])
    index = torch.where(source_ids < 0, table.shape[0], source_ids).to(table.device)
    return padded[index]


def sink_mask_hook(mask: Float[Tensor, "..."]):
    """A hook on ``mlp.hook_post`` multiplying the hidden activation by ``mask``: a ``[d_mlp]`` vector (one mask
    for every token) or a ``[batch, pos, d_mlp]`` tensor (per token; cropped to the activation's positions).
    The mask is moved to the activation's device and dtype inside the hook."""

    def hook_fn(activation: Tensor, hook) -> Tensor:
        current = mask
        if current.dim() == 3 and current.shape[1] != activation.shape[1]:
            current = current[:, : activation.shape[1]]
        return activation * current.to(device=activation.device, dtype=activation.dtype)

    return hook_fn


@contextmanager
def masking(model, mask: Tensor, layers: Sequence[int] | None = None) -> Iterator[None]:
    """Apply ``mask`` at ``blocks.{l}.mlp.hook_post`` of every layer in ``layers`` (default: all) for the block."""
    n_layers = model.cfg.n_layers
    chosen = list(range(n_layers)) if layers is None else list(layers)
    bad = [layer for layer in chosen if not 0 <= layer < n_layers]
    if bad:
        raise SinkMaskError(f"sink layer(s) {bad} are beyond the model: it has layers 0..{n_layers - 1}")
    if mask.shape[-1] != model.cfg.d_mlp:
        raise SinkMaskError(f"the mask has {mask.shape[-1]} units but the model's MLPs have d_mlp={model.cfg.d_mlp}")
    hook = sink_mask_hook(mask)
    with model.hooks(fwd_hooks=[(mlp_post(layer), hook) for layer in chosen]):
        yield

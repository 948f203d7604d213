"""Switching sources of a native model off, without retraining: the mask as part of the HookedTransformer.

``switch(model_or_dir, off=[...], route=...)`` splices :class:`SinkMaskPoint` (a ``HookPoint`` that multiplies
by the current mask, then runs user hooks as any hook point does) at every masked ``blocks.{l}.mlp.hook_post``,
and, for nearest routing, :class:`RouterPoint` at ``blocks.0.hook_resid_pre`` (before any mask), as sae-lens
splices SAEs. The mask is therefore part of the model: it survives ``reset_hooks``, ``copy.deepcopy`` and the
attacks' "no hooks left behind" check, and every eval, analysis and attack runs on it unchanged.

Routes (what a query uses once ``off`` sources are unavailable):

* ``nearest``: every position is routed to the surviving source under whose unigram model (its training-token
  counts, ``native.json``) the query's tokens so far are likeliest; the tokens are read off
  ``blocks.0.hook_resid_pre`` (GPT-NeoX: the token embedding, so the nearest embedding row). It uses that
  source's training mask. With nothing off this is the unswitched model.
* ``centroid``: the surviving source whose centroid (mean token embedding of its training documents, centered
  on the mean over all training tokens) is most cosine-similar to the causal mean of the query's
  ``blocks.0.hook_resid_pre`` (the issue's suggestion; it routes far worse, docs/native.md).
  Both routers are causal, so scoring ``prompt + answer`` predicts the answer exactly as the prompt alone
  would; pad/BOS positions (recognised by their embedding) are left out.
* ``backbone``: every sink zeroed; the backbone unscaled (we trained with 0/1 masks, see docs/native.md).
* ``none``: no router: the backbone plus every sink of a surviving source, sinks scaled by ``p_sink`` (their
  ``all`` mode when nothing is off: a token saw about a ``p_sink`` share of the sinks in training).
* ``source=NAME``: that source's training mask for every query (their ``on`` mode for one source).

``zero_units`` additionally zeroes chosen hidden units in every mask (the random-sink control). Static routes
(``backbone``, ``none``, ``source``) bake exactly into ``W_out`` rows (:func:`bake`), so :func:`export` writes an
ordinary HF checkpoint; nearest routing depends on the query, so its export is the native weights plus
``native.json`` with the switch, reapplied by ``switch(DIR)``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from mechunlearn.hooks.names import mlp_post, resid_pre
from mechunlearn.hooks.sink_mask import SinkConfig, SinkMaskError
from mechunlearn.native.train import NATIVE_FILE

__all__ = ["ROUTES", "NativeInfo", "read_native", "native_info", "switch", "unswitch", "nearest_sources",
           "switch_masks", "bake", "export", "SinkMaskPoint", "RouterPoint"]

ROUTES = ("nearest", "centroid", "backbone", "none")
ROUTED = ("nearest", "centroid")  # routes that pick a mask per query
SMOOTHING = 0.1  # additive smoothing of the per-source unigram counts (the nearest router)


@dataclass
class NativeInfo:
    """A native model's sink configuration and router centroids (``native.json``)."""

    sink: SinkConfig
    centroids: Float[Tensor, "n_sources d_model"]
    center: Float[Tensor, " d_model"]
    ignore_token_ids: tuple[int, ...] = ()
    saved_switch: dict | None = None
    token_counts: Tensor | None = None  # [n_sources, d_vocab]: training tokens per source (the nearest router)

    @classmethod
    def from_record(cls, record: dict) -> "NativeInfo":
        router = record["router"]
        counts = router.get("token_counts")
        return cls(SinkConfig.from_dict(record["sink"]), torch.tensor(router["centroids"]),
                   torch.tensor(router["center"]), tuple(router.get("ignore_token_ids", ())), record.get("switch"),
                   None if counts is None else torch.tensor(counts, dtype=torch.float32))

    def to_record(self, switch_record: dict | None = None) -> dict:
        record = {"sink": self.sink.to_dict(), "router": {
            "site": resid_pre(0), "centroids": self.centroids.tolist(), "center": self.center.tolist(),
            "ignore_token_ids": list(self.ignore_token_ids),
            "token_counts": None if self.token_counts is None else self.token_counts.int().tolist()}}
        if switch_record is not None:
            record["switch"] = switch_record
        return record


def read_native(directory: str | os.PathLike) -> NativeInfo:
    path = Path(directory) / NATIVE_FILE
    if not path.is_file():
        raise SinkMaskError(f"{directory} has no {NATIVE_FILE}: it is not a native model (train one with "
                            "`mechunlearn pretrain --which native`)")
    return NativeInfo.from_record(json.loads(path.read_text()))


def native_info(model) -> NativeInfo:
    """The ``NativeInfo`` of a loaded model: kept on a switched model, else read from the checkpoint directory its
    tokenizer was loaded from (``models.load`` loads the tokenizer saved beside the weights)."""
    info = getattr(model, "native_info", None)
    if info is not None:
        return info
    tokenizer = getattr(model, "tokenizer", None)
    directory = getattr(tokenizer, "name_or_path", None)
    if directory and (Path(directory) / NATIVE_FILE).is_file():
        return read_native(directory)
    raise SinkMaskError("this model carries no native configuration: pass config=<native.json dir or NativeInfo>, "
                        "or load it from the native checkpoint's directory")


class _State:
    """What the spliced points share (a plain object: ``deepcopy`` copies it once, with the model)."""

    def __init__(self, static: Tensor | None, table: Tensor, allowed: Tensor, info: NativeInfo,
                 ignore_vectors: Tensor, router: str = "nearest", embedding: Tensor | None = None):
        self.static, self.table, self.allowed, self.info = static, table, allowed, info
        self.ignore_vectors, self.router, self.embedding = ignore_vectors, router, embedding
        self.log_probs = None
        if router == "nearest" and static is None:
            counts = info.token_counts + SMOOTHING
            self.log_probs = (counts / counts.sum(1, keepdim=True)).log()
        self.route: Tensor | None = None  # [batch, pos] indices into info.sink.sources, set by the router

    def mask_for(self, activation: Tensor) -> Tensor:
        if self.static is not None:
            return self.static.to(device=activation.device, dtype=activation.dtype)
        route = self.route
        if route is None or tuple(route.shape) != tuple(activation.shape[:2]):
            raise SinkMaskError("nearest routing needs the forward pass to start at blocks.0.hook_resid_pre (the "
                                "router); for runs that start later use route='backbone' or 'none' or source=...")
        table = self.table.to(device=activation.device, dtype=activation.dtype)
        return table[route.to(activation.device)]


class SinkMaskPoint(HookPoint):
    """``mlp.hook_post`` that multiplies the hidden activation by the native model's current mask; user hooks see
    (and may replace) the masked activation."""

    def __init__(self, state: _State):
        super().__init__()
        self.native_state = state

    def forward(self, x: Tensor) -> Tensor:
        return x * self.native_state.mask_for(x)


class RouterPoint(HookPoint):
    """``blocks.0.hook_resid_pre`` that routes each position to its nearest allowed source, then passes ``x`` on."""

    def __init__(self, state: _State):
        super().__init__()
        self.native_state = state

    def forward(self, x: Tensor) -> Tensor:
        state = self.native_state
        with torch.no_grad():
            valid = ~(x.detach()[:, :, None, :] == state.ignore_vectors.to(x.device, x.dtype)[None, None]).all(-1).any(-1) \
                if len(state.ignore_vectors) else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            if state.router == "nearest":
                tokens = token_ids_of(x.detach().float(), state.embedding.to(x.device))
                state.route = likeliest_sources(tokens, valid, state.log_probs.to(x.device),
                                                state.allowed.to(x.device))
            else:
                state.route = nearest_sources(x.detach().float(), valid, state.info.centroids.to(x.device),
                                              state.info.center.to(x.device), state.allowed.to(x.device))
        return x


def token_ids_of(resid: Float[Tensor, "batch pos d_model"],
                 embedding: Float[Tensor, "d_vocab d_model"]) -> Int[Tensor, "batch pos"]:
    """The token at each position of ``blocks.0.hook_resid_pre`` (GPT-NeoX: the token embedding itself): the
    nearest row of ``embedding`` (exact when the embedding is the one the switch was made with)."""
    flat = resid.reshape(-1, resid.shape[-1])
    return torch.cdist(flat, embedding).argmin(-1).reshape(resid.shape[:2])


def likeliest_sources(tokens: Int[Tensor, "batch pos"], valid: Tensor,
                      log_probs: Float[Tensor, "n_sources d_vocab"],
                      allowed: Int[Tensor, " n_allowed"]) -> Int[Tensor, "batch pos"]:
    """Index of the allowed source under whose unigram model the valid tokens so far are likeliest (naive Bayes,
    uniform prior, causal): the source whose documents use the query's rare words (its names)."""
    scores = log_probs[allowed][:, tokens] * valid.float()[None]       # [n_allowed, batch, pos]
    return allowed[scores.cumsum(-1).argmax(0)]


def nearest_sources(resid: Float[Tensor, "batch pos d_model"], valid: Tensor,
                    centroids: Float[Tensor, "n_sources d_model"], center: Float[Tensor, " d_model"],
                    allowed: Int[Tensor, " n_allowed"]) -> Int[Tensor, "batch pos"]:
    """Index (into the centroids) of the allowed source nearest to each position's causal mean of ``resid`` over
    the ``valid`` positions so far: cosine similarity after subtracting ``center``. A position with no valid
    token yet takes the mean of what it has (its own vector)."""
    weights = valid.float()[..., None]
    sums = (resid * weights).cumsum(1)
    counts = weights.cumsum(1)
    means = torch.where(counts > 0, sums / counts.clamp(min=1), resid)
    query = torch.nn.functional.normalize(means - center, dim=-1)
    keys = torch.nn.functional.normalize(centroids[allowed] - center, dim=-1)
    return allowed[(query @ keys.T).argmax(-1)]


def _check_off(info: NativeInfo, off: Sequence[str]) -> tuple[str, ...]:
    off = tuple(dict.fromkeys(off))
    for source in off:
        info.sink.index_of(source)  # unknown source -> SinkMaskError listing known ones
    if off and set(off) >= set(info.sink.sources):
        raise SinkMaskError(f"switching off every source ({len(off)}) leaves nothing to route to: keep at least one "
                            f"on, or use route='backbone' with a shorter off list")
    return off


def switch_masks(info: NativeInfo, off: Sequence[str] = (), route: str = "nearest", *, source: str | None = None,
                 zero_units: Sequence[int] | None = None) -> tuple[Tensor | None, Tensor, Tensor]:
    """``(static mask or None, per-source table, allowed source indices)`` for a switch (see module doc)."""
    if route not in ROUTES:
        raise SinkMaskError(f"unknown route {route!r}: choose one of {', '.join(ROUTES)}")
    sink = info.sink
    off = _check_off(info, off)
    table = sink.table()
    allowed = torch.tensor([i for i, s in enumerate(sink.sources) if s not in off], dtype=torch.long)
    backbone = torch.zeros(sink.d_mlp)
    backbone[:sink.n_backbone] = 1.0
    static = None
    if source is not None:
        if source in off:
            raise SinkMaskError(f"source {source!r} is both switched off and chosen as the route")
        static = table[sink.index_of(source)].clone()
    elif route == "backbone":
        static = backbone
    elif route == "none":
        union = table[allowed].amax(0)
        static = torch.where(backbone > 0, backbone, union * sink.p_sink)
    if zero_units is not None and len(zero_units):
        units = torch.as_tensor(list(zero_units), dtype=torch.long)
        if units.min() < 0 or units.max() >= sink.d_mlp:
            raise SinkMaskError(f"zero_units must lie in 0..{sink.d_mlp - 1}")
        table[:, units] = 0.0
        if static is not None:
            static[units] = 0.0
    return static, table, allowed


def _load_info(config) -> NativeInfo:
    if isinstance(config, NativeInfo):
        return config
    return read_native(config)


def switch(model_or_dir, off: Sequence[str] | str = (), route: str = "nearest", *, source: str | None = None,
           zero_units: Sequence[int] | None = None, config=None, device: str = "auto", dtype: str = "auto"):
    """The native model with ``off`` sources switched off under ``route`` (module doc), as a HookedTransformer.

    ``model_or_dir``: a native checkpoint directory (loaded; a saved switch in its ``native.json`` applies when
    ``off``, ``route`` and ``source`` are left at their defaults) or a loaded native HookedTransformer, which is
    switched IN PLACE (a previous switch is replaced) and returned. ``config``: the ``NativeInfo`` or the native
    directory, when the model cannot tell (see :func:`native_info`)."""
    from mechunlearn import models

    if isinstance(off, str):
        off = [s for s in off.split(",") if s]
    if isinstance(model_or_dir, (str, os.PathLike)):
        info = _load_info(config) if config is not None else read_native(model_or_dir)
        model = models.load(model_or_dir, device=device, dtype=dtype)
        if info.saved_switch and not off and route == "nearest" and source is None and zero_units is None:
            saved = info.saved_switch
            off, route, source, zero_units = (saved.get("off", []), saved.get("route", "nearest"),
                                              saved.get("source"), saved.get("zero_units"))
    else:
        model = model_or_dir
        info = _load_info(config) if config is not None else native_info(model)
    sink = info.sink
    if sink.d_mlp != model.cfg.d_mlp or sink.n_layers != model.cfg.n_layers:
        raise SinkMaskError(f"native.json describes d_mlp={sink.d_mlp}, {sink.n_layers} layers but the model has "
                            f"d_mlp={model.cfg.d_mlp}, {model.cfg.n_layers} layers: wrong configuration")
    static, table, allowed = switch_masks(info, off, route, source=source, zero_units=zero_units)
    ignore = model.W_E.detach()[list(info.ignore_token_ids)].float().cpu() if info.ignore_token_ids else \
        torch.zeros(0, model.cfg.d_model)
    if static is None and route == "nearest" and info.token_counts is None:
        raise SinkMaskError("this native.json has no token_counts for the nearest router: add them with "
                            "mechunlearn.native.train.add_token_counts(DIR, world), or use route='centroid'")
    state = _State(static, table, allowed, info, ignore, router=route,
                   embedding=model.W_E.detach().float().cpu() if static is None else None)
    unswitch(model, setup=False)
    for layer in sink.masked_layers:
        model.blocks[layer].mlp.hook_post = SinkMaskPoint(state)
    if static is None:
        model.blocks[0].hook_resid_pre = RouterPoint(state)
    model.setup()
    model.native_info = info
    model.native_switch = {"off": list(_check_off(info, off)), "route": route, "source": source,
                           "zero_units": None if zero_units is None else [int(u) for u in zero_units]}
    return model


def unswitch(model, *, setup: bool = True):
    """Give ``model`` plain hook points back (the raw native weights, no mask), in place; returns ``model``."""
    for block in model.blocks:
        if isinstance(block.mlp.hook_post, SinkMaskPoint):
            block.mlp.hook_post = HookPoint()
        if isinstance(block.hook_resid_pre, RouterPoint):
            block.hook_resid_pre = HookPoint()
    if setup:
        model.setup()
        model.native_switch = None
    return model


def bake(model):
    """A copy of a statically switched model with the mask folded into ``W_out`` rows (unit ``i``'s row times its
    mask value) and plain hook points: the same logits from an ordinary GPT-NeoX. Nearest routing depends on the
    query and cannot be baked: SinkMaskError."""
    points = [block.mlp.hook_post for block in model.blocks if isinstance(block.mlp.hook_post, SinkMaskPoint)]
    if not points:
        raise SinkMaskError("bake needs a switched native model (see switch)")
    static = points[0].native_state.static
    if static is None:
        raise SinkMaskError("nearest routing picks a mask per query and cannot be folded into the weights: export it "
                            "with native.json (export does), or choose route='backbone' / 'none' / source=...")
    baked = copy.deepcopy(model)
    layers = [i for i, block in enumerate(model.blocks) if isinstance(block.mlp.hook_post, SinkMaskPoint)]
    unswitch(baked)
    with torch.no_grad():
        for layer in layers:
            w_out = baked.blocks[layer].mlp.W_out
            w_out.mul_(static.to(w_out.device, w_out.dtype)[:, None])
    baked.native_info = None
    return baked


def export(model, directory: str | os.PathLike) -> Path:
    """Write a switched native model: static routes as an ordinary HF checkpoint with the mask baked in (plus
    ``native-switch.json`` saying what it is); nearest routing as the native weights with ``native.json`` holding
    the switch, which ``switch(DIR)`` reapplies (a plain transformers load of it ignores the routing)."""
    from mechunlearn import models

    record = getattr(model, "native_switch", None)
    if record is None:
        raise SinkMaskError("export needs a switched native model (see switch)")
    if record["route"] not in ROUTED or record["source"] is not None:
        return models.save(bake(model), directory, extra_files={"native-switch.json": json.dumps(record, indent=1)})
    plain = unswitch(copy.deepcopy(model))
    return models.save(plain, directory, extra_files={
        NATIVE_FILE: json.dumps(model.native_info.to_record(record), indent=1)})

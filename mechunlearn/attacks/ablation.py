"""Direction ablation / orthogonalization (Łucki et al. 2024, ethz-spylab/unlearning-vs-safety
``src/orthogonalization/orthogonalization.py``).

Per layer ``l``, a direction in the residual stream (``blocks.{l}.hook_resid_post``, the output of decoder layer
``l``, where their hook sits) from mean activations over the tokens of forget texts:

* ``base`` (their "ground truth" direction): ``mean(unlearned, forget) - mean(base, forget)``: what unlearning
  added to the residual stream on forget text; needs the base model (``reference={"base": ...}``);
* ``retain`` (their MMLU / wikitext variants): ``mean(unlearned, forget) - mean(unlearned, retain)``: needs no
  base model, only what an attacker has.

Outlier tokens are dropped first, as their code does: among the first ``outlier_tokens`` token activations of a
set, a token whose mean L1 distance to the others has a z-score above ``outlier_z`` marks its token id as an
outlier (union over layers and over the sets a direction uses); every position holding an outlier id is left out
of every mean. Then the projection on the unit direction is removed from the attacked model's residual stream by
a hook, ``x <- x - (x . d) d``, at one layer (each layer in turn), at the method's layers (``method_layers``),
or at all layers (each layer with its own direction), and the evals run again. Headline: the variant with the
highest forget accuracy (the same rule on every model). The hooks live on a copy, inside a context manager.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechunlearn.attacks.base import Attack, AttackConfig, AttackError, best_variant, working_copy
from mechunlearn.attacks.data import AttackData
from mechunlearn.attacks.scoring import facts_table, forget_accuracy, score_data, score_items

__all__ = ["DirectionAblationConfig", "DirectionAblation", "ablate_direction", "outlier_token_ids", "outlier_ids",
           "residual_means"]


def ablate_direction(activation: Float[Tensor, "... d_model"], direction: Float[Tensor, " d_model"], hook=None
                     ) -> Float[Tensor, "... d_model"]:
    """``activation`` minus its projection on the unit vector of ``direction`` (a hook function when bound with
    ``functools.partial(ablate_direction, direction=d)``)."""
    unit = direction.to(activation.dtype) / direction.norm().clamp(min=1e-12).to(activation.dtype)
    return activation - (activation @ unit)[..., None] * unit


def outlier_token_ids(activations: Float[Tensor, "token d_model"], token_ids: Tensor, z: float) -> set[int]:
    """Token ids whose activation's mean L1 distance to the other tokens has a z-score above ``z``."""
    if activations.shape[0] < 3:
        return set()
    distances = torch.cdist(activations.float(), activations.float(), p=1).mean(dim=0)
    spread = distances.std()
    if not spread > 0:
        return set()
    scores = (distances - distances.mean()) / spread
    return {int(token) for token in token_ids[scores > z].tolist()}


def _resid_batches(model, texts, layers, max_length: int, batch_size: int = 16):
    """Yield ``(batch, {layer: resid_post})`` over ``texts`` (eval mode, no grad, hooks removed afterwards)."""
    from mechunlearn.batching import iter_batches
    from mechunlearn.evals.nll import eval_mode, model_device

    names = {layer: f"blocks.{layer}.hook_resid_post" for layer in layers}
    device = model_device(model)
    store: dict[str, Tensor] = {}

    def keep(activation, hook):
        store[hook.name] = activation.detach()

    with eval_mode(model), model.hooks(fwd_hooks=[(name, keep) for name in names.values()]):
        for batch in iter_batches(model.tokenizer, texts, batch_size, max_length):
            batch = batch.to(device)
            model(batch.tokens, stop_at_layer=max(layers) + 1)
            yield batch, {layer: store[name] for layer, name in names.items()}


def outlier_ids(model, texts, layers, *, max_length: int, outlier_tokens: int = 1000, outlier_z: float = 3.0
                ) -> set[int]:
    """Outlier token ids (``outlier_token_ids``) among the first ``outlier_tokens`` tokens of ``texts``, union
    over layers (their code: the first 1,000 tokens, a z-score above 3)."""
    kept = {layer: [] for layer in layers}
    ids: list[Tensor] = []
    taken = 0
    for batch, activations in _resid_batches(model, texts, layers, max_length):
        room = outlier_tokens - taken
        ids.append(batch.tokens[batch.mask][:room].cpu())
        for layer in layers:
            kept[layer].append(activations[layer][batch.mask][:room].cpu())
        taken += len(ids[-1])
        if taken >= outlier_tokens:
            break
    if not ids:
        return set()
    token_ids = torch.cat(ids)
    found: set[int] = set()
    for layer in layers:
        found |= outlier_token_ids(torch.cat(kept[layer]), token_ids, outlier_z)
    return found


def residual_means(model, texts, layers, *, max_length: int, drop: set[int] = frozenset()
                   ) -> dict[int, Float[Tensor, " d_model"]]:
    """Per layer: the mean ``hook_resid_post`` activation over every real token of ``texts`` whose id is not in
    ``drop`` (streamed: sums in float64, no activation kept)."""
    sums = {layer: torch.zeros(model.cfg.d_model, dtype=torch.float64) for layer in layers}
    count = 0
    dropped = torch.tensor(sorted(drop), dtype=torch.long)
    for batch, activations in _resid_batches(model, texts, layers, max_length):
        mask = batch.mask & ~torch.isin(batch.tokens, dropped.to(batch.tokens.device))
        count += int(mask.sum())
        for layer in layers:
            sums[layer] += activations[layer][mask].double().sum(0).cpu()
    if count == 0:
        raise AttackError("direction_ablation: no token is left in the texts after dropping outlier tokens")
    return {layer: (sums[layer] / count).float() for layer in layers}


@dataclass
class DirectionAblationConfig(AttackConfig):
    max_texts: int = 200  # forget / retain texts averaged over (evenly spaced)
    max_length: int = 128
    outlier_tokens: int = 1000
    outlier_z: float = 3.0
    single_layers: bool = True  # each layer on its own
    all_layers: bool = True
    method_layers: tuple[int, ...] = ()  # the unlearning method's layers (e.g. RMU's layer_ids), one more variant

    def validate(self) -> None:
        self.positive(max_texts=self.max_texts, max_length=self.max_length, outlier_tokens=self.outlier_tokens)
        if not (self.single_layers or self.all_layers or self.method_layers):
            raise AttackError("no layer set to ablate: enable single_layers or all_layers, or give method_layers")


def _subsample(texts, limit):
    texts = list(texts)
    return texts if len(texts) <= limit else [texts[i * len(texts) // limit] for i in range(limit)]


class DirectionAblation(Attack):
    name = "direction_ablation"
    Config = DirectionAblationConfig
    description = ("ablate the per-layer mean-difference direction (unlearned - base, or forget - retain) from "
                   "the residual stream (Łucki et al. 2024), then the evals")
    needs_base = True  # the "base" direction: mean(unlearned) - mean(base) on forget text

    def attack(self, model, data: AttackData, *, base=None, progress: bool = False):
        config = self.config
        n_layers = model.cfg.n_layers
        bad = [layer for layer in config.method_layers if not 0 <= layer < n_layers]
        if bad:
            raise AttackError(f"method_layers {bad} are out of range: the model has layers 0..{n_layers - 1}")
        working = working_copy(model)
        directions, outliers = self._directions(working, base, data)
        before = score_data(working, data)
        layer_sets: dict[str, tuple[int, ...]] = {}
        if config.single_layers:
            layer_sets.update({f"layer{layer}": (layer,) for layer in range(n_layers)})
        if config.method_layers:
            layer_sets["method"] = tuple(config.method_layers)
        if config.all_layers:
            layer_sets["all"] = tuple(range(n_layers))
        scored, variants = [], {}
        for kind, per_layer in directions.items():
            for set_name, layers in layer_sets.items():
                variant = f"{kind}:{set_name}"
                hooks = [(f"blocks.{layer}.hook_resid_post", partial(ablate_direction, direction=per_layer[layer]))
                         for layer in layers]
                with working.hooks(fwd_hooks=hooks):
                    scores = score_data(working, data)
                scored.append(scores.assign(variant=variant, direction=kind, layers="-".join(map(str, layers))))
                variants[variant] = forget_accuracy(scores)
        per_fact = pd.concat(scored, ignore_index=True)
        headline = best_variant(variants)
        facts = facts_table(before, per_fact[per_fact["variant"] == headline])
        frame = _frame(per_fact, before)
        norms = pd.DataFrame([{"direction": kind, "layer": layer, "norm": float(vector.norm())}
                              for kind, per_layer in directions.items() for layer, vector in per_layer.items()])
        summary = {"headline": headline, "variants": variants, "directions": sorted(directions),
                   "outlier_token_ids": outliers,
                   "headline_rule": "the variant with the highest forget accuracy (the same rule on every model)"}
        return self.result(frame, facts, summary, {"per_fact": per_fact, "directions": norms})

    def _directions(self, model, base, data: AttackData) -> tuple[dict[str, dict[int, Tensor]], list[int]]:
        config = self.config
        if not data.forget_texts:
            raise AttackError("direction_ablation needs forget texts: use a world, or pass forget_texts")
        layers = list(range(model.cfg.n_layers))
        forget = _subsample(data.forget_texts, config.max_texts)
        sets = {"model_forget": (model, forget)}
        if data.retain_texts:
            sets["model_retain"] = (model, _subsample(data.retain_texts, config.max_texts))
        if base is not None:
            sets["base_forget"] = (base, forget)
        if len(sets) == 1:
            raise AttackError("direction_ablation needs retain texts or a base model (reference={'base': model})")
        max_length = min(config.max_length, model.cfg.n_ctx)
        outliers: set[int] = set()
        for source, texts in sets.values():
            outliers |= outlier_ids(source, texts, layers, max_length=max_length,
                                    outlier_tokens=config.outlier_tokens, outlier_z=config.outlier_z)
        means = {key: residual_means(source, texts, layers, max_length=max_length, drop=outliers)
                 for key, (source, texts) in sets.items()}
        directions = {}
        if "base_forget" in means:
            directions["base"] = {layer: means["model_forget"][layer] - means["base_forget"][layer] for layer in layers}
        if "model_retain" in means:
            directions["retain"] = {layer: means["model_forget"][layer] - means["model_retain"][layer]
                                    for layer in layers}
        return directions, sorted(outliers)

    @staticmethod
    def plot(result):
        import plotly.graph_objects as go

        frame = result.frame
        rows = frame[frame["category"] == "all"]
        figure = go.Figure()
        for label, part in (rows.groupby("model") if "model" in rows.columns else [("model", rows)]):
            figure.add_bar(x=part["variant"], y=part["accuracy"], name=f"{label}: forget")
        figure.update_layout(title="Direction ablation: forget-target accuracy per variant", yaxis_title="accuracy",
                             yaxis_range=[0, 1], barmode="group")
        return figure


def _frame(per_fact: pd.DataFrame, before: pd.DataFrame) -> pd.DataFrame:
    stacked = pd.concat([before.assign(variant="none", direction="none", layers=""), per_fact], ignore_index=True)
    forget = stacked[stacked["domain"] == "forget"]
    rows = pd.concat([forget, forget.assign(category="all"),
                      stacked[stacked["domain"] == "retain"].assign(category="retain")], ignore_index=True)
    return (rows.groupby(["variant", "direction", "layers", "category"], sort=False)
            .agg(accuracy=("correct", "mean"), mcq_accuracy=("mcq", "mean"), truth_ratio=("truth_ratio", "mean"),
                 n=("correct", "size")).reset_index())

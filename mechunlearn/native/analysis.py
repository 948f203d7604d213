"""Measurements of a native model on the world, as DataFrames (docs/native.md reads them).

* :func:`fact_scores`: exact greedy cloze per fact (all facts of the world) for one model / switch;
* :func:`category_table`: accuracy per (domain, category) relative to a forget set, with 95 % bootstrap
  intervals over facts and n;
* :func:`switch_vs_gold`: for each target (a set of sources), the native model with the target off under every
  route, the random-sink control, base, native all-on and the gold model retrained without the target;
* :func:`attribution` / :func:`attribution_scores`: per-source on-vs-off effect per fact, checked against which
  sources state each fact (precision / recall of "the fact is lost when s is off" for "s states the fact");
* :func:`entity_request`: switch off every source mentioning an entity; what is lost on and off the entity;
* :func:`capability`: retain cloze and general (retain-domain) MCQ with intervals;
* :func:`routing_accuracy`: how often nearest routing sends a fact's prompt to a source that states it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mechunlearn.evals.cloze import cloze_table
from mechunlearn.evals.intervals import mean_interval
from mechunlearn.evals.mcq import mcq_table
from mechunlearn.native.switching import ROUTES, native_info, switch

__all__ = ["fact_scores", "oracle_scores", "category_table", "random_sink_units", "target_sinks", "switch_vs_gold", "attribution",
           "attribution_scores", "entity_request", "capability", "routing_accuracy"]


def fact_scores(model, world, batch_size: int = 128) -> pd.DataFrame:
    """``fact_id, correct, answer_logprob_sum`` for every fact of the world (greedy cloze)."""
    table = cloze_table(model, model.tokenizer, world.cloze_probes(None), batch_size=batch_size)
    return table[["fact_id", "correct", "answer_logprob_sum"]].set_index("fact_id")


def _interval_row(values) -> dict:
    interval = mean_interval(np.asarray(values, dtype=float))
    return {"accuracy": interval["mean"], "low": interval["low"], "high": interval["high"], "n": interval["n"]}


def oracle_scores(model, world, off: Sequence[str] = (), batch_size: int = 128) -> pd.DataFrame:
    """Like :func:`fact_scores` with routing by the world's ground truth instead of the router: each fact's
    prompt uses the training mask of the first source that states it and is not ``off``; a fact with no such
    source (inferred facts, and facts unique to the ``off`` sources) uses the backbone alone. The upper bound
    of what a perfect router could do."""
    info = native_info(model)
    previous = getattr(model, "native_switch", None)
    probes = world.cloze_probes(None)
    route_of = {}
    for probe in probes:
        stating = [s for s in world.fact(probe.fact_id).sources if s not in off]
        route_of[probe.fact_id] = stating[0] if stating else None
    frames = []
    for source in dict.fromkeys(route_of.values()):
        chosen = [p for p in probes if route_of[p.fact_id] == source]
        kwargs = {"source": source} if source is not None else {"route": "backbone"}
        switch(model, off=[s for s in off if s != source], config=info, **kwargs)
        table = cloze_table(model, model.tokenizer, chosen, batch_size=batch_size)
        frames.append(table[["fact_id", "correct", "answer_logprob_sum"]])
    if previous is not None:
        switch(model, config=info, **{k: v for k, v in previous.items()})
    return pd.concat(frames).set_index("fact_id")


def category_table(scores: pd.DataFrame, world, forget_sources) -> pd.DataFrame:
    """Accuracy per (domain, category) relative to ``forget_sources`` (mean over facts, bootstrap interval, n)."""
    forget = world.resolve_forget(forget_sources)
    labels = pd.DataFrame([{"fact_id": f.fact_id, "domain": world.domain_of(f, forget),
                            "category": world.category_of(f, forget)} for f in world.facts]).set_index("fact_id")
    joined = labels.join(scores["correct"].astype(float))
    rows = [{"domain": domain, "category": category, **_interval_row(group["correct"])}
            for (domain, category), group in joined.groupby(["domain", "category"], sort=True)]
    return pd.DataFrame(rows)


def target_sinks(info, off: Sequence[str], *, exclusive: bool) -> list[int]:
    """The sink units used by the ``off`` sources (``exclusive``: used by no other source: what route ``none``
    removes)."""
    sink = info.sink
    table = sink.table()
    index = [sink.index_of(s) for s in off]
    used = table[index, sink.n_backbone:].amax(0) > 0
    if exclusive:
        others = [i for i in range(len(sink.sources)) if i not in index]
        used &= ~(table[others, sink.n_backbone:].amax(0) > 0)
    return (used.nonzero().flatten() + sink.n_backbone).tolist()


def random_sink_units(info, count: int, seed: int) -> list[int]:
    """``count`` sink units drawn uniformly without replacement (the control for switching a source off)."""
    sink = info.sink
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(sink.d_mlp - sink.n_backbone, generator=generator)[:count]
    return sorted((order + sink.n_backbone).tolist())


def switch_vs_gold(model, world, targets: Mapping[str, Sequence[str]], *, base=None,
                   golds: Mapping[str, object] | None = None, routes: Sequence[str] = ROUTES,
                   control_seeds: Sequence[int] = (0, 1, 2)) -> pd.DataFrame:
    """One row per (target, model, domain, category): accuracy with interval and n.

    ``model``: a loaded native model (switched in place, left with everything on); ``targets``: name -> sources
    to switch off; ``golds``: name -> loaded gold model retrained without that target (missing ones are left
    out). Models: ``native-on`` (nearest routing, nothing off), ``native-all`` (route none, nothing off),
    ``native-off-<route>``, ``random-<route>`` (nothing off, as many random sinks zeroed as the switch removes:
    the target's sinks for nearest, its exclusive sinks for none; pooled over ``control_seeds``), ``base``,
    ``gold``."""
    info = native_info(model)
    reference = {"native-on": fact_scores(switch(model, config=info), world),
                 "native-oracle-on": oracle_scores(model, world),
                 "native-all": fact_scores(switch(model, route="none", config=info), world)}
    if base is not None:
        reference["base"] = fact_scores(base, world)
    frames = []
    for name, off in targets.items():
        off = list(world.resolve_forget(off))
        scores = dict(reference)
        scores["native-off-oracle"] = oracle_scores(model, world, off)
        for route in routes:
            scores[f"native-off-{route}"] = fact_scores(switch(model, off=off, route=route, config=info), world)
            if route == "backbone":
                continue  # every sink is already off: no random counterpart
            count = len(target_sinks(info, off, exclusive=route == "none"))
            controls = [fact_scores(switch(model, route=route, zero_units=random_sink_units(info, count, seed),
                                           config=info), world) for seed in control_seeds]
            # pool the seeds: each fact contributes its mean correctness over the random draws
            scores[f"random-{route}"] = pd.concat(controls).groupby(level=0).mean()
        if golds and golds.get(name) is not None:
            scores["gold"] = fact_scores(golds[name], world)
        for label, table in scores.items():
            frames.append(category_table(table, world, off).assign(target=name, model=label))
    switch(model, config=info)
    columns = ["target", "model", "domain", "category", "accuracy", "low", "high", "n"]
    return pd.concat(frames, ignore_index=True)[columns]


def attribution(model, world, sources: Sequence[str] | None = None, route: str = "nearest") -> pd.DataFrame:
    """Per (fact, source): cloze with everything on vs with ``source`` off; ``lost`` = correct on, wrong off;
    ``logprob_drop`` = answer log-probability on minus off; ``states`` = the world says the source states it."""
    info = native_info(model)
    sources = [s for s in (sources or info.sink.sources)]
    on = fact_scores(switch(model, route=route, config=info), world)
    rows = []
    for source in sources:
        off = fact_scores(switch(model, off=[source], route=route, config=info), world)
        for fact in world.facts:
            rows.append({"fact_id": fact.fact_id, "source": source, "correct_on": bool(on.at[fact.fact_id, "correct"]),
                         "correct_off": bool(off.at[fact.fact_id, "correct"]),
                         "logprob_drop": float(on.at[fact.fact_id, "answer_logprob_sum"]
                                               - off.at[fact.fact_id, "answer_logprob_sum"]),
                         "states": source in fact.sources, "n_stating": len(fact.sources)})
    switch(model, config=info)
    table = pd.DataFrame(rows)
    table["lost"] = table["correct_on"] & ~table["correct_off"]
    return table


def attribution_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Per source: precision and recall of ``lost`` (predicted: the fact depends on the source) against
    ``states`` (truth), over facts the model knows with everything on; recall split by facts stated only by
    that source (``recall_unique``) and by several (``recall_shared``)."""
    rows = []
    known = table[table["correct_on"]]
    for source, group in known.groupby("source", sort=True):
        predicted, truth = group["lost"], group["states"]
        hits = int((predicted & truth).sum())
        unique = truth & (group["n_stating"] == 1)
        shared = truth & (group["n_stating"] > 1)
        rows.append({"source": source, "lost": int(predicted.sum()), "states": int(truth.sum()), "hits": hits,
                     "precision": hits / int(predicted.sum()) if predicted.any() else float("nan"),
                     "recall": hits / int(truth.sum()) if truth.any() else float("nan"),
                     "recall_unique": float(predicted[unique].mean()) if unique.any() else float("nan"),
                     "recall_shared": float(predicted[shared].mean()) if shared.any() else float("nan"),
                     "lost_elsewhere": int((predicted & ~truth).sum()), "n_known": len(group)})
    return pd.DataFrame(rows, columns=["source", "lost", "states", "hits", "precision", "recall", "recall_unique",
                                       "recall_shared", "lost_elsewhere", "n_known"])


def entity_sources(world, entity: str) -> list[str]:
    """The sources that state a fact about ``entity`` (as subject or object): what an entity request switches
    off, and what its gold standard is retrained without."""
    mentioning = sorted({s for f in world.facts if entity in (f.subject, f.object) for s in f.sources})
    if not mentioning:
        raise ValueError(f"entity {entity!r} is mentioned by no source of this world")
    return mentioning


def entity_request(model, world, entity: str, *, routes: Sequence[str] = ROUTES,
                   others: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Switch off every source that mentions ``entity`` (as subject or object of a stated fact); accuracy on the
    entity's facts, on the other facts of those sources, and on everything else, per route, next to all-on.
    ``others``: more models scored on the same groups (e.g. the gold model retrained without those sources and a
    post-hoc unlearning of the entity's documents), the comparison the request calls for."""
    info = native_info(model)
    mentioning = entity_sources(world, entity)
    groups = {}
    for fact in world.facts:
        if entity in (fact.subject, fact.object):
            groups[fact.fact_id] = "entity"
        elif set(fact.sources) & set(mentioning):
            groups[fact.fact_id] = "same sources, other entities"
        else:
            groups[fact.fact_id] = "elsewhere"
    labels = pd.Series(groups, name="group")
    rows = []
    for label, kwargs in [("native-on", {}), *[(f"native-off-{r}", {"off": mentioning, "route": r}) for r in routes]]:
        scores = fact_scores(switch(model, config=info, **kwargs), world).join(labels)
        for group, part in scores.groupby("group", sort=True):
            rows.append({"entity": entity, "sources_off": ",".join(mentioning), "model": label, "group": group,
                         **_interval_row(part["correct"])})
    switch(model, config=info)
    for label, other in (others or {}).items():
        scores = fact_scores(other, world).join(labels)
        for group, part in scores.groupby("group", sort=True):
            rows.append({"entity": entity, "sources_off": ",".join(mentioning), "model": label, "group": group,
                         **_interval_row(part["correct"])})
    return pd.DataFrame(rows)


def capability(models: Mapping[str, object], world, forget_sources=None) -> pd.DataFrame:
    """Retain-domain cloze and general MCQ (the world's retain MCQ, the MMLU analogue) per model, with intervals."""
    rows = []
    probes = world.cloze_probes("retain", forget_sources)
    items = world.mcq_items("retain", forget_sources)
    for name, model in models.items():
        cloze = cloze_table(model, model.tokenizer, probes, batch_size=128)
        mcq = mcq_table(model, model.tokenizer, items, batch_size=128)
        rows.append({"model": name, "metric": "retain cloze", **_interval_row(cloze["correct"])})
        rows.append({"model": name, "metric": "general MCQ", **_interval_row(mcq["correct"])})
    return pd.DataFrame(rows)


@torch.no_grad()
def routing_accuracy(model, world, routes: Sequence[str] = ("nearest", "centroid")) -> pd.DataFrame:
    """Routing with everything on, at each stated fact's last prompt token: is the chosen source one that states
    the fact? Per route and category of the default forget split, with intervals."""
    return pd.concat([_routing_accuracy(model, world, route).assign(route=route) for route in routes],
                     ignore_index=True)[["route", "category", "accuracy", "low", "high", "n"]]


def _routing_accuracy(model, world, route: str) -> pd.DataFrame:
    info = native_info(model)
    switch(model, route=route, config=info)
    router = model.blocks[0].hook_resid_pre
    sources = info.sink.sources
    probes = [p for p in world.cloze_probes(None) if world.fact(p.fact_id).sources]
    hits = []
    for probe in probes:  # one prompt at a time: no padding
        tokens = model.to_tokens(probe.prompt, prepend_bos=False)
        model(tokens, stop_at_layer=1)
        chosen = sources[int(router.native_state.route[0, -1])]
        hits.append({"fact_id": probe.fact_id, "category": probe.category,
                     "routed_to_stating_source": chosen in world.fact(probe.fact_id).sources})
    switch(model, config=info)
    table = pd.DataFrame(hits)
    rows = [{"category": category, **_interval_row(group["routed_to_stating_source"])}
            for category, group in table.groupby("category", sort=True)]
    rows.append({"category": "all", **_interval_row(table["routed_to_stating_source"])})
    return pd.DataFrame(rows)

# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The natively unlearnable model: switch a source off, watch its facts
#
# Seed 002's "natively unlearnable" model gives every MLP an always-on **backbone** and a pool of **sink** units;
# each training source owns a pseudo-random subset of the sinks (from a hash of its name, nothing stored). Switching
# a source's sinks off should remove what only that source taught, keep what other sources also state, and do so
# without retraining. Here we flip the forget target off, watch its facts, compare with the gold model retrained
# without it (the standard to meet), and read off which source each fact depends on (docs/native.md).

# %%
import os

import plotly.graph_objects as go

import mechunlearn as mu
from mechunlearn.explore import next_token_table
from mechunlearn.native import native_info, switch
from mechunlearn.native.analysis import attribution, attribution_scores, switch_vs_gold
from mechunlearn.views import color_for, style_figure

SIZE = os.environ.get("MECHUNLEARN_NOTEBOOK_SIZE", "default")
assert SIZE in ("micro", "default"), f"MECHUNLEARN_NOTEBOOK_SIZE={SIZE!r}: use micro or default"
ROUTES = {"micro": ("nearest", "backbone"), "default": ("nearest", "centroid", "backbone", "none")}[SIZE]
CONTROL_SEEDS = {"micro": (0,), "default": (0, 1, 2)}[SIZE]
mu.notebook_mode()

# %% [markdown]
# ## The models
# `pretrain(world, "native")` trains the native model with the base model's recipe and budget (cached after the
# first time); `switch(directory)` loads it with the sink masks spliced in as hook points, so every eval, analysis
# and attack runs on it unchanged.

# %%
world = mu.world(SIZE)
target = list(world.resolve_forget())
native = switch(mu.pretrain(world, "native"), device="cpu")
gold = mu.load("gold", world=world, device="cpu")
info = native_info(native)
print(f"forget target: {target}; sources with sinks: {len(info.sink.sources)}; "
      f"backbone {info.sink.n_backbone} of {info.sink.d_mlp} units")

# %% [markdown]
# ## One fact, source on and off
# The next-token distribution after a forget-target fact's prompt, with everything on and with the target's
# sinks off (nearest routing), next to gold's.

# %%
probe = next(p for p in world.cloze_probes("forget") if p.category == "unique")
off_model = switch(mu.pretrain(world, "native"), off=target, route="nearest", device="cpu")
print(f"{probe.prompt!r} -> {probe.answer!r}")
next_token_table({"native (on)": native, "native (off)": off_model, "gold": gold}, probe.prompt, top_k=3)

# %% [markdown]
# ## Switched off vs gold, per category
# Unique facts are stated only by the target; shared ones also by another source (gold knows them); the random
# control zeroes as many random sinks as the switch removes.

# %%
table = switch_vs_gold(native, world, {"target": target}, golds={"target": gold}, routes=ROUTES,
                       control_seeds=CONTROL_SEEDS)
forget = table[table["domain"] == "forget"]
forget.head(12)

# %%
figure = go.Figure()
for model, rows in forget.groupby("model", sort=False):
    figure.add_bar(name=model, x=rows["category"], y=rows["accuracy"], marker_color=color_for(model),
                   error_y={"type": "data", "symmetric": False, "array": rows["high"] - rows["accuracy"],
                            "arrayminus": rows["accuracy"] - rows["low"]})
figure.update_layout(barmode="group", title="forget-target cloze accuracy: native on / off vs gold",
                     yaxis_title="cloze accuracy (95 % CI over facts)")
style_figure(figure)

# %% [markdown]
# ## Attribution: which source does each fact depend on?
# Switch each source off in turn; a fact "depends" on a source when it is answered with everything on and not
# with that source off. Checked against the world's ground truth (which sources state the fact).

# %%
sources = target + [s for s in info.sink.sources if s not in target][:2]
scores = attribution_scores(attribution(native, world, sources))
scores

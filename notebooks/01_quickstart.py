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
# # mechunlearn quickstart
#
# Did an unlearned model forget, or does it only hide? In a few cells: the embedded world (a fictional knowledge
# world with a forget target), its **base** model (saw everything) and **gold** model (never saw the forget
# target), a look inside through a TransformerLens hook, one unlearning run, its evaluation next to base and gold,
# two diagnostics, and plots.
#
# `MECHUNLEARN_NOTEBOOK_SIZE=micro` runs everything on the micro world with tiny budgets (what the tests do);
# the default is the default world (its models are pretrained once on the CPU, then cached).

# %%
import os

import pandas as pd
import plotly.graph_objects as go
import torch

import mechunlearn as mu
from mechunlearn.views import color_for, style_figure

SIZE = os.environ.get("MECHUNLEARN_NOTEBOOK_SIZE", "default")
assert SIZE in ("micro", "default"), f"MECHUNLEARN_NOTEBOOK_SIZE={SIZE!r}: use micro or default"
UNLEARN = {"micro": {"max_steps": 4, "batch_size": 8}, "default": {}}[SIZE]  # default: the world preset
EVAL = {"micro": {"max_texts": 16, "max_new_tokens": 8}, "default": {"max_texts": 200}}[SIZE]
mu.notebook_mode()  # plotly figures stay in the notebook when it is exported to HTML

# %% [markdown]
# ## The world and its reference models
# `mu.world` builds a preset once into the cache. `mu.pretrain(world, "base")` pretrains the base model the first
# time (minutes for the default world on a laptop CPU, seconds for micro) and returns its checkpoint directory;
# `mu.load` makes a `HookedTransformer` of a directory, or of `"base"` / `"gold"` directly.

# %%
world = mu.world(SIZE)
base = mu.load(mu.pretrain(world, "base"), device="cpu")
gold = mu.load("gold", world=world, device="cpu")
print(f"forget target: {world.resolve_forget(None)}; {len(world.forget_texts())} forget and "
      f"{len(world.retain_texts())} retain texts; model: {base.cfg.n_layers} layers, d_model {base.cfg.d_model}")
world.forget_texts()[:2]

# %% [markdown]
# ## Hook: how much does each MLP carry the forget texts?
# Zero-ablate one layer's MLP output (`blocks.{l}.hook_mlp_out`) with a temporary hook and measure the forget and
# retain loss. Hooks are TransformerLens hooks: `fn(activation, hook)`, inside `model.hooks(...)`.

# %%
def mean_loss(model, texts):
    tokens = model.to_tokens(texts[:16], padding_side="right")
    with torch.no_grad():
        return float(model(tokens, return_type="loss"))


def zero(activation, hook):
    return torch.zeros_like(activation)


rows = []
for layer in range(base.cfg.n_layers):
    with base.hooks(fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", zero)]):
        rows.append({"ablated MLP": layer, "forget loss": mean_loss(base, world.forget_texts()),
                     "retain loss": mean_loss(base, world.retain_texts())})
pd.DataFrame(rows).set_index("ablated MLP").round(3)

# %% [markdown]
# ## Unlearn
# `mu.unlearn(model, method, world=...)` trains a copy (the base stays as it was) with the world-tuned
# hyper-parameters of the method, overridden by the keyword arguments; it returns the model and its history.

# %%
result = mu.unlearn(base, "npo", world=world, **UNLEARN)
unlearned = result.model
pd.DataFrame(result.training.history).tail(3)

# %% [markdown]
# ## Evaluate
# One row per model; `forget_quality` compares each model's forget Truth Ratios with gold's. Every headline
# number comes with its 95 % interval (`<metric>/low`, `<metric>/high`) and `n`.

# %%
table = mu.evaluate({"base": base, "npo": unlearned, "gold": gold}, world, **EVAL)
headline = ["cloze/forget/unique", "cloze/retain/all", "mcq_forget_acc", "mcq_general_acc", "forget_quality",
            "familiarity_prob", "collapsed"]
table[headline].round(3)

# %% [markdown]
# ## Diagnose
# Weight and activation analyses, one forward pass per model and split. A result shows itself in Jupyter: its
# figure and the head of its table.

# %%
diagnostics = mu.diagnose({"base": base, "npo": unlearned}, world, ["weight_comparison", "activation_comparison"],
                          max_samples=64)
diagnostics["activation_comparison"]

# %%
diagnostics["weight_comparison"].frame.head()

# %% [markdown]
# ## Plot
# Forget against retain cloze accuracy with their 95 % intervals, one colour per model (the toolkit's palette).

# %%
figure = go.Figure()
for name, row in table.iterrows():
    figure.add_bar(name=name, x=["forget (unique facts)", "retain (all facts)"], marker_color=color_for(name),
                   y=[row["cloze/forget/unique"], row["cloze/retain/all"]],
                   error_y={"type": "data", "symmetric": False,
                            "array": [row["cloze/forget/unique/high"] - row["cloze/forget/unique"],
                                      row["cloze/retain/all/high"] - row["cloze/retain/all"]],
                            "arrayminus": [row["cloze/forget/unique"] - row["cloze/forget/unique/low"],
                                           row["cloze/retain/all"] - row["cloze/retain/all/low"]]})
figure.update_layout(barmode="group", title="Cloze accuracy (95 % bootstrap intervals over facts)",
                     yaxis_title="accuracy")
style_figure(figure)

# %% [markdown]
# Next: `02_whp_explorer` (Who's Harry Potter's generic logits), `03_brittleness_study` (a whole study),
# `05_attacks` (does the knowledge come back?).

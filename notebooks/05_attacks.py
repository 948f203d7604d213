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
# # Attacks: forgotten, or only hidden?
#
# An unlearned model that only hides its knowledge gives it back under pressure. Every attack runs with one budget
# on the unlearned model **and on gold** (which never saw the forget target), so "it came back" is measured against
# what relearning from scratch achieves (docs/attacks.md):
#
# * **relearn**: fine-tune on k-1 folds of the forget facts, measure the held-out fold as steps go by;
# * **gcg**: greedy coordinate gradient over a token suffix (Zou et al. 2023) that makes the model say a fact.

# %%
import os

import pandas as pd
import plotly.graph_objects as go

import mechunlearn as mu
from mechunlearn.explore import compare
from mechunlearn.views import color_for, style_figure

SIZE = os.environ.get("MECHUNLEARN_NOTEBOOK_SIZE", "default")
assert SIZE in ("micro", "default"), f"MECHUNLEARN_NOTEBOOK_SIZE={SIZE!r}: use micro or default"
UNLEARN = {"micro": {"max_steps": 4, "batch_size": 8}, "default": {}}[SIZE]
RELEARN = {"micro": {"lrs": [1e-3], "eval_steps": [0, 1, 2, 4], "k_folds": 2},
           "default": {"lrs": [3e-4, 1e-3], "eval_steps": [0, 1, 2, 5, 10, 20]}}[SIZE]
GCG = {"micro": {"steps": 3, "max_facts": 4, "suffix_tokens": 4, "top_k": 16, "batch_size": 16},
       "default": {"steps": 30, "max_facts": 12}}[SIZE]
mu.notebook_mode()

# %%
world = mu.world(SIZE)
base = mu.load("base", world=world, device="cpu")
gold = mu.load("gold", world=world, device="cpu")
unlearned = mu.unlearn(base, "npo", world=world, **UNLEARN).model

# %% [markdown]
# ## Relearning curves against gold
# The result shows itself (its figure and the head of its table); `summary["curve_vs_gold"]` condenses the curves.

# %%
relearn = mu.attack(unlearned, "relearn", world=world, gold=gold, base=base, **RELEARN)
relearn

# %%
curve = relearn.tables["headline_curve"]
curve_figure = go.Figure()
for (model, category), rows in curve.groupby(["model", "category"], sort=False):
    name = "npo" if model == "model" else "gold"
    curve_figure.add_scatter(x=rows["step"], y=rows["accuracy"], mode="lines+markers", name=f"{name}: {category}",
                             line={"color": color_for(name), "dash": "dash" if name == "gold" else "solid"},
                             visible=True if category == "unique" else "legendonly")
curve_figure.update_layout(xaxis_title="relearning steps (held-out facts)", yaxis_title="cloze accuracy",
                           yaxis_range=[0, 1])
style_figure(curve_figure, title="Relearning: npo vs gold (gold dashed; click a legend entry for more)")

# %%
pd.DataFrame({category: {key: value for key, value in result.items() if not isinstance(value, dict)}
              for category, result in relearn.summary["vs_gold"].items()}).T

# %%
relearn.summary.get("curve_vs_gold")

# %% [markdown]
# ## A GCG suffix
# Per forget fact, a suffix of a few tokens optimised so the model completes the prompt with the fact's answer.
# The same budget on gold shows what a suffix alone can do for a model that never knew the fact.

# %%
gcg = mu.attack(unlearned, "gcg", world=world, gold=gold, **GCG)
gcg.frame[["model", "prompt", "answer", "suffix", "target_logprob_before", "target_logprob_after", "success"]]

# %%
mine = gcg.frame[gcg.frame["model"] == "model"]
best = mine.loc[(mine["target_logprob_after"] - mine["target_logprob_before"]).idxmax()]
print(f"suffix {best['suffix']!r} on {best['prompt']!r} (answer {best['answer']!r})")
compare({"npo": unlearned, "gold": gold, "base": base}, best["prompt"] + best["suffix"], max_new_tokens=4)

# %%
gcg.figure()

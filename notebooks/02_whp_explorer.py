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
# # Who's Harry Potter, explored
#
# WHP (Eldan & Russinovich 2023) fine-tunes the model on **generic** predictions
# `v_generic = v_base - alpha * ReLU(v_reinforced - v_base)` (`methods/whp.py`'s `generic_logits`): `v_base` is
# the base model's logits on the text with its anchored terms translated to generic ones, `v_reinforced` those
# of a model trained further on the forget texts, on the original text. Tokens the reinforced model likes more
# than the base model are pushed down, harder as alpha grows (the paper's alpha is 5, our world preset's 100).
#
# Below: the generic next-token distribution of one forget prompt as alpha turns (a slider), how familiar the
# generic targets are with the forget facts as alpha turns, and how familiar WHP-unlearned models are.

# %%
import os

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

import mechunlearn as mu
from mechunlearn.figures.whp import alpha_sweep, reinforced_model
from mechunlearn.methods.presets import preset_overrides
from mechunlearn.methods.whp import generic_logits, translate
from mechunlearn.views import color_for, style_figure

SIZE = os.environ.get("MECHUNLEARN_NOTEBOOK_SIZE", "default")
assert SIZE in ("micro", "default"), f"MECHUNLEARN_NOTEBOOK_SIZE={SIZE!r}: use micro or default"
WHP = {**preset_overrides("world", "whp"),
       **{"micro": {"max_steps": 3, "batch_size": 8, "reinforce_epochs": 1}, "default": {}}[SIZE]}
RUN_ALPHAS = {"micro": [0.0, 5.0, 100.0], "default": [0.0, 1.0, 5.0, 20.0, 100.0]}[SIZE]
EVAL = {"micro": {"max_texts": 16, "max_new_tokens": 8}, "default": {"max_texts": 200}}[SIZE]
mu.notebook_mode()

# %% [markdown]
# ## The base model and its reinforced twin
# The reinforced model is trained exactly as a whp run trains it (`WHP.train_reinforced`, same hyper-parameters).

# %%
world = mu.world(SIZE)
base = mu.load("base", world=world, device="cpu")
reinforced, _ = reinforced_model(base, WHP, world.forget_texts(), world=world)
probes = world.cloze_probes("forget")  # the first whose prompt holds an anchored term, so translating matters
probe = next((p for p in probes if translate(p.prompt, world.anchored_terms)[0] != p.prompt), probes[0])
translated, _ = translate(probe.prompt, world.anchored_terms)
print(f"prompt:     {probe.prompt!r} -> {probe.answer!r}\ntranslated: {translated!r}")

# %%
def last_logits(model, text):
    tokens = torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(tokens)[0, -1].float()


v_base, v_reinforced = last_logits(base, translated), last_logits(reinforced, probe.prompt)
answer_id = base.tokenizer(probe.answer, add_special_tokens=False)["input_ids"][0]
alphas = np.round(np.arange(0.0, 20.5, 0.5), 1)
generic = {alpha: torch.softmax(generic_logits(v_base, v_reinforced, float(alpha)), -1) for alpha in alphas}

# %% [markdown]
# ## One prompt, alpha on a slider
# The bars: the tokens in the top 6 at alpha 0, 5 or 20, and the true answer's first token (red).

# %%
shown = {answer_id}
for alpha in (0.0, 5.0, 20.0):
    shown |= set(torch.topk(generic[alpha], 6).indices.tolist())
shown = sorted(shown, key=lambda token: -float(generic[0.0][token]))
labels = [repr(base.tokenizer.decode([token])) for token in shown]
colors = [color_for("base") if token != answer_id else "#d62728" for token in shown]
slider_figure = go.Figure()
for index, alpha in enumerate(alphas):
    slider_figure.add_bar(x=labels, y=[float(generic[alpha][token]) for token in shown], marker_color=colors,
                          name=f"alpha = {alpha}", visible=index == 0)
steps = [{"method": "update", "label": f"{alpha:g}",
          "args": [{"visible": [i == index for i in range(len(alphas))]},
                   {"title": f"softmax(v_generic), alpha = {alpha:g}"}]} for index, alpha in enumerate(alphas)]
slider_figure.update_layout(sliders=[{"active": 0, "currentvalue": {"prefix": "alpha = "}, "steps": steps}],
                            title="softmax(v_generic), alpha = 0", yaxis_title="probability", showlegend=False)
slider_figure.update_yaxes(range=[0, 1])
slider_figure

# %% [markdown]
# ## Familiarity of the generic targets as alpha turns
# Over the world's first 24 forget cloze probes: the probability of the true answer under `softmax(v_generic)`
# and how often it is the top token (the sweep the study's `whp_alpha_sweep` figure draws), with the base and
# reinforced models' own values as references.

# %%
prompts = [(p.prompt, p.answer) for p in world.cloze_probes("forget")[:24]]
sweep = alpha_sweep(base, reinforced, prompts, world.anchored_terms, alphas=[0, 0.5, 1, 2, 5, 10, 20, 50, 100])
by_alpha = sweep.groupby("alpha")[["p_answer", "answer_is_top", "base_p_answer", "reinforced_p_answer"]].mean()
by_alpha.round(4)

# %%
sweep_figure = go.Figure()
sweep_figure.add_scatter(x=by_alpha.index, y=by_alpha["p_answer"], name="generic target: p(answer)",
                         mode="lines+markers", line_color=color_for("whp"))
sweep_figure.add_scatter(x=by_alpha.index, y=by_alpha["answer_is_top"], name="generic target: answer is top-1",
                         mode="lines+markers", line={"color": color_for("whp"), "dash": "dot"})
for name, column in (("base", "base_p_answer"), ("reinforced", "reinforced_p_answer")):
    sweep_figure.add_hline(y=float(by_alpha[column].iloc[0]), line_dash="dash", line_color=color_for(name),
                           annotation_text=f"{name}: p(answer)")
sweep_figure.update_xaxes(type="log", title="alpha")  # alpha 0 is left off a log axis; it is in the table
style_figure(sweep_figure, title=f"Forget facts under v_generic ({len(prompts)} prompts)")

# %% [markdown]
# ## Familiarity of WHP-unlearned models as alpha turns
# One whp run per alpha (the world preset otherwise), evaluated with base and gold: `familiarity_prob` is the
# mean probability of forget-specific answers (`mechunlearn.evals.familiarity`), with its 95 % interval
# (`gold=False`: no forget quality against gold here, it is not what this notebook asks).

# %%
models = {"base": base, "gold": mu.load("gold", world=world, device="cpu")}
for alpha in RUN_ALPHAS:
    models[f"whp alpha={alpha:g}"] = mu.unlearn(base, "whp", world=world, **{**WHP, "alpha": alpha}).model
columns = ["familiarity_prob", "familiarity_prob/low", "familiarity_prob/high", "familiarity_completion",
           "cloze/forget/unique", "cloze/retain/all"]
familiarity = mu.evaluate(models, world, gold=False, **EVAL)[columns]
familiarity.round(4)

# %%
runs = familiarity.loc[[f"whp alpha={alpha:g}" for alpha in RUN_ALPHAS]]
familiarity_figure = go.Figure()
familiarity_figure.add_scatter(
    x=[str(alpha) for alpha in RUN_ALPHAS], y=runs["familiarity_prob"], mode="lines+markers", name="whp",
    line_color=color_for("whp"), error_y={"type": "data", "symmetric": False,
                                          "array": runs["familiarity_prob/high"] - runs["familiarity_prob"],
                                          "arrayminus": runs["familiarity_prob"] - runs["familiarity_prob/low"]})
for name in ("base", "gold"):
    familiarity_figure.add_hline(y=float(familiarity.loc[name, "familiarity_prob"]), line_dash="dash",
                                 line_color=color_for(name), annotation_text=name)
familiarity_figure.update_xaxes(title="alpha", type="category")
style_figure(familiarity_figure, title="familiarity_prob of whp runs (95 % bootstrap intervals)")

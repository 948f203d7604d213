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
# # The brittleness study: reading a study's outputs
#
# `mechunlearn run STUDY.toml` (or `run_study` in Python) writes everything under one output directory
# (docs/study.md): models, evals, diagnostics, tables, the report and the figures. This notebook runs the study
# if its outputs are not there yet (steps already done are skipped), then reads them: the methods table, the
# **brittleness signature** (one row per model, one column per diagnostic summary, each next to gold's value),
# the publication figures, an interactive study-wide figure and the circuitsvis views.
#
# `MECHUNLEARN_NOTEBOOK_SIZE=micro` runs the micro study (npo only, one seed: the tests); the default is the
# default study (`make demo`'s). `MECHUNLEARN_STUDY_OUT` points at another study's outputs.

# %%
import json
import os
import tomllib
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

import mechunlearn as mu
from mechunlearn.cli.common import quiet_output
from mechunlearn.pipeline import load_study, run_study
from mechunlearn.pipeline.config import shipped_studies
from mechunlearn.report import StudyOutputs, study_tables
from mechunlearn.views.circuits import colored_tokens_view
from mechunlearn.views.study_figures import study_figure

SIZE = os.environ.get("MECHUNLEARN_NOTEBOOK_SIZE", "default")
assert SIZE in ("micro", "default"), f"MECHUNLEARN_NOTEBOOK_SIZE={SIZE!r}: use micro or default"
STUDY = {"micro": "micro", "default": "default"}[SIZE]
OUT = Path(os.environ.get("MECHUNLEARN_STUDY_OUT", f"outputs/{STUDY}"))
mu.notebook_mode()

# %% [markdown]
# ## Run the study (skipped when its outputs are complete)

# %%
manifest_path = OUT / "manifest.json"
if not manifest_path.is_file() or json.loads(manifest_path.read_text()).get("status") != "done":
    table = tomllib.loads(shipped_studies()[STUDY].read_text())  # the shipped study file, as a dict
    table["study"]["out"] = str(OUT)
    if SIZE == "micro":  # the tests: one method, one seed
        table["methods"] = {"npo": table["methods"]["npo"]}
        table["study"]["seeds"] = [0]
    with quiet_output():  # the steps' lines, without transformers' loading bars
        run_study(load_study(table), progress=False)
manifest = json.loads(manifest_path.read_text())
steps = pd.DataFrame(manifest["steps"])[["id", "kind", "status", "wall_s"]]
print(f"study {manifest['study']!r}: {len(steps)} steps, {steps['wall_s'].sum():.0f} s of work")
steps.groupby("kind", sort=False)["wall_s"].agg(["count", "sum"]).round(1)

# %% [markdown]
# ## The methods table
# Each metric the mean over seeds with its Student-t 95 % interval (docs/study.md gives the ranking rule).

# %%
tables = study_tables(OUT)
methods = pd.read_csv(OUT / "tables" / "methods" / "methods.csv")
methods[[column for column in ["model", "cloze/forget/unique", "cloze/retain/all", "mcq_forget_acc",
                               "forget_quality", "familiarity_prob", "collapsed"] if column in methods]].round(3)

# %% [markdown]
# ## The brittleness signature
# One number per dimension (magnitude, location, rank, null space, activation change, selectivity, stability,
# knowledge depth), each next to gold's (`<column>/gold`). Post-hoc unlearning is expected to be small, local,
# low-rank and selective where filtering (gold) is not (seed 003's "big picture"; definitions in docs/report.md).

# %%
signature = pd.read_csv(OUT / "tables" / "signature" / "signature.csv")
display(Markdown("**signature** (`tables/signature/signature.csv`)"))
signature.round(4)

# %%
tables["signature/signature"]  # the same table as the report shows it: value [low, high] (gold g)

# %% [markdown]
# ## Publication figures (`OUT/figures/`: PDF, SVG, PNG from the CSVs)

# %%
index = json.loads((OUT / "figures" / "index.json").read_text())
print("figures:", ", ".join(index["figures"]) if isinstance(index.get("figures"), dict) else index.get("figures"))
print("skipped (no data in this study):", index.get("skipped"))
display(Image(filename=str(OUT / "figures" / "layer_locality.png"), width=480))

# %% [markdown]
# ## An interactive study-wide figure
# All models in each panel, one colour per model, integer layers (the report's diagnostics section).

# %%
outputs = StudyOutputs.from_out(OUT)
study_figure(outputs, "weight_comparison")

# %% [markdown]
# ## Views: what the unlearned model finds harder, token by token
# The report keeps each viewed model's per-token loss change on forget texts (`report/views/<id>.tokens.csv`):
# red = harder after unlearning, blue = easier. circuitsvis renders it offline (its bundle inline).

# %%
views = sorted((OUT / "report" / "views").glob("*.tokens.csv"))
print("views:", [path.name for path in views])
unlearned_view = next(path for path in views if not path.name.startswith("gold"))
tokens = pd.read_csv(unlearned_view)
display(tokens.sort_values("change", ascending=False).head(5))
colored_tokens_view(tokens, text=0)

# %% [markdown]
# The whole report (`report/index.html`) is one self-contained HTML file: open it in a browser.

# %%
print(OUT.resolve() / "report" / "index.html")

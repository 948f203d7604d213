"""``make demo``: the embedded study, end to end on the CPU.

world -> base and gold-standard models (pretrained once, cached) -> every unlearning method (world-tuned
hyper-parameters) -> evals of each, next to base and gold -> diagnostics of base -> gold ("what genuine
ignorance looks like") and base -> each unlearned model -> a summary table (CSV, JSON, printed).

The full study pipeline with its HTML report, attacks and publication figures is a later step
(``pipeline.py``); this module is the thin sequence a newcomer runs first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["run_demo", "DEMO_METHODS", "SUMMARY_COLUMNS"]

DEMO_METHODS = ("ga_simple", "ga", "grad_diff", "dpo", "npo", "simnpo", "rmu", "cb", "lat", "cb_lat", "wt_dist",
                "wt_dist_reg", "whp")
# Diagnostics of the demo: cheap enough for a laptop; `mechunlearn diagnose` runs all of them.
DEMO_ANALYSES = ("weight_comparison", "mlp_attn_analysis", "mlp_nullspace", "activation_comparison",
                 "activation_covariance", "row_space_projection", "linear_probes", "logit_lens")
DIAGNOSED_METHODS = ("npo", "rmu", "whp")
SUMMARY_COLUMNS = ("model", "cloze/forget/unique", "cloze/forget/shared", "cloze/retain/all", "mcq_forget_acc",
                   "mcq_general_acc", "truth_ratio/forget/unique", "forget_quality", "familiarity_completion",
                   "forget_nll", "retain_nll", "collapsed", "wall_time_s")


def _row(name: str, metrics: dict, wall_time: float | None) -> dict:
    row = {"model": name, **{key: metrics.get(key) for key in SUMMARY_COLUMNS[1:-1]}}
    row["wall_time_s"] = None if wall_time is None else round(wall_time, 1)
    return row


def run_demo(out: Path = Path("outputs/demo"), size: str = "default", device: str = "auto", progress: bool = True,
             methods: Sequence[str] = DEMO_METHODS, diagnose_methods: Sequence[str] = DIAGNOSED_METHODS,
             max_samples: int = 200) -> int:
    import pandas as pd

    from mechunlearn import models
    from mechunlearn.diagnostics.study import diagnose
    from mechunlearn.evals import evaluate_model
    from mechunlearn.evals.truth_ratio import truth_ratios
    from mechunlearn.methods import create
    from mechunlearn.reference import pretrain
    from mechunlearn.unlearn import run
    from mechunlearn.world import resolve_world

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    world = resolve_world(size)
    print(f"[demo] world {size}: {json.dumps(world.stats(), default=str)}")
    directories = {}
    for which in ("base", "gold"):
        directories[which] = pretrain(world, which, progress=progress)
        summary = json.loads((directories[which] / "pretrain.json").read_text())
        print(f"[demo] {which}: {directories[which]} (pretraining took {summary['wall_time_s']} s)")
    gold = models.load(directories["gold"], device=device)
    gold_ratios = truth_ratios(gold, world.tokenizer, world.truth_ratio_items("forget"))["R"].to_numpy()
    table = []
    for which in ("base", "gold"):
        model = gold if which == "gold" else models.load(directories[which], device=device)
        pretrain_summary = json.loads((directories[which] / "pretrain.json").read_text())
        metrics = evaluate_model(model, world, gold_truth_ratios=gold_ratios)
        table.append(_row(which, metrics, pretrain_summary["wall_time_s"]))
    base_retain_nll = next(row["retain_nll"] for row in table if row["model"] == "base")
    unlearned_dirs = {}
    for name in methods:
        method = create(name, preset="world")
        began = time.perf_counter()
        run_dir = run(method, directories["base"], out / "unlearned_models", world.forget_texts(),
                      world.retain_texts(), world=world, device=device, progress=progress,
                      evaluate=lambda model: evaluate_model(model, world, gold_truth_ratios=gold_ratios,
                                                            reference_retain_nll=base_retain_nll))
        record = json.loads((run_dir / "run.json").read_text())
        unlearned_dirs[name] = run_dir / "model"
        table.append(_row(name, record["metrics"], record["wall_time_s"]))
        print(f"[demo] {name}: forget-unique cloze {record['metrics'].get('cloze/forget/unique')}, "
              f"retain cloze {record['metrics'].get('cloze/retain/all')} ({time.perf_counter() - began:.0f} s)")
    frame = pd.DataFrame(table, columns=list(SUMMARY_COLUMNS))
    frame.to_csv(out / "summary.csv", index=False)
    (out / "summary.json").write_text(frame.to_json(orient="records", indent=2))
    comparisons = [("gold", directories["gold"])] + [(name, unlearned_dirs[name]) for name in diagnose_methods
                                                      if name in unlearned_dirs]
    for other_name, other_dir in comparisons:
        diagnose(directories["base"], other_dir, out=out / "diagnostics", analyses=list(DEMO_ANALYSES),
                 world=world, max_samples=max_samples, device=device, progress=progress, base_name="base",
                 other_name=other_name)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.round(3).to_string(index=False))
    print(f"[demo] done in {time.perf_counter() - started:.0f} s; outputs in {out}/ (summary.csv, "
          f"unlearned_models/, diagnostics/)")
    return 0

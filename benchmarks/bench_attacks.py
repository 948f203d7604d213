"""Where the time of a robustness table goes: every attack on base, gold and one unlearned model, timed.

    python benchmarks/bench_attacks.py [--quick] [--unlearned DIR ...] [--out DIR] [--workers N]

Default: the default world (base and gold pretrained and cached), the attacks' default budgets, and an NPO
model unlearned with the world preset (``mechunlearn.unlearn.run``; reused when it exists). ``--quick``: the micro
world and tiny budgets (seconds). Prints, per attack and model, the wall time; the share of relearning spent
measuring curves; sequential folds vs the same folds stacked into one ``torch.func.vmap`` pass (interleaved
medians, one thread); the time to build the table; and an estimate for the full table (13 methods + base + gold)
at 1 and 2 workers. Timings on a shared machine are inflated: read the ratios. Never asserts on time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

QUICK = {
    "relearn": {"lrs": "1e-3", "eval_steps": "0,2,5", "k_folds": 3},
    "retain_finetune": {"lrs": "1e-3", "eval_steps": "0,2,5"},
    "gcg": {"steps": 3, "max_facts": 4},
    "soft_prompt": {"iterations": 5, "universal_iterations": 5, "max_facts": 4},
    "quantize": {"bits": "8,4"},
    "direction_ablation": {"max_texts": 32},
}


def fold_vectorisation(model, data, folds: int = 5, steps: int = 6, repeats: int = 3) -> tuple[float, float]:
    """Median seconds per optimiser step of ``folds`` fine-tuning runs: one after another vs stacked in one
    vmapped forward/backward (exact same math up to rounding when gradients are not clipped)."""
    from torch.func import functional_call, vmap

    from mechunlearn.attacks.base import working_copy
    from mechunlearn.attacks.data import split_folds
    from mechunlearn.batching import TokenBatch, mean_nll, tokenize

    parts = split_folds(data.forget_items(), folds)
    batches = []
    for index in range(folds):
        known = [item for fold, items in enumerate(parts) if fold != index for item in items if item.texts]
        texts = data.training_documents(known, seed=index)[:4]
        batches.append(tokenize(model.tokenizer, texts, 128))
    length = max(batch.tokens.shape[1] for batch in batches)
    pad = model.tokenizer.pad_token_id
    tokens = torch.full((folds, 4, length), pad)
    mask = torch.zeros((folds, 4, length), dtype=torch.bool)
    for index, batch in enumerate(batches):
        tokens[index, : len(batch), : batch.tokens.shape[1]] = batch.tokens
        mask[index, : len(batch), : batch.tokens.shape[1]] = batch.mask
    copies = [working_copy(model) for _ in range(folds)]
    for copy in copies:
        copy.requires_grad_(True)
    optimisers = [torch.optim.AdamW(copy.parameters(), lr=1e-4) for copy in copies]
    stacked_model = working_copy(model)
    stacked = {name: torch.stack([p.detach().clone() for _ in range(folds)]).requires_grad_(True)
               for name, p in stacked_model.named_parameters()}
    buffers = dict(stacked_model.named_buffers())
    stacked_optimiser = torch.optim.AdamW(list(stacked.values()), lr=1e-4)

    def sequential():
        for copy, optimiser, batch in zip(copies, optimisers, batches):
            mean_nll(copy(batch.tokens), batch).backward()
            optimiser.step()
            optimiser.zero_grad()

    def one(parameters, rows):
        return functional_call(stacked_model, {**parameters, **buffers}, (rows,))

    def vectorised():
        logits = vmap(one)(stacked, tokens)
        sum(mean_nll(logits[k], TokenBatch(tokens[k], mask[k])) for k in range(folds)).backward()
        stacked_optimiser.step()
        stacked_optimiser.zero_grad()

    timings = {"sequential": [], "vmap": []}
    for _ in range(repeats):
        for name, function in (("sequential", sequential), ("vmap", vectorised)):
            function()  # warm-up of this round
            started = time.perf_counter()
            for _ in range(steps):
                function()
            timings[name].append((time.perf_counter() - started) / steps)
    return statistics.median(timings["sequential"]), statistics.median(timings["vmap"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="micro world, tiny budgets")
    parser.add_argument("--unlearned", nargs="*", default=None, help="unlearned checkpoint directories")
    parser.add_argument("--out", default=None, help="where results go (default: a temporary directory)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mechunlearn.attacks import AttackData, robustness_table, run_attacks
    from mechunlearn.reference import pretrain
    from mechunlearn.world import build_world, resolve_world

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-attacks-"))
    if args.quick:
        world = build_world("micro", seed=0, out=out / "world")
        cache = out / "cache"
        paths = {which: pretrain(world, which, cache_dir=cache, progress=False) for which in ("base", "gold")}
    else:
        world = resolve_world("default")
        paths = {which: pretrain(world, which, progress=False) for which in ("base", "gold")}
    unlearned = args.unlearned
    if unlearned is None:
        from mechunlearn.methods import create
        from mechunlearn.unlearn import run

        method = create("npo", preset="world")
        unlearned = [run(method, paths["base"], out / "unlearned_models", world.forget_texts(), world.retain_texts(),
                         world=world, device="cpu", progress=False) / "model"]
    models = dict(paths)
    for directory in unlearned:
        directory = Path(directory)
        models[directory.parent.name.split("__")[0] if directory.name == "model" else directory.name] = directory
    data = AttackData.from_world(world)
    configs = QUICK if args.quick else {}
    started = time.perf_counter()
    results = run_attacks(models, data, configs=configs, out=out, workers=args.workers, device="cpu")
    total = time.perf_counter() - started
    table_started = time.perf_counter()
    robustness_table(results)
    table_seconds = time.perf_counter() - table_started

    print(f"world {world.config.size}, models {', '.join(models)}, threads {args.threads}, workers {args.workers}")
    print(f"{'attack':20s}" + "".join(f"{model_id:>12s}" for model_id in models) + f"{'mean':>10s}")
    per_model = 0.0
    for attack, per in results.items():
        seconds = [per[model_id].summary.get("wall_s", float("nan")) for model_id in models]
        per_model += statistics.mean(seconds)
        print(f"{attack:20s}" + "".join(f"{value:12.1f}" for value in seconds) + f"{statistics.mean(seconds):10.1f}")
    print(f"{'all attacks':20s}{'':{12 * len(models)}s}{per_model:10.1f}  (s per model)")
    print(f"run_attacks wall: {total:.1f} s; robustness_table: {table_seconds:.1f} s")

    from mechunlearn import models as model_io
    from mechunlearn.attacks import create_attack

    base = model_io.load(paths["base"], device="cpu")
    relearn_config = dict(configs.get("relearn", {}))
    steps = relearn_config.get("eval_steps", "0,1,2,5,10,20,50,100")
    last = max(int(step) for step in steps.split(","))
    started = time.perf_counter()
    create_attack("relearn", **{**relearn_config, "eval_steps": f"0,{last}"}).attack(base, data)
    bare = time.perf_counter() - started
    full = results["relearn"]["base"].summary["wall_s"]
    print(f"relearn on base: {full:.1f} s with curves, {bare:.1f} s measuring only steps 0 and {last}: "
          f"{max(0.0, full - bare) / full:.0%} of relearning goes into the intermediate measurements")
    sequential, vectorised = fold_vectorisation(base, data, folds=relearn_config.get("k_folds", 5))
    print(f"fold fine-tuning step, 5 folds: sequential {sequential * 1e3:.0f} ms, vmap {vectorised * 1e3:.0f} ms "
          f"(vmap / sequential = {vectorised / sequential:.2f})")
    table_estimate = table_seconds * 15 / len(models)  # rows (and paired tests) grow with the models
    estimate = 15 * per_model + table_estimate
    print(f"estimate, 13 methods + base + gold: {estimate / 60:.1f} min at 1 worker, "
          f"{(15 * per_model / 2 + table_estimate) / 60:.1f} min at 2 workers "
          "(2 workers: models side by side in processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

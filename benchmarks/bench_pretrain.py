"""Pretraining of the world's reference models: tokens/s before vs after the speed-up, wall times, repeatability.

Three parts (``--parts``, default all; ``--quick`` runs ``throughput`` alone with fewer rounds):

* ``throughput``: the same world documents, the same freshly initialised GPT-NeoX, trained side by side in
  interleaved rounds of a few optimiser steps. BEFORE is the previous pretraining step: one document per row
  (``TextBatchSource`` with length grouping, tokenized every epoch) and ``mean_nll`` over the full logits;
  AFTER is the shipped one: ``PackedDocuments`` (tokenized once, several documents per row, block-diagonal
  causal mask) and ``packed_nll`` (unembedding only at predicted positions). Reported: real (non-pad) tokens
  per second of each and the ratio, for the ``default`` and ``micro`` worlds, with 1 and 2 torch threads.
* ``wall``: base + gold pretraining of the default world with the shipped recipe (a temporary cache, nothing
  reused), wall time and tokens/s of each, then exact cloze accuracy per domain and category (95 % bootstrap
  interval over facts, n).
* ``repro``: the micro world's base model pretrained twice with 1 thread (bitwise identical?) and once with 2
  threads (max |weight difference| to the 1-thread run, cloze accuracy of each).

Wall-clock numbers on a shared machine are inflated by other work (the script prints the load average); the
ratios of interleaved rounds are the fair comparison. Nothing is asserted on time; exit 0 unless it crashes.

    python benchmarks/bench_pretrain.py [--quick] [--parts throughput,wall,repro] [--threads 1,2] [--wall-threads N]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from mechunlearn.batching import TextBatchSource, logits_of, mean_nll
from mechunlearn.evals.cloze import cloze_table
from mechunlearn.reference import RECIPES, new_world_model, packed_nll, pretrain, train_world_model
from mechunlearn.stats import bootstrap_interval
from mechunlearn.world import build_world
from mechunlearn.world.packing import PackedDocuments


def before_step(model, batch):
    """The pretraining step before packing (mechunlearn.reference of the previous release)."""
    return mean_nll(logits_of(model(batch.tokens)), batch)


def after_step(model, batch):
    return packed_nll(model, batch)


def train_steps(model, optimizer, step, batches) -> tuple[float, int]:
    """(seconds, real tokens) for forward + backward + clip + AdamW over ``batches`` (data preparation included)."""
    started, tokens = time.perf_counter(), 0
    for batch in batches:
        loss = step(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch.mask.sum())
    return time.perf_counter() - started, tokens


def throughput(size: str, threads: int, rounds: int, steps_per_round: int) -> dict:
    torch.set_num_threads(threads)
    world = build_world(size, seed=0)
    recipe = RECIPES[size]
    documents = world.training_documents()
    torch.manual_seed(0)
    models = {"before": new_world_model(world, recipe.shape)}
    models["after"] = copy.deepcopy(models["before"])
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    batch_size, length = recipe.train.batch_size, recipe.train.max_length
    sources = {
        "before": TextBatchSource(world.tokenizer, [d.text for d in documents], batch_size, length, seed=0,
                                  group_by_length=True),
        "after": PackedDocuments(world.tokenizer, documents, batch_size, length, seed=0),
    }
    steps = {"before": before_step, "after": after_step}
    iterators = {name: iter(sources[name].epoch(0)) for name in models}
    epochs = {name: 0 for name in models}

    def next_batches(name: str) -> list:
        batches = []
        while len(batches) < steps_per_round:
            try:
                batches.append(next(iterators[name]))
            except StopIteration:
                epochs[name] += 1
                iterators[name] = iter(sources[name].epoch(epochs[name]))
        return batches

    rates: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(rounds + 1):  # round 0 warms up (allocator, AdamW state, kernels)
        order = ["before", "after"] if round_index % 2 == 0 else ["after", "before"]
        for name in order:
            # data preparation is part of each path's cost: BEFORE tokenizes every batch of every epoch
            prepared = time.perf_counter()
            batches = next_batches(name)
            preparation = time.perf_counter() - prepared
            seconds, tokens = train_steps(models[name], optimizers[name], steps[name], batches)
            if round_index:
                rates[name].append(tokens / (seconds + preparation))
    before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
    return {"size": size, "threads": threads, "before_tok_s": before, "after_tok_s": after, "ratio": after / before,
            "rounds": rounds}


def accuracy_rows(world, directory) -> list[dict]:
    from mechunlearn import models

    model = models.load(directory, device="cpu")
    table = cloze_table(model, model.tokenizer, world.cloze_probes())
    rows = []
    for (domain, category), group in table.groupby(["domain", "category"]):
        interval = bootstrap_interval(group["correct"].astype(float).to_numpy())
        rows.append({"domain": domain, "category": category, "accuracy": interval.mean, "low": interval.low,
                     "high": interval.high, "n": interval.n})
    return rows


def wall(size: str = "default") -> dict:
    world = build_world(size, seed=0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as cache:
        for which in ("base", "gold"):
            directory = pretrain(world, which, cache_dir=cache, progress=False)
            summary = json.loads((directory / "pretrain.json").read_text())
            results[which] = {"wall_time_s": summary["wall_time_s"], "tokens_per_s": summary["tokens_per_s"],
                              "tokens_per_epoch": summary["tokens_per_epoch"], "steps": summary["steps"],
                              "accuracy": accuracy_rows(world, directory)}
    return results


def repro() -> dict:
    world = build_world("micro", seed=0)
    recipe = dataclasses.replace(RECIPES["micro"], train=dataclasses.replace(RECIPES["micro"].train, progress=False))
    documents = world.training_documents()
    runs = {}
    for label, threads in (("1 thread", 1), ("1 thread again", 1), ("2 threads", 2)):
        torch.set_num_threads(threads)
        model, result = train_world_model(world, recipe, documents, description=label)
        runs[label] = {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                       "loss": result.history[-1]["loss"], "wall_time_s": result.wall_time_s, "model": model}
    reference_state = runs["1 thread"]["state"]
    report, reference_correct = {}, None
    for label, run in runs.items():
        differences = [(run["state"][k] - v).abs().max().item() for k, v in reference_state.items()]
        scale = max(v.abs().max().item() for v in reference_state.values())
        identical = all(torch.equal(run["state"][k], v) for k, v in reference_state.items())
        model = run["model"].eval()
        table = cloze_table(model, world.tokenizer, world.cloze_probes())
        correct = table["correct"].to_numpy()
        reference_correct = correct if reference_correct is None else reference_correct
        accuracy = table.groupby(["domain", "category"])["correct"].mean().round(3)
        report[label] = {"bitwise_identical_to_1_thread": identical, "max_abs_weight_difference": max(differences),
                         "largest_weight": scale, "final_loss": run["loss"],
                         "cloze_accuracy": {f"{d}/{c}": v for (d, c), v in accuracy.items()},
                         "facts_answered_differently": int((correct != reference_correct).sum()),
                         "n_facts": len(correct), "wall_time_s": round(run["wall_time_s"], 1)}
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="throughput only, fewer rounds")
    parser.add_argument("--parts", default=None, help="comma-separated: throughput, wall, repro")
    parser.add_argument("--threads", default="1,2", help="thread counts for the throughput part")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 8, quick 3)")
    parser.add_argument("--wall-threads", type=int, default=None, help="torch threads for the wall part "
                        "(default: torch's; 1 keeps a busy machine's numbers sane)")
    args = parser.parse_args(argv)
    parts = (args.parts or ("throughput" if args.quick else "throughput,wall,repro")).split(",")
    rounds = args.rounds or (3 if args.quick else 8)
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    print(f"bench_pretrain: torch {torch.__version__}, {cores} cores, load average {os.getloadavg()[0]:.1f} at start")

    if "throughput" in parts:
        print("\n== throughput: real tokens/s of a pretraining step, interleaved rounds (median)")
        print(f"{'world':8s} {'threads':>7s} {'before tok/s':>13s} {'after tok/s':>12s} {'after/before':>13s}")
        for size in ("default", "micro"):
            for threads in [int(t) for t in args.threads.split(",")]:
                row = throughput(size, threads, rounds, steps_per_round=4 if size == "default" else 8)
                print(f"{size:8s} {threads:7d} {row['before_tok_s']:13.0f} {row['after_tok_s']:12.0f} "
                      f"{row['ratio']:13.2f}", flush=True)
        torch.set_num_threads(cores)

    if "wall" in parts:
        if args.wall_threads:
            torch.set_num_threads(args.wall_threads)
        print(f"\n== wall: default world, base + gold with the shipped recipe, {torch.get_num_threads()} threads")
        results = wall()
        for which, result in results.items():
            print(f"{which}: {result['wall_time_s']:.1f} s, {result['tokens_per_s']} tok/s, "
                  f"{result['tokens_per_epoch']} tokens/epoch, {result['steps']} steps")
            for row in result["accuracy"]:
                print(f"  {row['domain']:6s} {row['category']:8s} {row['accuracy']:.3f} "
                      f"[{row['low']:.3f}, {row['high']:.3f}] n={row['n']}")
        total = sum(result["wall_time_s"] for result in results.values())
        print(f"base + gold: {total:.1f} s ({total / 60:.1f} min)")
        print("JSON " + json.dumps(results))

    if "repro" in parts:
        print("\n== repro: micro base pretrained with 1 thread twice and with 2 threads")
        for label, row in repro().items():
            print(f"{label:15s} identical to the 1-thread run: {row['bitwise_identical_to_1_thread']!s:5s} "
                  f"max |dw| {row['max_abs_weight_difference']:.2e} (largest |w| {row['largest_weight']:.2f})  "
                  f"final loss {row['final_loss']:.5f}  facts answered differently "
                  f"{row['facts_answered_differently']}/{row['n_facts']}  ({row['wall_time_s']} s)\n"
                  f"{'':15s} cloze {row['cloze_accuracy']}", flush=True)

    load = os.getloadavg()[0]
    print(f"\nload average {load:.1f} on {cores} cores at the end; {time.perf_counter() - started:.0f} s in all")
    if load > cores + 1:
        print("note: the machine was busy with other work; absolute times are inflated, ratios are noisy")
    return 0


if __name__ == "__main__":
    sys.exit(main())

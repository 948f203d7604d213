"""One full training step: HF GPTNeoXForCausalLM vs plain HookedTransformer vs ``mechunlearn.fast.accelerate``.

A 4-layer GPT-NeoX (d_model 128, 4 heads, d_mlp 512, vocab 2048, rotary_pct 0.25) with random weights, the same
weights in all three models; a batch of 32 x 128 tokens; one step = forward, ``mean_nll``, backward, AdamW step,
zero_grad. The three models are timed interleaved (the order rotates every round) for several rounds and the
medians are reported side by side, with the ratios hooked/HF and accelerated/HF.

Case ``resid_post hooks`` attaches one forward hook per layer at ``blocks.{l}.hook_resid_post`` that keeps the
activation (as unlearning losses on the residual stream do); HF gets the same hook on each decoder layer.

Timings are wall clock on a shared machine: when the load average exceeds the core count the numbers are noisy
and the script says so. Nothing is asserted on time; it always exits 0 unless something crashes.

    python benchmarks/bench_train_step.py [--quick] [--rounds N] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from mechunlearn import models
from mechunlearn.batching import TokenBatch, logits_of, mean_nll
from mechunlearn.fast import accelerate, is_accelerated

N_LAYERS = 4
MODEL = dict(vocab_size=2048, hidden_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=4,
             intermediate_size=512, max_position_embeddings=128, rotary_pct=0.25)
BATCH, SEQ = 32, 128
NAMES = ("HF", "hooked", "accelerated")


def build():
    torch.manual_seed(0)
    config = GPTNeoXConfig(**MODEL)
    config._attn_implementation = "sdpa"
    hf = GPTNeoXForCausalLM(config)
    hf.config._attn_implementation = "sdpa"
    hooked = models.from_hf(hf, device="cpu", dtype="fp32", accelerated=False)
    fast = accelerate(models.from_hf(hf, device="cpu", dtype="fp32", accelerated=False))
    assert is_accelerated(fast) and not is_accelerated(hooked)
    tokens = torch.randint(0, MODEL["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    return {"HF": hf, "hooked": hooked, "accelerated": fast}, TokenBatch(tokens, torch.ones_like(tokens, dtype=torch.bool))


def make_step(model, batch):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> tuple[float, float]:
        """(wall-clock seconds, process CPU seconds) of one step."""
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = mean_nll(logits_of(model(batch.tokens)), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, time.process_time() - start_cpu

    return step


def attach_resid_post_hooks(all_models, store: dict):
    """One activation-keeping hook per layer; returns a function that removes them all."""
    removers = []
    for name in ("hooked", "accelerated"):
        model = all_models[name]

        def keep(activation, hook, _name=name):
            store[(_name, hook.name)] = activation

        for layer in range(N_LAYERS):
            model.add_hook(f"blocks.{layer}.hook_resid_post", keep)
        removers.append(model.reset_hooks)
    for layer, module in enumerate(all_models["HF"].gpt_neox.layers):
        def keep_hf(module, inputs, output, _layer=layer):
            store[("HF", _layer)] = output[0] if isinstance(output, tuple) else output

        removers.append(module.register_forward_hook(keep_hf).remove)
    return lambda: [remove() for remove in removers]


def time_case(all_models, batch, rounds: int, warmup: int, deadline: float) -> dict[str, list[tuple[float, float]]]:
    """Median-ready step times; stops early (after at least one round) once ``deadline`` has passed."""
    steps = {name: make_step(all_models[name], batch) for name in NAMES}
    for _ in range(warmup):  # allocator, AdamW state, SDPA kernels
        for step in steps.values():
            step()
    times = {name: [] for name in NAMES}
    for round_index in range(rounds):
        order = NAMES[round_index % 3:] + NAMES[:round_index % 3]
        for name in order:
            times[name].append(steps[name]())
        if time.perf_counter() > deadline:
            break
    return times


def check_same_function(all_models, batch) -> float:
    with torch.no_grad():
        logits = [logits_of(all_models[name](batch.tokens[:4])) for name in NAMES]
    return max((logits[0] - other).abs().max().item() for other in logits[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about 20 s)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 12, quick 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] > cores + 1  # a just-finished run of our own adds about 1
    if args.threads:
        torch.set_num_threads(args.threads)
    elif busy and torch.get_num_threads() > 1:
        # Oversubscribed cores make OpenMP barriers wait for descheduled threads: steps get 10-40x slower and
        # the ratios meaningless. One thread per model keeps the comparison fair and the run bounded.
        torch.set_num_threads(1)
    rounds = args.rounds or (4 if args.quick else 12)
    warmup = 1 if args.quick else 2
    budget_s = 25 if args.quick else 75  # timing budget, so a run stays under 2 minutes even when busy

    started = time.perf_counter()
    all_models, batch = build()
    print(f"bench_train_step: GPT-NeoX {N_LAYERS} layers, d_model {MODEL['hidden_size']}, "
          f"{MODEL['num_attention_heads']} heads, d_mlp {MODEL['intermediate_size']}, vocab {MODEL['vocab_size']}, "
          f"batch {BATCH}x{SEQ}, fp32 CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{cores} cores")
    if busy and not args.threads:
        print(f"note: load average {os.getloadavg()[0]:.1f} > {cores + 1} at start: timing with 1 thread")
    print(f"max |logit difference| vs HF at start: {check_same_function(all_models, batch):.2e}")
    load_before = os.getloadavg()[0]

    results = {}
    store: dict = {}
    cases = ("no hooks", f"resid_post hooks x{N_LAYERS}")
    for index, case in enumerate(cases):
        deadline = started + budget_s * (index + 1) / len(cases)
        remove = attach_resid_post_hooks(all_models, store) if index == 1 else (lambda: None)
        try:
            results[case] = time_case(all_models, batch, rounds, warmup, deadline)
        finally:
            remove()
            store.clear()
    load_after = os.getloadavg()[0]

    print()
    print(f"{'case':22s} {'rounds':>6s} {'HF ms':>9s} {'hooked ms':>10s} {'accel. ms':>10s} "
          f"{'hooked/HF':>10s} {'accel./HF':>10s}   {'CPU-time ratios':>15s}")
    for case, times in results.items():
        wall = {name: statistics.median(t[0] for t in values) for name, values in times.items()}
        cpu = {name: statistics.median(t[1] for t in values) for name, values in times.items()}
        print(f"{case:22s} {len(times['HF']):6d} {wall['HF'] * 1e3:9.1f} {wall['hooked'] * 1e3:10.1f} "
              f"{wall['accelerated'] * 1e3:10.1f} {wall['hooked'] / wall['HF']:10.2f} "
              f"{wall['accelerated'] / wall['HF']:10.2f}   {cpu['hooked'] / cpu['HF']:7.2f} "
              f"{cpu['accelerated'] / cpu['HF']:7.2f}")
    print(f"\nwall-clock medians of interleaved rounds (CPU-time ratios: hooked/HF, accelerated/HF, from process "
          f"CPU time, less sensitive to other load); load average {load_before:.1f} -> {load_after:.1f} on "
          f"{cores} cores; {time.perf_counter() - started:.0f} s in all")
    if max(load_before, load_after) > cores + 1:
        print("note: the machine was busy with other work while timing; the ratios are noisy (rerun when idle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

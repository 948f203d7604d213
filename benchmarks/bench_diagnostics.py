"""Benchmark: the fused diagnostics runner against one pass per analysis, and its memory as the data grows.

    python benchmarks/bench_diagnostics.py           # ~2-3.5 min on a busy 2-core CPU (--threads 1)
    python benchmarks/bench_diagnostics.py --quick   # fewer texts, about 1-2.5 min
    python benchmarks/bench_diagnostics.py --part a --d-model 256 --threads 1   # a wider model, (a) only

(a) Every activation analysis in the registry that builds with default options (the five of
    docs/diagnostics/activations.md, plus linear_probes and sae_features when they are present) run together
    in ONE fused pass per (model, split), against running each on its own (one pass per analysis). Forward
    passes are counted with a hook on ``hook_embed``; wall time and the ratio are printed. The Lipschitz
    analysis runs passes of its own (perturbed inputs) in both setups (here with max_texts=32, n_samples=4),
    so the ratio is also shown without it. On a model this small the analyses' own fixed costs (the
    cross-validated probes of activation_separation and linear_probes) weigh as much as the forward passes,
    so the wall-time ratio stays below the pass ratio; it grows with the model (``--d-model``).
(b) Peak resident memory of the fused run on N and 10 N texts per split, each in a fresh subprocess so the
    peaks do not mix; the kernel's peak mark is reset (``/proc/self/clear_refs``) after set-up, so the peak is
    the run's own (``ru_maxrss`` of the whole process where that is not possible). Measured for the five
    streaming analyses and for every available analysis. Goal: growth <= 10 %.

Prints numbers only; it never asserts on time. Model: random GPT-NeoX (4 layers, d_model 128) and synthetic texts
with a small BPE tokenizer (tests/conftest.py's ``make_tokenizer``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_ANALYSES = ["activation_comparison", "activation_separation", "activation_covariance", "row_space_projection"]
OPTIONAL_ANALYSES = ["linear_probes", "sae_features"]
WORDS = ("the a of in at to wizard wand silver tower river mill bread market horse grey night farmer wheat old "
         "young keeps sells grows rides trained glows near every day mage city north south king queen").split()


def _conftest():
    spec = importlib.util.spec_from_file_location("bench_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(count)]


MODEL_SIZE = {"d_model": 128, "n_layers": 4}  # --d-model / --layers change it (subprocesses get the same)


def build_pair():
    """A random base and a slightly perturbed 'other' model (default 4 layers, d_model 128), same tokenizer."""
    from mechunlearn import models

    conftest = _conftest()
    tokenizer = conftest.make_tokenizer(synthetic_texts(200, seed=99), vocab_size=400)
    d_model = MODEL_SIZE["d_model"]
    hf = conftest.make_neox(vocab_size=len(tokenizer), hidden_size=d_model, layers=MODEL_SIZE["n_layers"], heads=4,
                            intermediate=4 * d_model, seed=0)
    base = models.from_hf(hf, tokenizer, device="cpu", dtype="fp32")
    with torch.no_grad():
        for parameter in hf.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return {"base": base, "other": models.from_hf(hf, tokenizer, device="cpu", dtype="fp32")}


def available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The names whose analysis imports and builds with default options; the others with the reason."""
    from mechunlearn.diagnostics import ActivationAnalysis, get_analysis

    usable, skipped = [], {}
    for name in names:
        try:
            analysis = get_analysis(name)()
        except Exception as error:  # not written yet, or needs options (an SAE): say so and go on
            skipped[name] = f"{type(error).__name__}: {str(error)[:80]}"
            continue
        if isinstance(analysis, ActivationAnalysis):
            usable.append(name)
        else:
            skipped[name] = "not an activation analysis"
    return usable, skipped


# Lipschitz runs 2 x (1 + n_samples) passes of its own per batch of its subset, shared or not: kept small here so
# the comparison measures the runner (its defaults are max_texts=64, n_samples=8).
OPTIONS = {"lipschitzness": {"max_texts": 32, "n_samples": 4}}


def timed_run(names: list[str], pair, splits, batch_size: int, max_length: int) -> tuple[float, int]:
    """(seconds, forward passes counted on hook_embed) of one fused run of ``names``."""
    from mechunlearn.diagnostics import build_analyses, run_activation_analyses

    passes = [0]
    handles = [model.hook_embed.register_forward_hook(lambda *args: passes.__setitem__(0, passes[0] + 1))
               for model in pair.values()]
    try:
        start = time.perf_counter()
        run_activation_analyses(build_analyses(names, OPTIONS), pair, splits, batch_size=batch_size,
                                max_length=max_length, max_samples=None, progress=False)
        return time.perf_counter() - start, passes[0]
    finally:
        for handle in handles:
            handle.remove()


def fused_versus_separate(texts_per_split: int, batch_size: int, max_length: int = 64) -> None:
    pair = build_pair()
    splits = {"forget": synthetic_texts(texts_per_split, 1), "retain": synthetic_texts(texts_per_split, 2)}
    names, skipped = available(SHARED_ANALYSES + ["lipschitzness"] + OPTIONAL_ANALYSES)
    print(f"(a) fused vs separate: {len(names)} analyses on {texts_per_split} texts per split, batch {batch_size}, "
          f"max_length {max_length}; options {OPTIONS}")
    print(f"    analyses: {', '.join(names)}")
    for name, reason in skipped.items():
        print(f"    not included: {name} ({reason})")
    timed_run(names, pair, {k: v[:batch_size] for k, v in splits.items()}, batch_size, max_length)  # warm-up
    alone = {name: timed_run([name], pair, splits, batch_size, max_length) for name in names}
    fused_seconds, fused_passes = timed_run(names, pair, splits, batch_size, max_length)
    print(f"    {'analysis':<24}{'alone s':>10}{'passes':>9}")
    for name, (seconds, passes) in alone.items():
        print(f"    {name:<24}{seconds:>10.2f}{passes:>9d}")
    separate_seconds = sum(seconds for seconds, _ in alone.values())
    separate_passes = sum(passes for _, passes in alone.values())
    print(f"    separate total: {separate_seconds:.2f} s, {separate_passes} passes | fused: {fused_seconds:.2f} s, "
          f"{fused_passes} passes | speed-up x{separate_seconds / fused_seconds:.2f}, "
          f"passes x{separate_passes / fused_passes:.2f}")
    shared = [name for name in names if name != "lipschitzness"]
    shared_seconds, shared_passes = timed_run(shared, pair, splits, batch_size, max_length)
    shared_alone = sum(alone[name][0] for name in shared)
    print(f"    without lipschitzness (its own perturbed passes cannot be shared): {len(shared)} analyses, "
          f"separate {shared_alone:.2f} s vs fused {shared_seconds:.2f} s -> x{shared_alone / shared_seconds:.2f}; "
          f"passes {sum(alone[n][1] for n in shared)} vs {shared_passes}")


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5), so the peak seen is the run's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


MEMORY_MAX_LENGTH = 16  # the memory question is about the number of texts, not their length: keep passes cheap


def memory_child(texts_per_split: int, batch_size: int, names: list[str]) -> None:
    """Run in a fresh process: print JSON with the resident memory before the fused run and its peak during it."""
    pair = build_pair()
    splits = {"forget": synthetic_texts(texts_per_split, 1), "retain": synthetic_texts(texts_per_split, 2)}
    warm_up = {split: texts[:batch_size] for split, texts in splits.items()}
    timed_run(names, pair, warm_up, batch_size, MEMORY_MAX_LENGTH)
    reset = _reset_peak()
    before = _status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, passes = timed_run(names, pair, splits, batch_size, MEMORY_MAX_LENGTH)
    peak = (_status_kb("VmHWM") if reset else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"texts": texts_per_split, "before_kb": before, "peak_kb": peak, "peak_is_run_only": reset,
                      "seconds": seconds, "passes": passes}))


def memory_growth(small: int, batch_size: int, threads: int | None) -> None:
    everything, _ = available(SHARED_ANALYSES + ["lipschitzness"] + OPTIONAL_ANALYSES)
    streaming = [name for name in everything if name not in OPTIONAL_ANALYSES]
    print(f"(b) peak memory of a fused run, {small} vs {10 * small} texts per split (each in its own subprocess; "
          f"batch {batch_size}, max_length {MEMORY_MAX_LENGTH})")
    sets = {"the five streaming analyses": streaming}
    if everything != streaming:
        sets["all available (" + ", ".join(everything) + ")"] = everything
    for label, names in sets.items():
        print(f"    {label}:")
        peaks = {}
        for count in (small, 10 * small):
            command = [sys.executable, __file__, "--memory-child", str(count), "--batch-size", str(batch_size),
                       "--analyses", ",".join(names), "--d-model", str(MODEL_SIZE["d_model"]),
                       "--layers", str(MODEL_SIZE["n_layers"]), *(["--threads", str(threads)] if threads else [])]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            peaks[count] = record = json.loads(output.strip().splitlines()[-1])
            kind = "peak RSS during the run" if record["peak_is_run_only"] else "peak RSS of the process"
            print(f"      {count:>6} texts: {kind} {record['peak_kb'] / 1024:7.1f} MiB "
                  f"({(record['peak_kb'] - record['before_kb']) / 1024:+.1f} MiB over the "
                  f"{record['before_kb'] / 1024:.1f} MiB held before it); {record['seconds']:.1f} s, "
                  f"{record['passes']} passes")
        growth = peaks[10 * small]["peak_kb"] / peaks[small]["peak_kb"] - 1
        print(f"      peak growth for 10x the texts: {100 * growth:+.1f} % (goal <= 10 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer texts (a smoke run)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--texts", type=int, default=None, help="texts per split for (a) (default 512; quick 128)")
    parser.add_argument("--memory-texts", type=int, default=None,
                        help="N for (b): N vs 10 N texts per split (default 500; quick 100)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--d-model", type=int, default=128, help="width of the random model (default 128)")
    parser.add_argument("--layers", type=int, default=4, help="layers of the random model (default 4)")
    parser.add_argument("--part", choices=["a", "b", "both"], default="both", help="which measurement to run")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--analyses", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    MODEL_SIZE.update(d_model=args.d_model, n_layers=args.layers)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.batch_size, args.analyses.split(","))
        return
    started = time.perf_counter()
    print(f"random GPT-NeoX: {args.layers} layers, d_model {args.d_model}; torch threads {torch.get_num_threads()}")
    if args.part in ("a", "both"):
        fused_versus_separate(args.texts or (128 if args.quick else 512), args.batch_size)
    if args.part in ("b", "both"):
        memory_growth(args.memory_texts or (100 if args.quick else 500), 64, args.threads)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

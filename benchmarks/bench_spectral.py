"""Fast spectral norm (randomized block Lanczos) vs full SVD on Pythia-160M-shaped weight matrices.

    python benchmarks/bench_spectral.py            # 12 layers x {QKV, O, W_in, W_out} x 2 spectra (< 1 min)
    python benchmarks/bench_spectral.py --quick    # 2 layers (seconds)
    python benchmarks/bench_spectral.py --quick --d-model 2048 --threads 1 --cpu-time

Matrices are in the orientation the weight analyses use (HF ``[out, in]``): QKV 2304x768, O 768x768,
W_in 3072x768, W_out 768x3072 (``--d-model`` scales them). Two spectra: pure Gaussian (a near-flat top of the
spectrum: the worst case for any Krylov method) and low-rank-plus-noise (a decaying top, like trained weights
and their updates). Exact = ``torch.linalg.svdvals`` on the tall orientation (what
``spectral_norm(exact=True)`` runs; the wide orientation, timed with ``--wide-exact``, is several times
slower). Timings are interleaved matrix by matrix so load on a shared machine hits both sides alike;
``--threads 1 --cpu-time`` gives the steadiest numbers there. Prints ratios; never asserts on time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mechunlearn.diagnostics.linalg import spectral_norm



def pythia_shapes(d_model: int) -> dict[str, tuple[int, int]]:
    """HF-oriented [out, in] shapes of one GPT-NeoX block (d_mlp = 4 d_model)."""
    return {"QKV": (3 * d_model, d_model), "O": (d_model, d_model), "W_in": (4 * d_model, d_model),
            "W_out": (d_model, 4 * d_model)}


def gaussian(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) / shape[0] ** 0.5


def low_rank_plus_noise(shape: tuple[int, int], generator: torch.Generator, rank: int = 8,
                        noise: float = 0.05) -> torch.Tensor:
    rows, cols = shape
    left = torch.linalg.qr(torch.randn(rows, rank, generator=generator))[0]
    right = torch.linalg.qr(torch.randn(cols, rank, generator=generator))[0]
    strengths = torch.linspace(3.0, 1.0, rank)
    return (left * strengths) @ right.T + noise * gaussian(shape, generator)


CPU_TIME = False  # --cpu-time: process CPU seconds instead of wall-clock (steadier on a loaded shared machine)


def timed(function, *args, **kwargs) -> tuple[float, float]:
    clock = time.process_time if CPU_TIME else time.perf_counter
    start = clock()
    value = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return float(value), clock() - start


def lowrank_top(matrix: torch.Tensor, q: int, niter: int) -> float:
    return float(torch.svd_lowrank(matrix, q=q, niter=niter)[1][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 layers instead of 12")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--d-model", type=int, default=768, help="768 = Pythia-160M; 4096 = Pythia-6.9B")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-iterations", type=int, default=12)
    parser.add_argument("--tol", type=float, default=3e-3)
    parser.add_argument("--wide-exact", action="store_true", help="also time svdvals on the wide orientation")
    parser.add_argument("--cpu-time", action="store_true", help="time process CPU seconds, not wall-clock")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    global CPU_TIME
    CPU_TIME = args.cpu_time
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = args.layers or (2 if args.quick else 12)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    fast_options = dict(block_size=args.block_size, max_iterations=args.max_iterations, tol=args.tol)
    print(f"device={device} threads={torch.get_num_threads()} layers={layers} d_model={args.d_model} "
          f"fast={fast_options} "
          f"clock={'process CPU time' if CPU_TIME else 'wall-clock'}")
    warm = gaussian((768, 768), generator).to(device)
    spectral_norm(warm, exact=True), spectral_norm(warm, **fast_options), lowrank_top(warm, 16, 8)

    header = (f"{'spectrum':<16}{'shape':<8}{'n':>4}{'exact s':>9}{'fast s':>8}{'speedup':>8}{'max err':>10}"
              f"{'mean err':>10}{'lowrank s':>10}{'lr err':>9}" + ("  wide s" if args.wide_exact else ""))
    print(header)
    overall: dict[str, list[float]] = {"exact": [], "fast": [], "error": [], "lowrank": [], "lowrank_error": []}
    for spectrum, make in (("gaussian", gaussian), ("lowrank+noise", low_rank_plus_noise)):
        for shape_name, shape in pythia_shapes(args.d_model).items():
            exact_time = fast_time = lowrank_time = wide_time = 0.0
            errors, lowrank_errors = [], []
            for _ in range(layers):
                matrix = make(shape, generator).to(device)
                exact, seconds = timed(spectral_norm, matrix, exact=True)
                exact_time += seconds
                fast, seconds = timed(spectral_norm, matrix, **fast_options)
                fast_time += seconds
                errors.append(abs(fast - exact) / exact)
                # torch.svd_lowrank at a similar cost (q=16, 4 power iterations), for comparison only.
                approximate, seconds = timed(lowrank_top, matrix, 16, 4)
                lowrank_time += seconds
                lowrank_errors.append(abs(approximate - exact) / exact)
                if args.wide_exact:
                    wide = matrix if shape[0] < shape[1] else matrix.T
                    wide_time += timed(lambda m: torch.linalg.svdvals(m)[0], wide)[1]
            overall["exact"].append(exact_time)
            overall["fast"].append(fast_time)
            overall["error"].extend(errors)
            overall["lowrank"].append(lowrank_time)
            overall["lowrank_error"].extend(lowrank_errors)
            print(f"{spectrum:<16}{shape_name:<8}{layers:>4}{exact_time:>9.2f}{fast_time:>8.2f}"
                  f"{exact_time / fast_time:>8.1f}{max(errors):>10.1e}{statistics.mean(errors):>10.1e}"
                  f"{lowrank_time:>10.2f}{max(lowrank_errors):>9.1e}"
                  + (f"{wide_time:>8.2f}" if args.wide_exact else ""))
    exact_total, fast_total = sum(overall["exact"]), sum(overall["fast"])
    print(f"TOTAL exact {exact_total:.2f}s fast {fast_total:.2f}s speedup {exact_total / fast_total:.1f}x "
          f"max relative error {max(overall['error']):.2e} (goal: >= 10x at <= 1e-2); "
          f"svd_lowrank(q=16,niter=4): {exact_total / sum(overall['lowrank']):.1f}x, "
          f"max error {max(overall['lowrank_error']):.2e}")


if __name__ == "__main__":
    main()

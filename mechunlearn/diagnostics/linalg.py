"""Numeric helpers shared by the weight-space analyses: Frobenius and spectral norm (fast and exact), stable /
empirical / effective rank, top-k energy, principal angles and Grassmann distance, column-space / null-space split.

Conventions (documented once here, used by every weight analysis):

* A matrix is oriented as a linear map ``y = W x`` (Hugging Face ``nn.Linear.weight``: ``[out, in]``). Its
  *column space* lives in the output space, its *row space* in the input space.
* Frobenius norms accumulate in float64 (the squares of float32 entries summed in float64): a float32 sum over
  a 768 x 3072 matrix is off by ~4e-5 relative (measured), the float64 sum by ~4e-12.
* Ranks of the zero matrix are defined, not undefined ratios: spectral norm 0, stable rank 0, empirical rank 0 and
  a top-k energy ratio of 1 (its rank, 0, is within any k). Ratios of two quantities follow
  ``mechunlearn.numeric.ratio`` (0/0 = NaN "undefined", x/0 = inf).
* Exact singular values come from LAPACK (``torch.linalg.svdvals`` / ``svd``) on the *tall* orientation of the
  matrix (``W`` or ``W.T``; the singular values are the same), which is several times faster than the wide one.
* The fast spectral norm is a randomized block Lanczos (block Krylov) method with full re-orthogonalisation
  and a Rayleigh-Ritz step (Musco & Musco, "Randomized block Krylov methods", NeurIPS 2015). We write it by
  hand because ``torch.svd_lowrank`` is plain subspace iteration: on Gaussian-like spectra (a near-flat top)
  it needs several times more matrix products for the same accuracy (measured in benchmarks/bench_spectral.py).
  The estimate is a lower bound of sigma_1 and stops early once it has converged to ``tol``. Measured
  (benchmarks/bench_spectral.py, one CPU thread, Pythia-160M shapes): ~10x faster than the tall-oriented full
  SVD overall at <= 0.5% error (7-9x on pure Gaussian matrices, 13-18x on low-rank-plus-noise ones); 12-40x
  at d_model 2048.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["as_matrix", "frobenius_norm", "singular_values", "svd", "spectral_norm", "spectral_norm_exact",
           "stable_rank", "stable_rank_from_norms", "empirical_rank", "effective_rank", "entropy_rank",
           "top_k_energy_ratio", "numerical_rank", "principal_angles", "grassmann_distance", "subspace_alignment",
           "column_space_split", "row_space_split"]


def as_matrix(matrix: Tensor, dtype: torch.dtype = torch.float32) -> Float[Tensor, "rows cols"]:
    """``matrix`` as a 2-D floating tensor of ``dtype`` (bf16/fp16 weights are upcast: their spectra need it)."""
    if not isinstance(matrix, Tensor):
        matrix = torch.as_tensor(matrix)
    if matrix.dim() != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {tuple(matrix.shape)}; flatten heads first "
                         "(e.g. W_Q [n_heads, d_model, d_head] -> [n_heads * d_head, d_model])")
    return matrix.detach().to(dtype)


def frobenius_norm(matrix: Tensor) -> float:
    """sqrt(sum of squares), the squares summed in float64 (bf16/fp16 entries upcast to float32 first)."""
    if matrix.dtype not in (torch.float32, torch.float64):
        matrix = matrix.float()
    return math.sqrt(float(matrix.detach().square().sum(dtype=torch.float64)))


def singular_values(matrix: Float[Tensor, "rows cols"]) -> Float[Tensor, "k"]:
    """All singular values, descending (LAPACK on the tall orientation)."""
    matrix = as_matrix(matrix, matrix.dtype if matrix.dtype in (torch.float32, torch.float64) else torch.float32)
    return torch.linalg.svdvals(matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T)


def svd(matrix: Float[Tensor, "rows cols"]) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``U, S, Vh`` of ``matrix`` (computed on its tall orientation, returned for ``matrix`` itself)."""
    matrix = as_matrix(matrix, matrix.dtype if matrix.dtype in (torch.float32, torch.float64) else torch.float32)
    if matrix.shape[0] >= matrix.shape[1]:
        return torch.linalg.svd(matrix, full_matrices=False)
    u, s, vh = torch.linalg.svd(matrix.T, full_matrices=False)
    return vh.T, s, u.T


def spectral_norm_exact(matrix: Float[Tensor, "rows cols"]) -> float:
    """sigma_1 from a full SVD."""
    if matrix.numel() == 0:
        return 0.0
    return float(singular_values(matrix)[0])


def _new_directions(basis: Tensor, block: Tensor, generator: torch.Generator) -> Tensor:
    """Orthonormal columns orthogonal to ``basis``, spanning what ``block`` adds to it.

    Re-orthogonalisation alone is not enough: when ``M`` is (nearly) low-rank, ``M^T M q`` lies in the span of
    the basis up to float32 rounding, and normalising that rounding noise yields columns that are *not*
    orthogonal to the basis - the Rayleigh-Ritz value then overshoots sigma_1 (seen: +15% on rank-6 plus noise).
    So only the directions the block adds well above rounding (singular values > 1e-3 of its size) are kept,
    and the rest of the block is filled with random directions (any orthonormal extension keeps the estimate a
    lower bound). Two classical Gram-Schmidt passes ("twice is enough") keep everything orthogonal in float32.
    """
    reference = float(block.norm(dim=0).max())
    for _ in range(2):
        block = block - basis @ (basis.T @ block)
    directions, triangle = torch.linalg.qr(block)
    if reference > 0 and float(triangle.diagonal().abs().min()) > 1e-3 * reference:  # the usual case: all new
        directions = directions - basis @ (basis.T @ directions)  # clean the ~1e-4 left by the division by R
        return torch.linalg.qr(directions)[0]
    directions, strengths, _ = torch.linalg.svd(block, full_matrices=False)
    kept = directions[:, strengths > 1e-3 * reference] if reference > 0 else directions[:, :0]
    missing = block.shape[1] - kept.shape[1]
    if missing:
        fill = torch.randn(block.shape[0], missing, generator=generator, device=block.device, dtype=block.dtype)
        kept = torch.cat([kept, fill], dim=1)
    for _ in range(2):
        kept = kept - basis @ (basis.T @ kept)
    return torch.linalg.qr(kept)[0]


def _block_lanczos_top(matrix: Tensor, block_size: int, max_iterations: int, tol: float, seed: int) -> float:
    """Largest singular value by randomized block Lanczos (Krylov degree <= ``max_iterations``).

    The Krylov basis lives in the smaller of the two spaces (cheaper re-orthogonalisation). Only ``M @ X`` and
    ``X^T @ M`` products touch the big matrix: both are fast for a row-major ``M``, while ``M.T @ X`` is not,
    and copying ``M.T`` costs more than several products (measured). Buffers are preallocated because
    re-concatenating the basis every iteration was a tenth of the run time.
    """
    rows, cols = matrix.shape
    if rows < cols:  # basis in the row space: apply M^T, then M
        forward, backward, small, large = (lambda x: (x.T @ matrix).T), (lambda y: matrix @ y), rows, cols
    else:
        forward, backward, small, large = (lambda x: matrix @ x), (lambda y: (y.T @ matrix).T), cols, rows
    width = block_size * (max_iterations + 1)
    generator = torch.Generator(device=matrix.device).manual_seed(seed)
    start = torch.randn(small, block_size, generator=generator, device=matrix.device, dtype=matrix.dtype)
    krylov = torch.empty(small, width, device=matrix.device, dtype=matrix.dtype)  # orthonormal basis K
    products = torch.empty(large, width, device=matrix.device, dtype=matrix.dtype)  # (M or M^T) K
    krylov[:, :block_size] = torch.linalg.qr(start)[0]
    newest = forward(krylov[:, :block_size])
    products[:, :block_size] = newest
    gram = newest.T @ newest  # K^T M^T M K: its top eigenvalue is the Ritz estimate of sigma_1^2
    estimate = float(torch.linalg.eigvalsh(gram)[-1].clamp(min=0).sqrt())
    filled, increase = block_size, math.inf
    for _ in range(max_iterations):
        block = backward(products[:, filled - block_size:filled])  # M^T M q for the newest block q
        krylov[:, filled:filled + block_size] = _new_directions(krylov[:, :filled], block, generator)
        newest = forward(krylov[:, filled:filled + block_size])
        products[:, filled:filled + block_size] = newest
        cross = products[:, :filled].T @ newest
        gram = torch.cat([torch.cat([gram, cross], dim=1),
                          torch.cat([cross.T, newest.T @ newest], dim=1)], dim=0)
        filled += block_size
        previous, estimate = estimate, float(torch.linalg.eigvalsh(gram)[-1].clamp(min=0).sqrt())
        increase, last_increase = estimate - previous, increase
        # Ritz values rise monotonically to sigma_1 and, on the worst (flat-topped, Gaussian) spectra, their
        # error shrinks about geometrically, by a ratio that nears 1 as matrices grow (0.5 at 768, 0.6+ at
        # 4096: measured). The error left is then about increase * ratio / (1 - ratio): stop when that is below
        # tol. Two iterations at least: insurance against a start block nearly blind to the top direction.
        ratio = increase / last_increase if last_increase > 0 else 0.0
        remaining = math.inf if ratio >= 1 else increase * ratio / (1 - ratio)
        if filled >= 3 * block_size and max(remaining, increase * 0.5) <= tol * estimate:
            break
    return estimate


EXACT_BELOW = 512  # matrices with a side shorter than this go to LAPACK: it is as fast there, and exact


def spectral_norm(matrix: Float[Tensor, "rows cols"], *, exact: bool = False, block_size: int = 16,
                  max_iterations: int = 12, tol: float = 3e-3, seed: int = 0) -> float:
    """sigma_1 (the spectral norm). Fast randomized block Lanczos by default, full SVD with ``exact=True``.

    Small matrices (shortest side < ``EXACT_BELOW``) always use the full SVD. The fast estimate never exceeds
    sigma_1 (in exact arithmetic); it stops once the relative error it still expects (extrapolated from its last
    two increases) is below ``tol``, after at most ``max_iterations`` (Krylov degree). Measured by
    benchmarks/bench_spectral.py: on Gaussian matrices (the worst case) within 0.5% of sigma_1 at Pythia-160M
    sizes and 0.25% at d_model 2048-4096; on low-rank-plus-noise matrices within 1e-6.
    """
    if matrix.numel() == 0:
        return 0.0
    if matrix.dtype not in (torch.float32, torch.float64):  # bf16/fp16 Krylov vectors lose the top digits
        matrix = as_matrix(matrix)
    low, high = torch.aminmax(matrix)  # max |M_ij|; 10x faster than vector_norm(ord=inf) on CPU (measured)
    largest = max(-float(low), float(high))
    if largest == 0:
        return 0.0
    if not math.isfinite(largest):
        return math.nan  # a broken (NaN/inf) weight: report it as such, do not stop a long run
    if exact or min(matrix.shape) < EXACT_BELOW or block_size * (max_iterations + 1) > min(matrix.shape):
        return spectral_norm_exact(matrix)
    if not 1e-8 < largest < 1e8:  # M^T M q or the Gram matrix could under/overflow: use M / max|M_ij|
        return largest * _block_lanczos_top((matrix / largest).contiguous(), block_size, max_iterations, tol, seed)
    return _block_lanczos_top(matrix.contiguous(), block_size, max_iterations, tol, seed)


def stable_rank_from_norms(frobenius: float, spectral: float) -> float:
    """||W||_F^2 / ||W||_2^2, defined as 0 for the zero matrix (a rank, like the zero matrix' rank 0: not NaN)."""
    return 0.0 if spectral == 0 else (frobenius / spectral) ** 2


def stable_rank(matrix: Float[Tensor, "rows cols"], *, exact: bool = False) -> float:
    """Stable rank ||W||_F^2 / sigma_1^2 (0 for the zero matrix); fast sigma_1 unless ``exact``."""
    return stable_rank_from_norms(frobenius_norm(matrix), spectral_norm(matrix, exact=exact))


def empirical_rank(values: Float[Tensor, "k"], energy: float = 0.99) -> int:
    """min k with sum_{i<=k} sigma_i^2 >= energy * sum sigma_i^2 (0 for the zero matrix)."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    squares = values.double().square()
    total = float(squares.sum())
    if total == 0:
        return 0
    cumulative = torch.cumsum(squares, dim=0)
    # A tiny relative slack so energy=1.0 is not defeated by the rounding of the cumulative sum.
    return int(torch.searchsorted(cumulative, energy * total * (1 - 1e-12)).item()) + 1


effective_rank = empirical_rank  # the seed's "effective rank (99% energy)" is the same count as step 1's


def entropy_rank(values: Float[Tensor, "k"]) -> float:
    """Roy & Vetterli's effective rank exp(H(p)), p_i = sigma_i / sum sigma (0 for the zero matrix)."""
    values = values.double()
    total = float(values.sum())
    if total == 0:
        return 0.0
    shares = values[values > 0] / total
    return float(torch.exp(-(shares * shares.log()).sum()))


def top_k_energy_ratio(values: Float[Tensor, "k"], k: int = 10) -> float:
    """sum of the top-k sigma_i^2 over sum of all sigma_i^2 (1 for the zero matrix)."""
    squares = values.double().square()
    total = float(squares.sum())
    if total == 0:
        return 1.0
    return float(torch.sort(squares, descending=True).values[:k].sum()) / total


def numerical_rank(values: Float[Tensor, "k"], shape: tuple[int, int], rtol: float | None = None) -> int:
    """Number of sigma_i > rtol * sigma_1, with numpy.linalg.matrix_rank's default rtol = max(shape) * eps."""
    if values.numel() == 0 or float(values.max()) == 0:
        return 0
    if rtol is None:
        rtol = max(shape) * torch.finfo(values.dtype).eps
    return int((values > rtol * values.max()).sum())


def principal_angles(basis_a: Float[Tensor, "n k"], basis_b: Float[Tensor, "n l"]) -> Float[Tensor, "j"]:
    """Principal angles (radians, ascending) between the spans of two orthonormal bases.

    Like ``scipy.linalg.subspace_angles`` (Knyazev & Argentati 2002): arccos of the cosines is inaccurate for
    small angles, so angles below pi/4 come from the sines (singular values of the residual of B after
    projecting on A). Written in torch so it runs where the weights are (GPU) without a copy to numpy.
    """
    # Re-orthonormalise in float64 (as scipy does): float32 SVD bases are orthonormal to ~1e-7 only, which would
    # put a floor of ~1e-6 under the distance between two identical subspaces.
    basis_a, basis_b = torch.linalg.qr(basis_a.double())[0], torch.linalg.qr(basis_b.double())[0]
    if basis_a.shape[1] < basis_b.shape[1]:
        basis_a, basis_b = basis_b, basis_a
    cosines = torch.linalg.svdvals(basis_a.T @ basis_b).clamp(-1, 1)  # descending -> angles ascending
    residual = basis_b - basis_a @ (basis_a.T @ basis_b)
    sines = torch.linalg.svdvals(residual).clamp(-1, 1).flip(0)  # ascending -> angles ascending
    from_cosines = torch.arccos(cosines)
    from_sines = torch.arcsin(sines)
    return torch.where(cosines.square() >= 0.5, from_sines, from_cosines)


def grassmann_distance(basis_a: Float[Tensor, "n k"], basis_b: Float[Tensor, "n l"]) -> float:
    """sqrt(sum theta_i^2) over the principal angles (the geodesic distance on the Grassmannian)."""
    return float(principal_angles(basis_a, basis_b).square().sum().sqrt())


def subspace_alignment(basis_a: Float[Tensor, "n k"], basis_b: Float[Tensor, "n l"]) -> float:
    """Mean cos^2 of the principal angles: 1 = same subspace, 0 = orthogonal."""
    return float(torch.cos(principal_angles(basis_a, basis_b)).square().mean())


def column_space_split(delta: Float[Tensor, "rows cols"],
                       column_basis: Float[Tensor, "rows r"]) -> tuple[float, float]:
    """(inside, outside): the fractions of ||delta||_F^2 in span(column_basis) and in its orthogonal complement
    (for W's column basis: the left null space, the null space of W^T). They sum to 1; NaN for a zero delta,
    whose split is undefined (callers report it as such)."""
    total = float(delta.square().sum(dtype=torch.float64))
    if total == 0:
        return math.nan, math.nan
    inside = float((column_basis.T.to(delta.dtype) @ delta).square().sum(dtype=torch.float64))
    inside = min(max(inside / total, 0.0), 1.0)
    return inside, 1.0 - inside


def row_space_split(delta: Float[Tensor, "rows cols"], row_basis: Float[Tensor, "cols r"]) -> tuple[float, float]:
    """(fraction, remainder) of ||delta||_F^2 in the row space spanned by ``row_basis`` and in the null space of
    W (inputs W ignores); they sum to 1."""
    return column_space_split(delta.T, row_basis)

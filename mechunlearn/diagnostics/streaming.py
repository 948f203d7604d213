"""Streaming statistics merged batch by batch (Chan et al.'s parallel update), so no dataset-sized activation
cache is ever held. Kept in float64: the sums of many float32 activations otherwise lose digits."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

__all__ = ["RunningMoments", "RunningMean", "token_rows", "last_token_rows", "mean_pooled_rows"]


def token_rows(activation: Float[Tensor, "batch pos d"], mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, "n d"]:
    """The activations of real (non-pad) tokens, one row per token."""
    return activation[mask[:, : activation.shape[1]]]


def last_token_rows(activation: Float[Tensor, "batch pos d"], mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, "batch d"]:
    """Each sequence's activation at its last real token (right padding)."""
    last = mask[:, : activation.shape[1]].sum(dim=1).clamp(min=1) - 1
    return activation[torch.arange(activation.shape[0], device=activation.device), last]


def mean_pooled_rows(activation: Float[Tensor, "batch pos d"], mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, "batch d"]:
    """Each sequence's mean activation over its real tokens."""
    weights = mask[:, : activation.shape[1]].to(activation.dtype)
    return (activation * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1)


class RunningMean:
    """Mean of scalars or vectors over rows, merged batch by batch."""

    def __init__(self) -> None:
        self.count = 0
        self.total: Tensor | None = None

    def update(self, values: Tensor) -> None:
        values = values.detach().to(torch.float64)
        if values.dim() == 0:
            values = values[None]
        summed = values.sum(dim=0)
        self.total = summed if self.total is None else self.total + summed
        self.count += values.shape[0]

    @property
    def mean(self) -> Tensor:
        if self.count == 0 or self.total is None:
            raise ValueError("no values were accumulated: is the split empty?")
        return self.total / self.count


class RunningMoments:
    """Mean and (co)variance of row vectors, merged with Chan et al.'s pairwise formula.

    ``update(rows)`` takes ``[n, d]``; ``mean``, ``covariance`` (unbiased, like ``numpy.cov``) and ``count``
    are available at any time. ``diagonal_only`` keeps variances instead of a ``d x d`` matrix.
    """

    def __init__(self, diagonal_only: bool = False) -> None:
        self.count = 0
        self.diagonal_only = diagonal_only
        self._mean: Tensor | None = None
        self._m2: Tensor | None = None  # sum of squared deviations (outer products, or squares)

    def update(self, rows: Float[Tensor, "n d"]) -> None:
        rows = rows.detach().to(torch.float64)
        n = rows.shape[0]
        if n == 0:
            return
        batch_mean = rows.mean(dim=0)
        centred = rows - batch_mean
        batch_m2 = (centred * centred).sum(dim=0) if self.diagonal_only else centred.T @ centred
        if self._mean is None:
            self._mean, self._m2, self.count = batch_mean, batch_m2, n
            return
        total = self.count + n
        delta = batch_mean - self._mean
        correction = torch.outer(delta, delta) if not self.diagonal_only else delta * delta
        self._m2 = self._m2 + batch_m2 + correction * (self.count * n / total)
        self._mean = self._mean + delta * (n / total)
        self.count = total

    @property
    def mean(self) -> Tensor:
        if self._mean is None:
            raise ValueError("no rows were accumulated: is the split empty?")
        return self._mean

    @property
    def covariance(self) -> Tensor:
        if self._m2 is None or self.count < 2:
            raise ValueError("a covariance needs at least two rows")
        return self._m2 / (self.count - 1)

    @property
    def within_scatter(self) -> Tensor:
        """Sum of squared deviations from the mean (``(n-1) * covariance``)."""
        if self._m2 is None:
            raise ValueError("no rows were accumulated: is the split empty?")
        return self._m2

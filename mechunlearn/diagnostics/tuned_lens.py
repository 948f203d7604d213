"""Step 6 through a tuned lens: layer-wise MCQ accuracy, the lens trained per model (``lens_training``, cached).

Columns as ``logit_lens``; ``summary.json`` also has each model's lens cache ``path`` and ``initial_kl``/``final_kl``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from mechunlearn.data import MCQItem
from mechunlearn.diagnostics.lens_training import load_or_train_tuned_lens
from mechunlearn.diagnostics.lenses import LogitLens
from mechunlearn.diagnostics.logit_lens import LogitLensAnalysis

__all__ = ["TunedLensAnalysis"]


class TunedLensAnalysis(LogitLensAnalysis):
    """Layer-wise MCQ accuracy through a tuned lens trained per model on ``train_texts`` (cached on disk).

    Options as ``LogitLensAnalysis`` plus ``train_texts`` (default: the world's retain texts), ``steps`` (300),
    ``lr`` (1e-3), ``train_batch_size`` (8), ``max_length`` (128), ``seed`` (0), ``cache_dir``.
    """

    name = "tuned_lens"
    inputs = ("mcq", "texts")
    description = "layer-wise multiple-choice accuracy read through a tuned lens (trained on retain texts)"
    lens_name = "tuned lens"

    def __init__(self, items: Sequence[MCQItem] | None = None, world=None,
                 domains: Sequence[str] = ("forget", "retain"), batch_size: int = 32, choice_prefix: str = " ",
                 train_texts: Sequence[str] | None = None, steps: int = 300, lr: float = 1e-3,
                 train_batch_size: int = 8, max_length: int = 128, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None) -> None:
        super().__init__(items, world, domains, batch_size, choice_prefix)
        if train_texts is None:
            if world is None:
                raise ValueError("tuned_lens: pass train_texts= (e.g. retain texts) to train the lens on")
            train_texts = world.retain_texts()
        self.train_texts = [text for text in train_texts if text.strip()]
        if not self.train_texts:
            raise ValueError("tuned_lens: train_texts is empty; pass at least one non-empty text")
        self.train_options = dict(steps=steps, lr=lr, batch_size=train_batch_size, max_length=max_length, seed=seed,
                                  cache_dir=cache_dir)

    def lens_for(self, model) -> tuple[LogitLens, dict[str, Any]]:
        lens, info = load_or_train_tuned_lens(model, self.train_texts, **self.train_options)
        losses = info.pop("losses")
        return lens, info | ({"initial_kl": losses[0], "final_kl": losses[-1]} if losses else {})

"""The one cross-validated forget-vs-retain probe (a TOPIC probe), shared by ``linear_probes`` (last-token
states, the seed's step 5) and ``activation_separation`` (mean-pooled states, step 8's AUC).

It tells whether a linear read-out can tell forget TEXT from retain TEXT. The two sets differ in their names and
topics, so this separates from layer 0 on even for a model that never saw the forget data (the gold standard): it
measures topic, not knowledge. Whether the model still knows the forget facts is ``knowledge_probe``'s question.

A scikit-learn ``LogisticRegression`` (``C``, ``max_iter``), after a ``StandardScaler`` fitted inside each training
fold (``standardize=True``: the residual stream's scale grows with depth, and a fixed ``C`` would otherwise
regularise each layer differently; lbfgs also converges badly on unscaled features), scored by stratified k-fold
cross-validation (shuffled with ``seed``): every sample is predicted by the probe trained on the other folds, and
accuracy and AUC are computed over all out-of-fold decisions at once. Cross-validation rather than one held-out
split because the texts are few (a few hundred at most).
"""

from __future__ import annotations

import warnings

import numpy as np
from jaxtyping import Float

__all__ = ["forget_vs_retain_probe", "probe_pipeline", "single_threaded"]


def single_threaded():
    """A context in which BLAS / OpenMP run one thread: these probes are small (tens to hundreds of rows), where a
    multi-threaded BLAS only adds synchronisation; measured 10x slower with the default threads on a 2-core machine
    (a 39 x 128, 15-class fit: 0.26 s vs 0.026 s)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def probe_pipeline(C: float = 1.0, max_iter: int = 1000, standardize: bool = True, seed: int = 0):
    """``StandardScaler`` + ``LogisticRegression`` (or the regression alone); a fresh, unfitted estimator."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    return make_pipeline(StandardScaler(), probe) if standardize else probe


def forget_vs_retain_probe(forget: Float[np.ndarray, "n_forget d"], retain: Float[np.ndarray, "n_retain d"], *,
                           C: float = 1.0, max_iter: int = 1000, cv_folds: int = 5, standardize: bool = True,
                           seed: int = 0) -> dict[str, float]:
    """Cross-validated forget (1) vs retain (0) probe on two sets of feature rows.

    Returns ``accuracy``, ``majority_baseline`` (the larger class' share), ``selectivity`` (accuracy - baseline,
    the seed's definition) and ``auc`` (``roc_auc_score`` of the out-of-fold decision values). The number of
    folds is ``min(cv_folds, smaller class size)``; fewer than 2 samples in a class is an error.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    n_forget, n_retain = len(forget), len(retain)
    if min(n_forget, n_retain) < 2:
        raise ValueError(f"a probe needs at least 2 forget and 2 retain texts, got {n_forget} forget and {n_retain} "
                         "retain; pass more texts (or a larger max_samples)")
    if cv_folds < 2:
        raise ValueError(f"cv_folds must be at least 2, got {cv_folds}")
    features = np.concatenate([forget, retain]).astype(np.float64)
    labels = np.concatenate([np.ones(n_forget, dtype=int), np.zeros(n_retain, dtype=int)])
    folds = StratifiedKFold(n_splits=min(cv_folds, n_forget, n_retain), shuffle=True, random_state=seed)
    with warnings.catch_warnings(), single_threaded():  # a fold short of full convergence still scores usably
        warnings.simplefilter("ignore")
        decision = cross_val_predict(probe_pipeline(C, max_iter, standardize, seed), features, labels, cv=folds,
                                     method="decision_function")
    # LogisticRegression.predict is exactly "decision value > 0" for two classes.
    accuracy = float(np.mean((decision > 0).astype(int) == labels))
    baseline = max(n_forget, n_retain) / (n_forget + n_retain)
    return {"accuracy": accuracy, "majority_baseline": baseline, "selectivity": accuracy - baseline,
            "auc": float(roc_auc_score(labels, decision))}

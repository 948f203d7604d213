"""Optional logging of a run's hyper-parameters and metrics to an experiment tracker the user already runs.

Off unless asked: a study's ``[tracking] backend = "mlflow" | "wandb"`` (default ``"none"``), or
``mechunlearn unlearn METHOD --track mlflow``. Each evaluated model of a study becomes one tracker run (its
``metrics.json``'s numbers, the method's hyper-parameters and seed as params, the study / step / role as tags);
``mechunlearn unlearn`` logs its run's ``run.json`` metrics the same way.

* **MLflow**: ``mlflow.start_run`` / ``log_params`` / ``log_metrics`` against the user's tracking server
  (``MLFLOW_TRACKING_URI``; unset = MLflow's own default). ``mlflow-skinny`` is enough (``pip install
  'mechunlearn[tracking]'``). MLflow >= 3.7 refuses a ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``
  (its ``sqlite:`` store needs the full ``mlflow`` package).
* **W&B**: ``wandb.init(project=..., mode=os.environ.get("WANDB_MODE"))`` then ``run.log``; ``WANDB_MODE=offline``
  writes the run locally for a later ``wandb sync``.

The package is imported only when tracking is on; a missing one is one :class:`TrackingError` at study load
naming the ``pip install``. Logging happens after a step has written its outputs, and a tracker that fails (a
server down, a key refused) only warns: the step's results never depend on the tracker.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["BACKENDS", "TrackingError", "require_backend", "flat_metrics", "flat_params", "log_run", "track",
           "track_evals"]

BACKENDS = ("none", "mlflow", "wandb")
_INSTALL = {"mlflow": "pip install mlflow-skinny (or mlflow, or pip install 'mechunlearn[tracking]')",
            "wandb": "pip install wandb"}
# MLflow's allowed key characters; other characters (a subject named "high_school/physics?") become "_"
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
_SKIPPED = ("intervals",)   # interval dicts: the tracker gets the numbers themselves, the intervals stay on disk


class TrackingError(ValueError):
    """A tracking backend that is unknown or not installed; the message names the fix."""


def require_backend(backend: str, where: str = "tracking.backend") -> None:
    """Refuse an unknown backend or one whose package is missing (checked without importing it)."""
    if backend not in BACKENDS:
        raise TrackingError(f"{where} = {backend!r} is not one of: {', '.join(BACKENDS)}")
    if backend != "none" and importlib.util.find_spec(backend) is None:
        raise TrackingError(f"{where} = {backend!r} but the {backend} package is not installed: "
                            f"{_INSTALL[backend]}, or set {where} = \"none\"")


def safe_key(key: str) -> str:
    return _UNSAFE_KEY.sub("_", str(key))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics record: top-level numbers (booleans as 0/1) and one level of number
    tables (``mcq_forget_by_subject`` -> ``mcq_forget_by_subject/<subject>``); strings, lists, None, NaN and
    ``intervals`` are left out (a tracker metric is one finite number)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if key in _SKIPPED:
            continue
        if isinstance(value, Mapping):
            for inner, number in value.items():
                if (number := _finite(number)) is not None:
                    flat[safe_key(f"{key}/{inner}")] = number
        elif (number := _finite(value)) is not None:
            flat[safe_key(key)] = number
    return flat


def flat_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters as tracker params: numbers, strings and booleans as they are, anything else as text."""
    return {safe_key(key): value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
            for key, value in params.items()}


def _mlflow_experiment(mlflow, name: str) -> str:
    """The id of experiment ``name``, created if missing; unlike ``mlflow.set_experiment`` it leaves the caller's
    active experiment alone, and a parallel worker that created it first is no error."""
    client = mlflow.MlflowClient()
    for _ in range(2):
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(name)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another step: look it up again
            continue
    raise TrackingError(f"MLflow experiment {name!r} can neither be found nor created")


def log_run(backend: str, run_name: str, params: Mapping[str, Any], metrics: Mapping[str, float], *,
            experiment: str = "", tags: Mapping[str, str] | None = None) -> str | None:
    """Log one run to ``backend``; return the tracker's run id (None for ``"none"``). Raises what the tracker
    raises: :func:`track` is the caller that only warns."""
    require_backend(backend)
    params, metrics, tags = flat_params(params), dict(metrics), {k: str(v) for k, v in (tags or {}).items()}
    if backend == "mlflow":
        import mlflow

        experiment_id = _mlflow_experiment(mlflow, experiment) if experiment else None
        # nested under a run the user has open (a notebook's), else a run of its own
        with mlflow.start_run(run_name=run_name, experiment_id=experiment_id, tags=tags,
                              nested=mlflow.active_run() is not None) as run:
            mlflow.log_params(params)
            mlflow.log_metrics(metrics)
            return run.info.run_id
    if backend == "wandb":
        import wandb

        # tags go into the config: W&B's own tags are short labels (64 characters at most)
        run = wandb.init(project=experiment or None, name=run_name, mode=os.environ.get("WANDB_MODE"),
                         config={**params, **{f"mechunlearn.{key}": value for key, value in tags.items()}})
        try:
            run.log(metrics)
            run.summary.update(metrics)
            return run.id
        finally:
            run.finish()
    return None


def track(settings: Mapping[str, Any] | None, run_name: str, params: Mapping[str, Any],
          metrics: Mapping[str, Any], *, tags: Mapping[str, str] | None = None) -> str | None:
    """Log ``metrics`` (a metrics record: flattened by :func:`flat_metrics`) when ``settings`` (``{"backend",
    "experiment", "run_prefix"}``, a study's ``[tracking]``) asks for it; a tracker error is a warning, never
    the caller's failure. Returns the run id, or None when off or failed."""
    if not settings or settings.get("backend", "none") == "none":
        return None
    backend = settings["backend"]
    name = f"{settings.get('run_prefix', '')}{run_name}"
    try:
        return log_run(backend, name, params, flat_metrics(metrics), experiment=settings.get("experiment", ""),
                       tags=tags)
    except Exception as error:  # noqa: BLE001 - the tracker is optional: its failure must not fail the run
        warnings.warn(f"logging run {name!r} to {backend} failed ({type(error).__name__}: {error}); the run's "
                      "outputs are complete and unaffected", RuntimeWarning, stacklevel=2)
        return None


def track_evals(settings: Mapping[str, Any] | None, step, reference, metrics_file) -> str | None:
    """A study's evals step (``step``) of one model (its ``ModelRef``), once ``metrics_file`` is written: one
    tracker run named by the model id, with the method, seed and hyper-parameters as params."""
    if not settings or settings.get("backend", "none") == "none":
        return None
    try:
        from mechunlearn.storage import read_json

        metrics = read_json(metrics_file)
    except Exception as error:  # noqa: BLE001 - see track()
        warnings.warn(f"tracking: cannot read {metrics_file} ({error}); nothing logged", RuntimeWarning, stacklevel=2)
        return None
    params: dict[str, Any] = {"model_id": reference.id, "role": reference.role}
    if reference.method:
        params = {**(reference.config or {}), **params, "method": reference.method, "seed": reference.seed}
    tags = {"study": settings.get("study", ""), "step": step.id, "step_key": step.key, "model_id": reference.id,
            "role": reference.role}
    return track(settings, reference.id, params, metrics, tags=tags)

"""Executors: who runs the steps that are ready. ``serial`` (in this process), ``ray``, ``submitit`` (SLURM).

An executor only runs tasks (``worker.execute``) and says when they finish; which steps are ready, which are done
and what is skipped is decided by the study from its keys, so any executor can resubmit a whole study safely and
a killed study resumes under any other. Resources: ``ray.num_cpus`` / ``ray.num_gpus`` per step (GPUs only for
steps that load a model), ``submitit.*`` for SLURM jobs.

* ``ray``: ``ray.init()`` on this machine, or ``ray.init(address=...)`` for a cluster; an already initialised Ray
  (``ray.init(...)`` in your notebook) is used as it is. Workers must import the same ``mechunlearn`` and see OUT
  (a shared file system on a cluster). Ray's removed ``local_mode`` is not used.
* ``submitit``: one job per step through ``submitit.AutoExecutor`` (SLURM when available; ``cluster = "local"``
  runs jobs as local processes: how the tests exercise it).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from mechunlearn.pipeline.errors import StudyError

__all__ = ["Executor", "SerialExecutor", "RayExecutor", "SubmititExecutor", "make_executor", "Finished"]

Finished = tuple[str, "dict[str, Any] | None", "BaseException | None", str]  # (step id, record, error, details)


class Executor:
    name = ""
    capacity = 1  # how many steps may be in flight at once

    def submit(self, step_id: str, task: dict[str, Any], resources: dict[str, float]) -> None:
        raise NotImplementedError

    def wait(self) -> list[Finished]:
        """Block until at least one submitted step finished; return the finished ones."""
        raise NotImplementedError

    @property
    def running(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor started (a Ray instance it initialised)."""


class SerialExecutor(Executor):
    """In this process, one step at a time (the default; what a notebook and the tests use)."""

    name = "serial"

    def __init__(self) -> None:
        self._done: list[Finished] = []

    def submit(self, step_id, task, resources) -> None:
        from mechunlearn.pipeline.worker import execute

        try:
            self._done.append((step_id, execute(task), None, ""))
        except Exception as error:  # reported by the study with the step's id
            self._done.append((step_id, None, error, traceback.format_exc()))

    def wait(self) -> list[Finished]:
        finished, self._done = self._done, []
        return finished

    @property
    def running(self) -> int:
        return len(self._done)


class RayExecutor(Executor):
    name = "ray"
    capacity = 1 << 30  # Ray queues tasks by their resources

    def __init__(self, settings) -> None:
        try:
            import ray
        except ImportError as error:
            raise StudyError("study.executor = \"ray\" needs Ray, which is not installed: pip install "
                             "'mechunlearn[ray]' (or pip install ray), or run with --executor serial") from error
        from mechunlearn.pipeline.worker import execute

        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            ray.init(address=settings.address or None)
        self._remote = ray.remote(execute)
        self._pending: dict[Any, str] = {}

    def submit(self, step_id, task, resources) -> None:
        reference = self._remote.options(num_cpus=resources["num_cpus"], num_gpus=resources["num_gpus"],
                                         name=f"mechunlearn:{step_id}").remote(task)
        self._pending[reference] = step_id

    def wait(self) -> list[Finished]:
        ready, _ = self._ray.wait(list(self._pending), num_returns=1)
        finished = []
        for reference in ready:
            step_id = self._pending.pop(reference)
            try:
                finished.append((step_id, self._ray.get(reference), None, ""))
            except Exception as error:  # RayTaskError carries the worker's traceback in its text
                finished.append((step_id, None, error, str(error)))
        return finished

    @property
    def running(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        for reference in self._pending:
            self._ray.cancel(reference, force=True)
        self._pending.clear()
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


class SubmititExecutor(Executor):
    name = "submitit"
    capacity = 1 << 30
    poll_s = 0.5

    def __init__(self, settings, out: Path) -> None:
        try:
            import submitit
        except ImportError as error:
            raise StudyError("study.executor = \"submitit\" needs submitit, which is not installed: pip install "
                             "'mechunlearn[submitit]' (or pip install submitit)") from error
        self._settings = settings
        folder = Path(settings.folder).expanduser().absolute() if settings.folder else out / ".submitit"
        self._executor = submitit.AutoExecutor(folder=folder / "%j", cluster=settings.cluster or None)
        self._pending: dict[str, Any] = {}

    def submit(self, step_id, task, resources) -> None:
        from mechunlearn.pipeline.worker import execute

        settings = self._settings
        parameters: dict[str, Any] = {"timeout_min": settings.timeout_min, "cpus_per_task": settings.cpus_per_task,
                                      "gpus_per_node": settings.gpus_per_node if resources["num_gpus"] else 0,
                                      "name": f"mechunlearn-{step_id.replace('/', '-')}"}
        if settings.mem_gb:
            parameters["mem_gb"] = settings.mem_gb
        if settings.partition:
            parameters["slurm_partition"] = settings.partition
        if settings.slurm_parameters:
            parameters["slurm_additional_parameters"] = dict(settings.slurm_parameters)
        self._executor.update_parameters(**parameters)
        self._pending[step_id] = self._executor.submit(execute, task)

    def wait(self) -> list[Finished]:
        while True:
            finished = []
            for step_id, job in list(self._pending.items()):
                if not job.done():
                    continue
                del self._pending[step_id]
                try:
                    finished.append((step_id, job.result(), None, ""))
                except Exception as error:  # submitit's FailedJobError holds the job's traceback
                    finished.append((step_id, None, error, str(error)))
            if finished:
                return finished
            time.sleep(self.poll_s)

    @property
    def running(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        for job in self._pending.values():
            job.cancel(check=False)
        self._pending.clear()


def make_executor(name: str, study, out: Path) -> Executor:
    if name == "serial":
        return SerialExecutor()
    if name == "ray":
        return RayExecutor(study.ray)
    if name == "submitit":
        return SubmititExecutor(study.submitit, out)
    raise StudyError(f"executor {name!r} is not one of: serial, ray, submitit")

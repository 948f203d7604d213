"""``run_study``: plan a study, skip what is done, run the rest through an executor, keep the manifest.

A step is done when ``OUT/<id>/step.json`` holds its key (and its kind's ``complete`` check passes). It runs when
it is not done, or when ``force`` names its kind or stage (``"all"``: everything), or when a forced step feeds
it. Steps run as soon as their inputs are done, as many at once as the executor takes. ``manifest.json`` lists
every step with its status (``skipped``: done before; ``ran``; ``failed``; ``pending``), key and wall time, and
is rewritten after each step, so a killed study leaves an honest manifest too.

One run at a time writes an OUT (``OUT/.lock``, released by the kernel even on SIGKILL); a run starts by
removing the temporaries a killed run left behind. An OUT holding another study's results (another
``study.name`` in ``study.resolved.json``) or unrelated files is refused unless ``force`` holds ``"all"``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechunlearn.pipeline.errors import StepFailed, StudyError
from mechunlearn.pipeline.executors import make_executor
from mechunlearn.pipeline.steps.base import STAGES, Plan, get_step_kind, step_kinds
from mechunlearn.pipeline.worker import make_task, settings_of
from mechunlearn.storage import config_digest, read_json, write_json

__all__ = ["plan_study", "step_status", "run_study", "StudyRun", "force_names"]


# ------------------------------------------------------------------------------------------------------ planning
def plan_study(study, *, yes: bool = False) -> Plan:
    """Every step of ``study`` with its key, in dependency order (bad input fails here, before anything runs)."""
    kinds = step_kinds()
    provided = {feature for kind in kinds for feature in kind.provides}
    wanted = {"attacks": bool(study.attacks), "native": study.models.native}
    for feature, asked in wanted.items():
        if asked and feature not in provided:
            section = "[attacks]" if feature == "attacks" else "models.native = true"
            raise StudyError(f"the study asks for {feature} ({section}), but this version of mechunlearn has no "
                             f"{feature} step: remove {section} from the study")
    plan = Plan(study)
    plan.facts["yes"] = yes
    for kind in kinds:
        for step in kind.plan(study, plan):
            plan.add(step)
    for step in plan:
        input_keys = {name: plan.steps[source].key for name, source in step.inputs.items()}
        step.key = get_step_kind(step.kind).key(step, input_keys, plan)
    return plan


def force_names() -> list[str]:
    return ["all", *STAGES, *sorted({kind.name for kind in step_kinds()} - set(STAGES))]


def _check_force(force: Iterable[str]) -> set[str]:
    force = set(force)
    unknown = sorted(force - set(force_names()))
    if unknown:
        raise StudyError(f"--force {unknown[0]}: not a stage or step kind; choose from {', '.join(force_names())}")
    return force


def _forced(plan: Plan, force: Iterable[str]) -> set[str]:
    force = _check_force(force)
    forced = set()
    for step in plan:  # plan order: an input is always before the steps it feeds
        kind = get_step_kind(step.kind)
        if "all" in force or kind.name in force or kind.stage in force or any(
                source in forced for source in step.inputs.values()):
            forced.add(step.id)
    return forced


def step_status(plan: Plan, out: Path, force: Iterable[str] = ()) -> dict[str, str]:
    """``{step id: "done" | "todo"}`` for ``plan`` written into ``out``."""
    forced = _forced(plan, force)
    status = {}
    for step in plan:
        folder = out / step.id
        done = False
        if step.id not in forced and (folder / "step.json").is_file():
            try:
                record = read_json(folder / "step.json")
            except ValueError:
                record = {}
            done = record.get("key") == step.key and get_step_kind(step.kind).complete(step, folder, record)
        status[step.id] = "done" if done else "todo"
    return status


# --------------------------------------------------------------------------------------------------- the output dir
def _check_out(study, out: Path, force: set[str]) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise StudyError(f"study.out = {out} is a file: name a directory")
    resolved = out / "study.resolved.json"
    if resolved.is_file():
        try:
            name = read_json(resolved).get("study", {}).get("name")
        except ValueError:
            name = None
        if name != study.study.name and "all" not in force:
            raise StudyError(f"{out} holds the results of another study ({name!r}, see {resolved}); choose another "
                             "study.out (or --out DIR), or pass --force all to run this study there (every step reruns)")
        return
    entries = [entry for entry in out.iterdir() if entry.name != ".lock"]
    if entries and "all" not in force:
        raise StudyError(f"{out} is not empty and holds no study's results ({entries[0].name}, ...); choose an empty or "
                         "new directory for study.out (or --out DIR), or pass --force all to write there anyway")


class _Lock:
    """An exclusive ``flock`` on ``OUT/.lock`` while a run writes OUT (a no-op where fcntl is missing)."""

    def __init__(self, out: Path) -> None:
        self.path, self.handle = out / ".lock", None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            return self
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise StudyError(f"another `mechunlearn run` is writing {self.path.parent} (it holds {self.path}); "
                             "wait for it to finish, or use another study.out") from None
        return self

    def __exit__(self, *exc_info) -> None:
        if self.handle is not None:
            self.handle.close()


def _remove_temporaries(plan: Plan, out: Path) -> None:
    """What a killed run left: ``atomic_directory`` staging dirs (``.<name>.XXXX``) and temporary files."""
    places: dict[Path, set[str]] = {out: {"manifest.json", "study.toml", "study.resolved.json"}}
    for step in plan:
        folder = out / step.id
        places.setdefault(folder.parent, set()).add(folder.name)
    for parent, names in places.items():
        if not parent.is_dir():
            continue
        for entry in parent.iterdir():
            if entry.name.startswith(".") and any(entry.name.startswith(f".{name}.") for name in names):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.name.endswith(".tmp"):
                    entry.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------------------------- running
@dataclass
class StudyRun:
    """What ``run_study`` did: OUT, the plan, each step's status, and where the tables are."""

    out: Path
    plan: Plan
    status: dict[str, str]
    wall_s: float
    outputs: list[Path] = field(default_factory=list)

    @property
    def ran(self) -> list[str]:
        return [step_id for step_id, status in self.status.items() if status == "ran"]

    @property
    def skipped(self) -> list[str]:
        return [step_id for step_id, status in self.status.items() if status == "skipped"]


def _resources(study, kind) -> dict[str, float]:
    return {"num_cpus": study.ray.num_cpus, "num_gpus": study.ray.num_gpus if kind.loads_models else 0.0}


def run_study(study, *, force: Iterable[str] = (), executor: str | None = None, yes: bool = False,
              progress: bool = True, log: Callable[[str], None] | None = None) -> StudyRun:
    """Run ``study`` (a :class:`~mechunlearn.pipeline.config.Study`): what is done is skipped, the rest runs.

    ``force``: stages or step kinds to rerun (and what they feed), ``"all"`` for everything; ``executor``
    overrides ``study.executor``; ``yes`` accepts a grid beyond ``GRID_LIMIT``; ``progress``: the steps'
    progress bars; ``log``: where the step lines go (default: stdout).
    """
    log = log or (lambda line: print(line, flush=True))
    force = _check_force(force)
    out = study.out
    started = time.perf_counter()
    _check_out(study, out, force)
    plan = plan_study(study, yes=yes)
    status = {step_id: ("skipped" if state == "done" else "pending")
              for step_id, state in step_status(plan, out, force).items()}
    executor_name = executor or study.study.executor
    runner = make_executor(executor_name, study, out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(study, progress=progress, executor=executor_name)
    try:
        with _Lock(out):
            _remove_temporaries(plan, out)
            if study.text:
                from mechunlearn.storage import atomic_write_text

                atomic_write_text(out / "study.toml", study.text)
            write_json(out / "study.resolved.json", study.resolved())
            manifest = _Manifest(study, plan, out, executor_name)
            manifest.write(status, "running")
            todo = [step_id for step_id, state in status.items() if state == "pending"]
            log(f"study {study.study.name}: {len(plan)} steps, {len(todo)} to run, {len(plan) - len(todo)} done "
                f"before (skipped); executor {executor_name}; out {out}")
            failure = _execute(plan, out, todo, status, runner, settings, study, log, manifest)
            manifest.write(status, "failed" if failure else "done", time.perf_counter() - started)
    finally:
        runner.close()
    if failure is not None:
        raise failure
    outputs = [out / "manifest.json", *sorted(out.glob("tables/*/*.md")), *sorted(out.glob("report/index.html"))]
    wall = time.perf_counter() - started
    log(f"done in {wall:.0f} s: {sum(s == 'ran' for s in status.values())} steps ran, "
        f"{sum(s == 'skipped' for s in status.values())} skipped. Outputs in {out}/")
    for path in outputs:
        log(f"  {path.relative_to(out)}")
    return StudyRun(out, plan, status, wall, outputs)


def _execute(plan, out, todo, status, runner, settings, study, log, manifest) -> StepFailed | None:
    waiting = list(todo)
    total, finished_count = len(todo), 0
    failure: StepFailed | None = None
    while waiting or runner.running:
        if failure is None:
            for step_id in list(waiting):
                if runner.running >= runner.capacity:
                    break
                step = plan.steps[step_id]
                if any(status[source] not in ("skipped", "ran") for source in step.inputs.values()):
                    continue
                waiting.remove(step_id)
                inputs = {name: (source, read_json(out / source / "step.json"))
                          for name, source in step.inputs.items()}
                status[step_id] = "running"
                log(f"  start  {step.kind:13s} {step_id}")
                runner.submit(step_id, make_task(step, out, inputs, settings),
                              _resources(study, get_step_kind(step.kind)))
        if not runner.running:
            break
        for step_id, record, error, details in runner.wait():
            finished_count += 1
            if error is not None:
                status[step_id] = "failed"
                log(f"[{finished_count:>{len(str(total))}}/{total}] FAILED {step_id}: {error}")
                if failure is None:
                    failure = StepFailed(step_id, f"{type(error).__name__}: {error}", details)
                    failure.__cause__ = error
            else:
                status[step_id] = "ran"
                manifest.record(step_id)
                log(f"[{finished_count:>{len(str(total))}}/{total}] done   {plan.steps[step_id].kind:13s} {step_id} "
                    f"({record['wall_s']:.1f} s)")
            manifest.write(status, "running")
    return failure


class _Manifest:
    """``OUT/manifest.json``: the study, its key, the environment of the run, every step's status."""

    def __init__(self, study, plan: Plan, out: Path, executor: str) -> None:
        from mechunlearn.provenance import environment

        self.out, self.plan = out, plan
        self.header = {
            "study": study.study.name, "source": study.source,
            "study_key": config_digest({step.id: step.key for step in plan}), "executor": executor,
            "environment": environment(device=study.study.device, dtype=study.study.dtype, seeds=study.study.seeds,
                                       threads_setting=study.study.threads, argv=sys.argv, pid=os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.records: dict[str, dict[str, Any]] = {}
        for step in plan:
            self.record(step.id)

    def record(self, step_id: str) -> None:
        """Remember a finished step's wall time and where it ran (device, dtype, layer placement, host)."""
        step = self.plan.steps[step_id]
        path = self.out / step.id / "step.json"
        try:
            record = read_json(path) if path.is_file() else {}
        except ValueError:
            record = {}
        if record.get("key") == step.key:
            environment = record.get("environment", {})
            self.records[step_id] = {"wall_s": record.get("wall_s"), "cpu_s": record.get("cpu_s"), "environment": {
                key: environment.get(key) for key in ("hostname", "pid", "device", "dtype", "torch_threads",
                                                      "gpu_count", "seeds", "placement", "executor")}}

    def write(self, status: dict[str, str], state: str, wall_s: float | None = None) -> None:
        steps = []
        for step in self.plan:
            kind = get_step_kind(step.kind)
            done = self.records.get(step.id, {}) if status[step.id] in ("skipped", "ran") else {}
            steps.append({"id": step.id, "kind": step.kind, "stage": kind.stage, "model_id": step.model_id,
                          "key": step.key, "status": status[step.id], "wall_s": done.get("wall_s"),
                          "cpu_s": done.get("cpu_s"),
                          "environment": done.get("environment"), "inputs": dict(step.inputs)})
        write_json(self.out / "manifest.json", {**self.header, "status": state, "wall_s": wall_s,
                                                "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": steps})

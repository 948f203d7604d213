"""``mechunlearn run STUDY``: run a study (a TOML file, or the name of a shipped one: ``default``, ``micro``).

    mechunlearn run studies/default.toml                   # what is done is skipped
    mechunlearn run studies/default.toml --force evals     # rerun a stage (and what it feeds); --force all
    mechunlearn run studies/default.toml --executor ray    # or submitit
    mechunlearn run studies/micro.toml --set study.out=/tmp/x --set methods.npo.beta=[0.05,0.1]
    mechunlearn run studies/default.toml --plan            # list the steps and what is done, run nothing
"""

from __future__ import annotations

import sys


def _overrides(args) -> dict:
    from mechunlearn.pipeline.config import merge_tables, parse_assignment

    overrides: dict = {}
    for assignment in args.set or []:
        overrides = merge_tables(overrides, parse_assignment(assignment))
    study = {key: value for key, value in (("out", args.out), ("device", args.device), ("dtype", args.dtype))
             if value is not None}
    if study:
        overrides = merge_tables(overrides, {"study": study})
    return overrides


def _cmd_run(args) -> int:
    from mechunlearn.pipeline import StepFailed, load_study, plan_study, run_study, step_status

    study = load_study(args.study, overrides=_overrides(args))
    if args.plan:
        plan = plan_study(study, yes=args.yes)
        status = step_status(plan, study.out, args.force or ())
        for step in plan:
            print(f"{status[step.id]:5s} {step.kind:13s} {step.id}  {step.key}")
        todo = sum(state == "todo" for state in status.values())
        print(f"{len(plan)} steps, {todo} to run; out {study.out}")
        return 0
    try:
        run_study(study, force=args.force or (), executor=args.executor, yes=args.yes, progress=not args.quiet)
    except StepFailed as failure:
        if failure.details:
            print(failure.details.rstrip(), file=sys.stderr)
        print(f"mechunlearn run: {failure}; fix it and run the same command again (finished steps are kept)",
              file=sys.stderr)
        return 1
    return 0


def register(commands) -> None:
    from mechunlearn.pipeline.config import EXECUTORS

    run = commands.add_parser("run", help="run a study (TOML): data -> models -> unlearning -> evals -> "
                              "diagnostics -> tables; finished steps are skipped")
    run.add_argument("study", help="a study .toml file, or a shipped study's name (default, micro, full)")
    run.add_argument("--force", action="append", metavar="STEP",
                     help="rerun a stage or step kind (data, models, unlearned, evals, diagnostics, tables, ... or "
                          "all) and every step it feeds; repeatable. 'all' also lets a study take over an output "
                          "directory holding another study's results")
    run.add_argument("--executor", choices=EXECUTORS, help="override study.executor")
    run.add_argument("--out", help="override study.out")
    run.add_argument("--device", help="override study.device (auto | cpu | cuda | cuda:N)")
    run.add_argument("--dtype", help="override study.dtype (auto | fp32 | bf16 | fp16)")
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="override one value of the study (the value is read as TOML), e.g. methods.npo.lr=1e-3")
    run.add_argument("--yes", action="store_true", help="run method grids larger than the stated limit")
    run.add_argument("--plan", action="store_true", help="list the steps, their keys and what is done; run nothing")
    run.add_argument("--quiet", action="store_true", help="no progress bars inside the steps")
    run.set_defaults(handler=_cmd_run)

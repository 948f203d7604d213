"""``mechunlearn demo`` (``make demo``): the default study, end to end, then where its report is.

    mechunlearn demo                      # = mechunlearn run default, then the methods table and the report's path
    mechunlearn demo --out outputs/mine   # elsewhere; --executor ray, --device cuda, --force STAGE as for run

The default study (``mechunlearn/studies/default.toml``) runs through the study pipeline: data -> base and gold
(pretrained once into the shared cache) -> ga, npo, rmu, cb_lat, whp x 3 seeds -> evals -> every attack (seed 0
of each method, demo-sized budgets) -> diagnostics -> tables -> report -> figures. Each step prints when it
starts and ``[i/n] done ... (seconds)`` when it ends; finished steps are skipped, so a second run takes seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_STUDY = "default"


def _cmd_demo(args) -> int:
    from mechunlearn.cli.study import _cmd_run
    from mechunlearn.pipeline import load_study

    run_args = argparse.Namespace(study=DEMO_STUDY, plan=False, yes=False, set=[], force=args.force,
                                  executor=args.executor, out=args.out, device=args.device, dtype=args.dtype,
                                  quiet=args.quiet)
    status = _cmd_run(run_args)
    if status != 0:
        return status
    from mechunlearn.cli.study import _overrides

    out = load_study(DEMO_STUDY, overrides=_overrides(run_args)).out
    methods = out / "tables" / "methods" / "methods.md"
    if methods.is_file():
        print(f"\nThe methods table ({_shown(methods)}):\n")
        print(methods.read_text().rstrip())
    print(f"\nThe report: {_shown(out / 'report' / 'index.html')} (one offline HTML file); figures in "
          f"{_shown(out / 'figures')}/; every table as CSV and Markdown in {_shown(out / 'tables')}/")
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it lies below it (what a user can paste)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def register(commands) -> None:
    from mechunlearn.pipeline.config import EXECUTORS

    demo = commands.add_parser("demo", help="the default study end to end (mechunlearn run default), then the "
                               "methods table and the report's path")
    demo.add_argument("--out", help="override study.out (default: outputs/default)")
    demo.add_argument("--executor", choices=EXECUTORS, help="override study.executor (default: serial)")
    demo.add_argument("--device", help="override study.device (auto | cpu | cuda | cuda:N)")
    demo.add_argument("--dtype", help="override study.dtype (auto | fp32 | bf16 | fp16)")
    demo.add_argument("--force", action="append", metavar="STEP", help="rerun a stage or step kind (and what it "
                      "feeds), as for mechunlearn run")
    demo.add_argument("--quiet", action="store_true", help="no progress bars inside the steps")
    demo.set_defaults(handler=_cmd_demo)

"""``mechunlearn report methods OUT [OUT ...] [--into FILE]``: the docs' methods table from study runs;
``mechunlearn report robustness TABLES [--into FILE]``: the docs' robustness table from an attacks run;
``mechunlearn report study OUT [--assets DIR] [--into README.md]``: the README's account of a study run."""

from __future__ import annotations


def _cmd_report_methods(args) -> int:
    from mechunlearn.report.doc_tables import methods_report, write_into

    command = "mechunlearn report methods " + " ".join(args.outs)
    text = methods_report(args.outs, command=command)
    if args.into:
        print(f"wrote {write_into(args.into, text)}")
    else:
        print(text, end="")
    return 0


def _cmd_report_robustness(args) -> int:
    from mechunlearn.report.doc_tables import robustness_report, write_into

    text = robustness_report(args.table, command=f"mechunlearn report robustness {args.table}")
    if args.into:
        print(f"wrote {write_into(args.into, text, kind='robustness')}")
    else:
        print(text, end="")
    return 0


def _cmd_report_study(args) -> int:
    from pathlib import Path

    from mechunlearn.report.doc_tables import study_report, write_into

    command = f"mechunlearn report study {args.out}" + (f" --assets {args.assets}" if args.assets else "")
    link_from = Path(args.into).parent if args.into else Path(".")
    text = study_report(args.out, command=command, assets=args.assets, link_from=link_from)
    if args.into:
        print(f"wrote {write_into(args.into, text, kind='study')}")
    else:
        print(text, end="")
    return 0


def register(commands) -> None:
    report = commands.add_parser("report", help="tables for the docs, written from study runs")
    kinds = report.add_subparsers(dest="report_kind", required=True)
    methods = kinds.add_parser("methods", help="the methods table over seeds (one section per run, e.g. 1 and 2 "
                               "torch threads) with each method's verdict across runs")
    methods.add_argument("outs", nargs="+", metavar="OUT", help="output directories of finished study runs")
    methods.add_argument("--into", default=None, metavar="FILE",
                         help="replace the generated section of FILE (e.g. docs/methods.md) instead of printing")
    methods.set_defaults(handler=_cmd_report_methods)
    robustness = kinds.add_parser("robustness", help="the robustness table of an attacks run (a study's "
                                  "tables/robustness or `mechunlearn attack all`'s OUT/tables)")
    robustness.add_argument("table", metavar="TABLES", help="folder holding robustness.md (or the file)")
    robustness.add_argument("--into", default=None, metavar="FILE",
                            help="replace the generated section of FILE (e.g. docs/attacks.md) instead of printing")
    robustness.set_defaults(handler=_cmd_report_robustness)
    study = kinds.add_parser("study", help="a study run for the README: what make demo printed, a figure, the "
                             "brittleness signature, robustness without attack and under relearning")
    study.add_argument("out", metavar="OUT", help="a finished study's output directory")
    study.add_argument("--assets", default=None, metavar="DIR", help="copy the figure here (e.g. docs/img)")
    study.add_argument("--into", default=None, metavar="FILE", help="replace the generated section of FILE")
    study.set_defaults(handler=_cmd_report_study)

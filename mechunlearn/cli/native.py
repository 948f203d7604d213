"""``mechunlearn native switch`` / ``mechunlearn native report``: the natively unlearnable model."""

from __future__ import annotations

import json

from mechunlearn.cli.common import add_common


def _cmd_switch(args) -> int:
    from mechunlearn.cli.common import resolve_world
    from mechunlearn.native import export, switch
    from mechunlearn.reference import pretrain

    model_dir = args.model
    if model_dir == "native":  # the world's native model, pretrained if needed
        model_dir = pretrain(resolve_world(args.world, args.seed), "native", progress=not args.quiet)
    off = [s.strip() for s in args.off.split(",") if s.strip()] if args.off else []
    model = switch(model_dir, off=off, route=args.route, source=args.source, device=args.device, dtype=args.dtype)
    directory = export(model, args.out)
    print(json.dumps({"out": str(directory), **model.native_switch,
                      "form": "baked HF checkpoint" if (directory / "native-switch.json").is_file()
                      else "native weights + native.json (reapply with mechunlearn.native.switch(DIR))"}, indent=2))
    return 0


def _cmd_report(args) -> int:
    from mechunlearn.native.report import main as report_main

    return report_main(["--world", args.world, "--seed", str(args.seed), "--out", args.out]
                       + (["--sources", args.sources] if args.sources else []) + (["--quick"] if args.quick else []))


def register(commands) -> None:
    native = commands.add_parser("native", help="the natively unlearnable model: switch sources off, report")
    sub = native.add_subparsers(dest="native_command", required=True)
    switch = sub.add_parser("switch", help="switch sources of a native model off and write the result")
    switch.add_argument("--model", default="native", help="native checkpoint directory, or 'native' (the world's)")
    switch.add_argument("--world", default="default", help="world directory or size preset (for --model native)")
    switch.add_argument("--seed", type=int, default=0, help="world seed when --world is a preset")
    switch.add_argument("--off", default="", help="comma-separated source ids to switch off")
    switch.add_argument("--route", default="nearest", help="nearest | centroid | backbone | none (default: nearest)")
    switch.add_argument("--source", default=None, help="route every query to this source's mask (their 'on')")
    switch.add_argument("--out", required=True, help="output directory")
    add_common(switch)
    switch.set_defaults(handler=_cmd_switch)

    report = sub.add_parser("report", help="measure the native model on the world (the tables of docs/native.md)")
    report.add_argument("--world", default="default")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--sources", default="", help="comma-separated switch-off targets (default: docs' set)")
    report.add_argument("--out", default="outputs/native", help="directory for the CSVs and tables.md")
    report.add_argument("--quick", action="store_true", help="fewer bootstrap resamples, no attribution")
    add_common(report)
    report.set_defaults(handler=_cmd_report)

"""``mechunlearn demo``: the embedded study end to end on the CPU."""

from __future__ import annotations

from pathlib import Path

from mechunlearn.cli.common import add_common


def _cmd_demo(args) -> int:
    from mechunlearn.demo import run_demo

    return run_demo(out=Path(args.out), size=args.size, device=args.device, progress=not args.quiet)


def register(commands) -> None:
    demo = commands.add_parser("demo", help="the embedded study end to end on the CPU")
    demo.add_argument("--size", default="default", help="world size preset (default: default)")
    demo.add_argument("--out", default="outputs/demo")
    add_common(demo)
    demo.set_defaults(handler=_cmd_demo)

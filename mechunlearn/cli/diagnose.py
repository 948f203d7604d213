"""``mechunlearn diagnose``: the analyses of a model pair in the seed's output layout."""

from __future__ import annotations

from pathlib import Path

from mechunlearn.cli.common import add_common, resolve_model_dir, resolve_world


def _cmd_diagnose(args) -> int:
    from mechunlearn.diagnostics.study import diagnose

    world = resolve_world(args.world, args.seed) if (args.world or args.base in ("base", "gold")) else None
    base_dir = resolve_model_dir(args.base, world, progress=not args.quiet)
    other_dir = resolve_model_dir(args.other, world, progress=not args.quiet)
    analyses = [name.strip() for name in args.analyses.split(",")] if args.analyses else None
    written = diagnose(base_dir, other_dir, out=Path(args.out), analyses=analyses, world=world,
                       forget_file=args.forget, retain_file=args.retain, max_samples=args.max_samples,
                       device=args.device, dtype=args.dtype, progress=not args.quiet,
                       base_name=args.base_name, other_name=args.other_name, force=getattr(args, "force", False))
    for path in written:
        print(path)
    return 0


def register(commands) -> None:
    diagnose = commands.add_parser("diagnose", help="weight- and activation-space diagnostics of a model pair")
    diagnose.add_argument("--base", required=True, help="base | gold | checkpoint directory")
    diagnose.add_argument("--other", required=True, help="base | gold | checkpoint directory")
    diagnose.add_argument("--analyses", help="comma-separated analysis names (default: all)")
    diagnose.add_argument("--max-samples", type=int, default=500, help="texts per split (default 500)")
    diagnose.add_argument("--world", default=None, help="world for texts and MCQ items (default: default)")
    diagnose.add_argument("--seed", type=int, default=0)
    diagnose.add_argument("--forget", help="forget texts file instead of the world's")
    diagnose.add_argument("--retain", help="retain texts file instead of the world's")
    diagnose.add_argument("--base-name", help="name of the base model in the output layout")
    diagnose.add_argument("--other-name", help="name of the other model in the output layout")
    diagnose.add_argument("--out", default="outputs")
    diagnose.add_argument("--force", action="store_true", help="recompute analyses whose output already exists")
    add_common(diagnose)
    diagnose.set_defaults(handler=_cmd_diagnose)

"""``mechunlearn diagnose``: the analyses of a model pair in the seed's output layout; ``--list`` names them.

    mechunlearn diagnose --base base --other gold --world micro
    mechunlearn diagnose --base ~/pythia-410m --other runs/npo/model --forget forget.txt --retain retain.txt \\
        --mcq-forget wmdp_bio.jsonl --mcq-general mmlu.jsonl
    mechunlearn diagnose --list
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mechunlearn.cli.common import add_common, add_download_flag, resolve_model_dir, resolve_world

ANALYSES_MARKER = "{analyses}"


def _analysis_lines() -> str:
    from mechunlearn.diagnostics import describe_analyses
    from mechunlearn.diagnostics.study_inputs import EVALS

    described = {EVALS: "step 0: capabilities of each model (evaluate_model: MCQ accuracy, NLL, collapse flags)"}
    described |= describe_analyses()
    width = max(len(name) for name in described)
    return "\n".join(f"  {name:{width}s}  {description}" for name, description in described.items())


class _HelpWithAnalyses(argparse.RawDescriptionHelpFormatter):
    """Fills the epilog's analysis list only when help is printed: listing them imports every analysis module
    (torch, sklearn...), which the other commands should not pay for at start-up."""

    def add_text(self, text):
        if text and ANALYSES_MARKER in text:
            text = text.replace(ANALYSES_MARKER, _analysis_lines())
        super().add_text(text)


def _cmd_diagnose(args) -> int:
    from mechunlearn.diagnostics.study import diagnose

    if args.list:
        print(_analysis_lines())
        return 0
    missing = [flag for flag, value in (("--base", args.base), ("--other", args.other)) if not value]
    if missing:
        raise ValueError(f"diagnose needs {' and '.join(missing)} (base | gold | checkpoint directory); "
                         "--list names the analyses")
    own_data = any((args.forget, args.retain, args.mcq_forget, args.mcq_general))
    needs_world = args.world is not None or not own_data or {args.base, args.other} & {"base", "gold"}
    world = resolve_world(args.world, args.seed) if needs_world else None
    base_dir = resolve_model_dir(args.base, world, progress=not args.quiet, allow_download=args.allow_download)
    other_dir = resolve_model_dir(args.other, world, progress=not args.quiet, allow_download=args.allow_download)
    analyses = [name.strip() for name in args.analyses.split(",")] if args.analyses else None
    # With the user's own texts or items and no --world, the world only located base / gold: do not mix its data in.
    data_world = world if args.world is not None or not own_data else None
    written = diagnose(base_dir, other_dir, out=Path(args.out), analyses=analyses, world=data_world,
                       forget_file=args.forget, retain_file=args.retain, mcq_forget_file=args.mcq_forget,
                       mcq_retain_file=args.mcq_general, max_samples=args.max_samples, device=args.device,
                       dtype=args.dtype, progress=not args.quiet, base_name=args.base_name,
                       other_name=args.other_name, force=args.force)
    for path in written:
        print(path)
    return 0


def register(commands) -> None:
    diagnose = commands.add_parser(
        "diagnose", help="weight- and activation-space diagnostics of a model pair (--list names them)",
        formatter_class=_HelpWithAnalyses,
        epilog=f"analyses (default: all that the inputs allow):\n{ANALYSES_MARKER}\n\nOutputs are keyed by the "
               "models' weights, the data and the options: a rerun skips what is current and recomputes the rest.")
    diagnose.add_argument("--list", action="store_true", help="name every analysis with a one-line description")
    diagnose.add_argument("--base", help="base | gold | checkpoint directory")
    diagnose.add_argument("--other", help="base | gold | checkpoint directory")
    diagnose.add_argument("--analyses", help="comma-separated analysis names (default: all; see --list)")
    diagnose.add_argument("--max-samples", type=int, default=500, help="texts per split (default 500)")
    diagnose.add_argument("--world", default=None, help="world for texts, MCQ items and facts (default: default, "
                          "or none when --forget/--retain/--mcq-forget/--mcq-general are given)")
    diagnose.add_argument("--seed", type=int, default=0, help="world seed when --world is a preset")
    diagnose.add_argument("--forget", help="forget texts (.txt one per line, or .jsonl with a text field)")
    diagnose.add_argument("--retain", help="retain texts (.txt or .jsonl)")
    diagnose.add_argument("--mcq-forget", help="forget-domain multiple choice, WMDP layout (.jsonl: question, "
                          "choices, answer)")
    diagnose.add_argument("--mcq-general", help="general multiple choice, MMLU layout (.jsonl)")
    diagnose.add_argument("--base-name", help="name of the base model in the output layout")
    diagnose.add_argument("--other-name", help="name of the other model in the output layout")
    diagnose.add_argument("--out", default="outputs")
    diagnose.add_argument("--force", action="store_true", help="recompute every output, even those whose key is "
                          "current")
    add_common(diagnose)
    add_download_flag(diagnose)
    diagnose.set_defaults(handler=_cmd_diagnose)

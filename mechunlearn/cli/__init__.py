"""``mechunlearn``: the command line.

    mechunlearn world build [--size micro|default] [--seed N] [--out DIR]
    mechunlearn pretrain [--world DIR|default|micro] [--which base,gold]
    mechunlearn info MODEL
    mechunlearn unlearn METHOD [--model base|DIR] [--world default|DIR | --forget F --retain R] [--lr ...] [--beta ...]
    mechunlearn unlearn --list
    mechunlearn eval MODEL [--world ...]
    mechunlearn diagnose --base A --other B [--analyses ...] [--max-samples 500] [--out outputs/]
    mechunlearn attack --list | NAME --model M [--gold G] | all --models M1,M2 --gold G
    mechunlearn demo [--out DIR]            (= mechunlearn run default, then the methods table and the report)
    mechunlearn run STUDY.toml [--force STEP] [--executor serial|ray|submitit] [--plan]
    mechunlearn generate --prompt TEXT MODEL [MODEL ...] [--max-new-tokens 20] [--top-k 5] [--sample --seed S]
    mechunlearn figures OUT [--dest DIR] [--formats pdf,svg,png]
    mechunlearn report methods OUT [OUT ...] [--into docs/methods.md]
    mechunlearn native switch --model DIR --off SOURCE[,SOURCE] --route nearest|centroid|backbone|none --out DIR
    mechunlearn native report [--world default] [--out DIR]

One module per command group in this package, each with a ``register(commands)`` that adds its sub-parsers;
adding a command = one module + one line in ``COMMAND_MODULES``. Every command takes ``--device
auto|cpu|cuda[:N]`` and ``--dtype auto|fp32|bf16|fp16``. Bad input ends with one line naming the problem and the
fix (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mechunlearn.cli.common import quiet_output, resolve_model_dir, resolve_world

__all__ = ["main", "build_parser", "resolve_world", "resolve_model_dir", "COMMAND_MODULES"]

COMMAND_MODULES = ("world", "unlearn", "evaluate", "diagnose", "attack", "generate", "demo", "study", "figures",
                   "report", "native")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mechunlearn", description="Did an unlearned model forget, or does it "
                                     "only hide? Make, attack and open up unlearned GPT-NeoX models.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"mechunlearn.cli.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mechunlearn.training import TrainingError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if extra and not getattr(args, "takes_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        with quiet_output(getattr(args, "quiet", False)):
            if getattr(args, "takes_extra", False):
                return args.handler(args, extra)
            return args.handler(args)
    except (ValueError, FileNotFoundError, TrainingError) as error:
        print(f"mechunlearn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

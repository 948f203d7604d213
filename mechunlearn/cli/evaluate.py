"""``mechunlearn eval MODEL``: every eval of one model."""

from __future__ import annotations

import json

from mechunlearn.cli.common import add_common, resolve_model_dir, resolve_world


def _cmd_eval(args) -> int:
    from mechunlearn import models
    from mechunlearn.evals import evaluate_model

    world = resolve_world(args.world, args.seed)
    model = models.load(resolve_model_dir(args.model, world, progress=not args.quiet), device=args.device,
                        dtype=args.dtype)
    metrics = evaluate_model(model, world)
    print(json.dumps({k: v for k, v in metrics.items() if k != "forget_truth_ratios"}, indent=2, default=str))
    return 0


def register(commands) -> None:
    evaluate = commands.add_parser("eval", help="evaluate a model on the world's probes")
    evaluate.add_argument("model", help="base | gold | checkpoint directory")
    evaluate.add_argument("--world", default="default")
    evaluate.add_argument("--seed", type=int, default=0)
    add_common(evaluate)
    evaluate.set_defaults(handler=_cmd_eval)

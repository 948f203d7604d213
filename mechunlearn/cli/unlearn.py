"""``mechunlearn unlearn METHOD``: one unlearning run; ``--list`` names every method."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mechunlearn.cli.common import (LONG_METRICS, add_common, add_download_flag, parse_extra_flags,
                                    resolve_model_dir, resolve_world)


def _cmd_unlearn(args, extra: list[str]) -> int:
    from mechunlearn.methods import available, create, get_method

    if args.list:
        for name in available():
            method_class = get_method(name)
            defaults = method_class.Config().to_dict()
            print(f"{name:12s} {method_class.summary}")
            print("             " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in defaults.items()))
        return 0
    if not args.method:
        raise ValueError("name a method (mechunlearn unlearn METHOD) or pass --list to see them")
    if args.track:
        from mechunlearn.tracking import require_backend

        require_backend(args.track, "--track")  # before the training, not after it
    preset = args.preset
    if preset == "auto":
        preset = "world" if args.model in ("base", "gold") and not (args.forget or args.retain) else None
    method = create(args.method, preset=None if preset == "none" else preset, **parse_extra_flags(extra))
    world, forget, retain = _unlearn_data(args)
    model_dir = resolve_model_dir(args.model, world, progress=not args.quiet, allow_download=args.allow_download)
    from mechunlearn.evals import evaluate_model
    from mechunlearn.unlearn import run

    out_root = Path(args.out) / "unlearned_models"
    run_dir = run(method, model_dir, out_root, forget, retain, world=world, force=args.force, device=args.device,
                  dtype=args.dtype, progress=not args.quiet,
                  evaluate=lambda model: evaluate_model(model, world) if world is not None else
                  evaluate_model(model, forget_texts=forget, retain_texts=retain))
    record = json.loads((run_dir / "run.json").read_text())
    metrics = record.get("metrics", {})
    print(json.dumps({"run": str(run_dir), "wall_time_s": record["wall_time_s"],
                      "load_dtype": record.get("load_dtype"), "precision": record.get("precision"),
                      "metrics": {k: v for k, v in metrics.items() if k not in LONG_METRICS}}, indent=2,
                     default=str))
    if args.track:
        from mechunlearn.tracking import track

        track({"backend": args.track, "experiment": args.track_experiment}, run_dir.name,
              {"method": record["method"], **record.get("config", {})}, metrics,
              tags={"run": str(run_dir), "key": record.get("key", "")})
    if isinstance(metrics.get("collapse"), dict) and metrics["collapse"].get("collapsed"):
        print(f"WARNING: the unlearned model looks collapsed: {metrics['collapse'].get('reasons')}",
              file=sys.stderr)
    return 0


def _unlearn_data(args):
    from mechunlearn.data import load_texts

    if args.forget or args.retain:
        if not args.forget:
            raise ValueError("--retain given without --forget: pass the forget texts too")
        forget = load_texts(args.forget)
        retain = load_texts(args.retain) if args.retain else []
        world = resolve_world(args.world, args.seed) if args.model in ("base", "gold") else None
        return world, forget, retain
    world = resolve_world(args.world, args.seed)
    return world, world.forget_texts(), world.retain_texts()


def register(commands) -> None:
    unlearn = commands.add_parser("unlearn", help="unlearn with a method; extra --name value flags set its "
                                  "hyper-parameters (see --list)")
    unlearn.add_argument("method", nargs="?", help="method name (see --list)")
    unlearn.add_argument("--list", action="store_true", help="list the methods with their defaults")
    unlearn.add_argument("--model", default="base", help="base | gold | checkpoint directory (default: base)")
    unlearn.add_argument("--world", default=None, help="world directory or preset (default: default)")
    unlearn.add_argument("--seed", type=int, default=0, help="world seed when --world is a preset")
    unlearn.add_argument("--forget", help="forget texts (.txt one per line, or .jsonl with a text field)")
    unlearn.add_argument("--retain", help="retain texts (.txt or .jsonl)")
    unlearn.add_argument("--out", default="outputs", help="output root (runs go to OUT/unlearned_models/)")
    unlearn.add_argument("--force", action="store_true", help="rerun even if a finished run has the same key")
    unlearn.add_argument("--preset", default="auto", help="hyper-parameter starting point: world (tuned for the "
                         "embedded world's tiny models), none (the seed pipeline's defaults), or auto (world for "
                         "--model base|gold on a world, else none)")
    unlearn.add_argument("--track", choices=("mlflow", "wandb"), default=None,
                         help="also log the run's hyper-parameters and metrics to MLflow (MLFLOW_TRACKING_URI) or "
                         "W&B (WANDB_MODE); needs that package")
    unlearn.add_argument("--track-experiment", default="mechunlearn",
                         help="MLflow experiment / W&B project of --track (default: mechunlearn)")
    add_common(unlearn)
    add_download_flag(unlearn)
    unlearn.set_defaults(handler=_cmd_unlearn, takes_extra=True)

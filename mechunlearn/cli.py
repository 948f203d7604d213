"""``mechunlearn``: the command line.

    mechunlearn world build [--size micro|default] [--seed N] [--out DIR]
    mechunlearn pretrain [--world DIR|default|micro] [--which base,gold]
    mechunlearn info MODEL
    mechunlearn unlearn METHOD [--model base|DIR] [--world default|DIR | --forget F --retain R] [--lr ...] [--beta ...]
    mechunlearn unlearn --list
    mechunlearn eval MODEL [--world ...]
    mechunlearn diagnose --base A --other B [--analyses ...] [--max-samples 500] [--out outputs/]
    mechunlearn demo

Every command takes ``--device auto|cpu|cuda[:N]`` and ``--dtype auto|fp32|bf16|fp16``. Bad input ends with one
line naming the problem and the fix (exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main", "resolve_world", "resolve_model_dir"]


# ------------------------------------------------------------------------------------------------ shared resolution
def resolve_world(spec: str | None, seed: int = 0):
    """A world from a directory, or a size preset name built (once) into the cache."""
    from mechunlearn.reference import cache_root
    from mechunlearn.world import PRESETS, build_world, load_world

    spec = spec or "default"
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_world(path)
    if spec in PRESETS:
        target = cache_root() / "worlds" / f"{spec}-seed{seed}"
        if (target / "manifest.json").is_file():
            return load_world(target)
        return build_world(size=spec, seed=seed, out=target)
    raise ValueError(f"--world {spec!r} is neither a world directory nor a size preset "
                     f"({', '.join(PRESETS)}); build one with `mechunlearn world build --out DIR`")


def resolve_model_dir(spec: str, world=None, progress: bool = True) -> Path:
    """``base``/``gold`` (the world's reference models, pretrained if needed) or a checkpoint directory/name."""
    from mechunlearn.models import resolve_checkpoint_dir
    from mechunlearn.reference import REFERENCE_KINDS, pretrain

    if spec in REFERENCE_KINDS:
        if world is None:
            raise ValueError(f"--model {spec} needs a world (--world default|micro|DIR)")
        return pretrain(world, spec, progress=progress)
    return resolve_checkpoint_dir(spec)


# Per-item lists kept in run.json but left out of the printed summary.
_LONG_METRICS = ("generations", "forget_truth_ratios")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _parse_extra_flags(extra: list[str]) -> dict[str, str]:
    """``--beta 0.2 --layer-ids 1-2`` -> ``{"beta": "0.2", "layer_ids": "1-2"}`` (typed later by the method)."""
    overrides: dict[str, str] = {}
    index = 0
    while index < len(extra):
        flag = extra[index]
        if not flag.startswith("--"):
            raise ValueError(f"unexpected argument {flag!r}: hyper-parameters are given as --name value")
        if "=" in flag:
            name, value = flag[2:].split("=", 1)
            index += 1
        else:
            if index + 1 >= len(extra):
                raise ValueError(f"{flag} needs a value")
            name, value = flag[2:], extra[index + 1]
            index += 2
        overrides[name.replace("-", "_")] = value
    return overrides


# ---------------------------------------------------------------------------------------------------- commands
def _cmd_world_build(args) -> int:
    from mechunlearn.world import build_world

    out = Path(args.out) if args.out else Path("worlds") / f"{args.size}-seed{args.seed}"
    world = build_world(size=args.size, seed=args.seed, out=out)
    print(json.dumps({"out": str(out), "content_hash": world.content_hash, **world.stats()}, indent=2, default=str))
    return 0


def _cmd_pretrain(args) -> int:
    from mechunlearn.reference import pretrain
    from mechunlearn.evals.cloze import cloze_accuracy
    from mechunlearn import models

    world = resolve_world(args.world, args.seed)
    for which in [name.strip() for name in args.which.split(",") if name.strip()]:
        directory = pretrain(world, which, force=args.force, progress=not args.quiet)
        model = models.load(directory, device=args.device, dtype=args.dtype)
        summary = json.loads((directory / "pretrain.json").read_text())
        accuracy = {domain: round(cloze_accuracy(model, model.tokenizer, world.cloze_probes(domain)), 4)
                    for domain in ("forget", "retain")}
        print(json.dumps({"which": which, "dir": str(directory), "wall_time_s": summary["wall_time_s"],
                          "final_loss": summary["final_loss"], "cloze_accuracy": accuracy}, indent=2))
    return 0


def _cmd_info(args) -> int:
    from mechunlearn import models

    model = models.load(args.model, device=args.device, dtype=args.dtype)
    cfg = model.cfg
    info = {"model": args.model, "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
            "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "d_vocab": cfg.d_vocab, "n_ctx": cfg.n_ctx,
            "rotary_dim": cfg.rotary_dim, "parallel_attn_mlp": cfg.parallel_attn_mlp,
            "parameters": sum(p.numel() for p in model.parameters()), "device": str(cfg.device),
            "dtype": str(cfg.dtype), "tokenizer": model.tokenizer is not None}
    print(json.dumps(info, indent=2))
    print("hook names:")
    for name in model.hook_dict:
        if not name.startswith("blocks.") or name.startswith("blocks.0."):
            print("  " + name)
    print(f"  (blocks.1 .. blocks.{cfg.n_layers - 1} repeat the blocks.0 names)")
    return 0


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
    preset = args.preset
    if preset == "auto":
        preset = "world" if args.model in ("base", "gold") and not (args.forget or args.retain) else None
    method = create(args.method, preset=None if preset == "none" else preset, **_parse_extra_flags(extra))
    world, forget, retain = _unlearn_data(args)
    model_dir = resolve_model_dir(args.model, world, progress=not args.quiet)
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
                      "metrics": {k: v for k, v in metrics.items() if k not in _LONG_METRICS}}, indent=2,
                     default=str))
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


def _cmd_eval(args) -> int:
    from mechunlearn import models
    from mechunlearn.evals import evaluate_model

    world = resolve_world(args.world, args.seed)
    model = models.load(resolve_model_dir(args.model, world, progress=not args.quiet), device=args.device,
                        dtype=args.dtype)
    metrics = evaluate_model(model, world)
    print(json.dumps({k: v for k, v in metrics.items() if k != "forget_truth_ratios"}, indent=2, default=str))
    return 0


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


def _cmd_demo(args) -> int:
    from mechunlearn.demo import run_demo

    return run_demo(out=Path(args.out), size=args.size, device=args.device, progress=not args.quiet)


# ------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mechunlearn", description="Did an unlearned model forget, or does it "
                                     "only hide? Make, attack and open up unlearned GPT-NeoX models.")
    commands = parser.add_subparsers(dest="command", required=True)

    world = commands.add_parser("world", help="the embedded synthetic knowledge world")
    world_commands = world.add_subparsers(dest="world_command", required=True)
    build = world_commands.add_parser("build", help="generate a world into a directory")
    build.add_argument("--size", default="default", help="micro | default")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--out", help="output directory (default: worlds/SIZE-seedN)")
    _add_common(build)
    build.set_defaults(handler=_cmd_world_build)

    pretrain = commands.add_parser("pretrain", help="pretrain the world's reference models (cached)")
    pretrain.add_argument("--world", default="default", help="world directory or size preset (default: default)")
    pretrain.add_argument("--seed", type=int, default=0, help="world seed when --world is a preset")
    pretrain.add_argument("--which", default="base,gold", help="comma-separated: base, gold")
    pretrain.add_argument("--force", action="store_true", help="retrain even if cached")
    _add_common(pretrain)
    pretrain.set_defaults(handler=_cmd_pretrain)

    info = commands.add_parser("info", help="config, parameter count and hook names of a checkpoint")
    info.add_argument("model", help="checkpoint directory or HF-cache name")
    _add_common(info)
    info.set_defaults(handler=_cmd_info)

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
    _add_common(unlearn)
    unlearn.set_defaults(handler=_cmd_unlearn, takes_extra=True)

    evaluate = commands.add_parser("eval", help="evaluate a model on the world's probes")
    evaluate.add_argument("model", help="base | gold | checkpoint directory")
    evaluate.add_argument("--world", default="default")
    evaluate.add_argument("--seed", type=int, default=0)
    _add_common(evaluate)
    evaluate.set_defaults(handler=_cmd_eval)

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
    _add_common(diagnose)
    diagnose.set_defaults(handler=_cmd_diagnose)

    demo = commands.add_parser("demo", help="the embedded study end to end on the CPU")
    demo.add_argument("--size", default="default", help="world size preset (default: default)")
    demo.add_argument("--out", default="outputs/demo")
    _add_common(demo)
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mechunlearn.training import TrainingError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if extra and not getattr(args, "takes_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if getattr(args, "takes_extra", False):
            return args.handler(args, extra)
        return args.handler(args)
    except (ValueError, FileNotFoundError, TrainingError) as error:
        print(f"mechunlearn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

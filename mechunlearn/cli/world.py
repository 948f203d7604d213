"""``mechunlearn world build``, ``mechunlearn pretrain``, ``mechunlearn info``: the world and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from mechunlearn.cli.common import add_common, add_download_flag, resolve_world


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
        if (directory / "native.json").is_file():  # the native model: all sources on, nearest routing
            from mechunlearn.native import switch

            model = switch(model)
        summary = json.loads((directory / "pretrain.json").read_text())
        accuracy = {domain: round(cloze_accuracy(model, model.tokenizer, world.cloze_probes(domain)), 4)
                    for domain in ("forget", "retain")}
        print(json.dumps({"which": which, "dir": str(directory), "wall_time_s": summary["wall_time_s"],
                          "final_loss": summary["final_loss"], "cloze_accuracy": accuracy}, indent=2))
    return 0


def _cmd_info(args) -> int:
    from mechunlearn import models

    model = models.load(args.model, device=args.device, dtype=args.dtype, allow_download=args.allow_download)
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


def register(commands) -> None:
    world = commands.add_parser("world", help="the embedded synthetic knowledge world")
    world_commands = world.add_subparsers(dest="world_command", required=True)
    build = world_commands.add_parser("build", help="generate a world into a directory")
    build.add_argument("--size", default="default", help="micro | default")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--out", help="output directory (default: worlds/SIZE-seedN)")
    add_common(build)
    build.set_defaults(handler=_cmd_world_build)

    pretrain = commands.add_parser("pretrain", help="pretrain the world's reference models (cached)")
    pretrain.add_argument("--world", default="default", help="world directory or size preset (default: default)")
    pretrain.add_argument("--seed", type=int, default=0, help="world seed when --world is a preset")
    pretrain.add_argument("--which", default="base,gold", help="comma-separated: base, gold, native")
    pretrain.add_argument("--force", action="store_true", help="retrain even if cached")
    add_common(pretrain)
    pretrain.set_defaults(handler=_cmd_pretrain)

    info = commands.add_parser("info", help="config, parameter count and hook names of a checkpoint")
    info.add_argument("model", help="checkpoint directory or HF-cache name")
    add_common(info)
    add_download_flag(info)
    info.set_defaults(handler=_cmd_info)

"""``mechunlearn attack``: one attack on a model next to the gold standard, or every attack on many models.

    mechunlearn attack --list
    mechunlearn attack NAME --model M [--gold G] [--base B] [--world W | --forget-mcq Q ...] [--out DIR] [--field value]
    mechunlearn attack all --models M1,id=DIR,... --gold G [--base B] [--attacks a,b] [--set relearn.lrs=1e-3]
                           [--workers N] [--out DIR]

Models are ``base`` / ``gold`` (the world's reference models, pretrained and cached if needed), checkpoint
directories, or ``id=DIR`` to name one. Results go to ``OUT/attacks/<attack>/<model id>/``; ``all`` also writes
``OUT/tables/robustness.csv`` and ``.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mechunlearn.cli.common import add_common, add_download_flag, parse_extra_flags, resolve_model_dir, resolve_world


def _model_id(spec: str, directory: Path) -> str:
    if spec in ("base", "gold"):
        return spec
    return directory.parent.name if directory.name == "model" else directory.name


def _models(specs: list[str], world, quiet: bool,
            allow_download: bool = False) -> tuple[dict[str, Path], dict[str, str]]:
    """``{model id: checkpoint directory}`` and ``{spec as given: model id}``."""
    models: dict[str, Path] = {}
    ids: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        directory = resolve_model_dir(path, world, progress=not quiet, allow_download=allow_download)
        model_id = name or _model_id(path, directory)
        if model_id in models:
            raise ValueError(f"two models are called {model_id!r}; name them with id=DIR")
        models[model_id] = directory
        ids[spec] = ids[path] = model_id
    return models, ids


def _data(args):
    from mechunlearn.attacks import AttackData

    if args.forget_mcq:
        return None, AttackData.from_files(forget_mcq=args.forget_mcq, general_mcq=args.general_mcq,
                                           forget_texts=args.forget, retain_texts=args.retain)
    if args.general_mcq or args.forget or args.retain:
        raise ValueError("--general-mcq / --forget / --retain describe your own data and need --forget-mcq (the "
                         "facts to recover); without them the world is used")
    world = resolve_world(args.world, args.seed)
    return world, AttackData.from_world(world)


def _brief(summary: dict) -> dict:
    keep = ("attack", "headline", "headline_rule", "forget", "retain", "vs_gold", "curve_vs_gold", "best_lr",
            "success_rate", "backend", "variants")
    return {key: summary[key] for key in keep if key in summary}


def _cmd_attack(args, extra: list[str]) -> int:
    from mechunlearn.attacks import available_attacks, get_attack

    if args.list:
        for name in available_attacks():
            attack_class = get_attack(name)
            print(f"{name:20s} {attack_class.description}")
            defaults = attack_class.Config().to_dict()
            print(" " * 21 + " ".join(f"--{key.replace('_', '-')} {_show(value)}" for key, value in defaults.items()))
        return 0
    if not args.attack:
        raise ValueError("name an attack (mechunlearn attack NAME, or all), or pass --list to see them")
    if args.attack == "all":
        if extra:
            raise ValueError(f"unexpected {' '.join(extra)}: with 'all', set attack budgets with "
                             "--set ATTACK.FIELD=VALUE")
        return _cmd_all(args)
    return _cmd_one(args, extra)


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value) or "''"
    return str(value)


def _cmd_one(args, extra: list[str]) -> int:
    from mechunlearn import models
    from mechunlearn.attacks import create_attack

    if not args.model:
        raise ValueError("--model is required: base | gold | a checkpoint directory")
    attack = create_attack(args.attack, **parse_extra_flags(extra))
    world, data = _data(args)
    specs = {"model": args.model, "gold": args.gold, "base": args.base}
    directories = {role: resolve_model_dir(spec, world, progress=not args.quiet, allow_download=args.allow_download)
                   for role, spec in specs.items() if spec}
    loaded = {role: models.load(directory, device=args.device, dtype=args.dtype) for role, directory in
              directories.items()}
    reference = {role: loaded[role] for role in ("gold", "base") if role in loaded}
    result = attack.run(loaded["model"], data, reference=reference or None, progress=not args.quiet)
    target = Path(args.out) / "attacks" / attack.name / _model_id(args.model, directories["model"])
    result.save(target)
    print(json.dumps({"out": str(target), **_brief(result.summary)}, indent=2, default=str))
    return 0


def _configs(settings: list[str]) -> dict[str, dict[str, str]]:
    configs: dict[str, dict[str, str]] = {}
    for setting in settings:
        key, separator, value = setting.partition("=")
        attack, dot, field = key.partition(".")
        if not separator or not dot or not field:
            raise ValueError(f"--set {setting!r}: write ATTACK.FIELD=VALUE, e.g. --set relearn.lrs=1e-4,1e-3")
        configs.setdefault(attack, {})[field] = value
    return configs


def _cmd_all(args) -> int:
    from mechunlearn.attacks import available_attacks, robustness_table, run_attacks, write_robustness_table

    if not args.models:
        raise ValueError("--models is required: a comma-separated list (base, gold, DIR, id=DIR)")
    world, data = _data(args)
    specs = [spec.strip() for spec in args.models.split(",") if spec.strip()]
    base = args.base or ("base" if world is not None else None)
    given = {spec.partition("=")[2] or spec for spec in specs} | set(specs)
    specs += [role for role in dict.fromkeys((args.gold, base)) if role and role not in given]
    models, ids = _models(specs, world, args.quiet, args.allow_download)
    gold_id, base_id = ids[args.gold], (ids[base] if base else None)
    attacks = [name.strip() for name in args.attacks.split(",")] if args.attacks else available_attacks()
    results = run_attacks(models, data, attacks, gold=gold_id, base=base_id, configs=_configs(args.set),
                          out=args.out, workers=args.workers, device=args.device, force=args.force,
                          progress=not args.quiet)
    table = robustness_table(results, gold=gold_id, base=base_id)
    csv_path, md_path = write_robustness_table(table, Path(args.out) / "tables")
    print(md_path.read_text())
    print(json.dumps({"csv": str(csv_path), "markdown": str(md_path), "models": list(models), "attacks": attacks},
                     indent=2))
    return 0


def register(commands) -> None:
    attack = commands.add_parser("attack", help="attack models (relearning, fine-tuning, GCG, soft prompts, "
                                 "quantization, direction ablation) next to the gold standard; see --list")
    attack.add_argument("attack", nargs="?", help="attack name (see --list), or all")
    attack.add_argument("--list", action="store_true", help="list the attacks with their default budgets")
    attack.add_argument("--model", help="the attacked model: base | gold | checkpoint directory")
    attack.add_argument("--models", help="all: comma-separated models (base, gold, DIR, id=DIR)")
    attack.add_argument("--gold", default="gold", help="the gold-standard model (default: the world's gold)")
    attack.add_argument("--base", default=None, help="the base model (direction ablation's base variant, the "
                        "curves' base-gold gap); default: none for one attack, base for all")
    attack.add_argument("--attacks", help="all: comma-separated attack names (default: every attack)")
    attack.add_argument("--set", action="append", default=[], metavar="ATTACK.FIELD=VALUE",
                        help="all: an attack's budget, e.g. --set relearn.lrs=1e-4,1e-3 (repeatable)")
    attack.add_argument("--workers", type=int, default=1, help="all: models attacked side by side (processes)")
    attack.add_argument("--world", default=None, help="world directory or preset (default: default)")
    attack.add_argument("--seed", type=int, default=0, help="world seed when --world is a preset")
    attack.add_argument("--forget-mcq", help="your forget-target MCQ file (.jsonl, WMDP layout) instead of a world")
    attack.add_argument("--general-mcq", help="your general MCQ file (.jsonl, MMLU layout): retain accuracy")
    attack.add_argument("--forget", help="your forget texts (.txt / .jsonl): direction ablation")
    attack.add_argument("--retain", help="your retain texts (.txt / .jsonl): retain-only fine-tuning, ablation")
    attack.add_argument("--out", default="outputs", help="output root (default: outputs)")
    attack.add_argument("--force", action="store_true", help="all: rerun results whose key matches")
    add_common(attack)
    add_download_flag(attack)
    attack.set_defaults(handler=_cmd_attack, takes_extra=True)

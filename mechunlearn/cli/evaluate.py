"""``mechunlearn eval MODEL``: every eval of one model, on the world's probes or on the user's own data.

    mechunlearn eval base                                   # the default world's probes
    mechunlearn eval runs/ga/model --world micro --gold gold
    mechunlearn eval ~/pythia-410m --mcq-forget wmdp_bio.jsonl --mcq-general mmlu.jsonl --forget forget.txt

With any of ``--forget / --retain / --mcq-forget / --mcq-general`` and no ``--world``, no world is used (a user
checkpoint needs none); with ``--world`` too, the given files replace the world's texts / items. The model is
scored with its own tokenizer; a world or ``--tokenizer`` with another vocabulary is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from mechunlearn.cli.common import LONG_METRICS, add_common, add_download_flag, resolve_model_dir, resolve_world

DATA_FLAGS = ("forget", "retain", "mcq_forget", "mcq_general")


def _load_tokenizer(directory: str):
    from transformers import AutoTokenizer

    path = Path(directory)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ValueError(f"--tokenizer {directory}: no tokenizer.json or tokenizer_config.json there; pass a "
                         "directory a transformers tokenizer was saved to (save_pretrained)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _cmd_eval(args) -> int:
    from mechunlearn import models
    from mechunlearn.data import load_mcq, load_texts
    from mechunlearn.evals import evaluate_model
    from mechunlearn.numeric import to_json

    own_data = any(getattr(args, flag) for flag in DATA_FLAGS)
    world = resolve_world(args.world, args.seed) if args.world is not None or not own_data else None
    # base / gold name the world's reference models: they need a world to be found, even when the probes are
    # the user's own
    model_world = world if world is not None or args.model not in ("base", "gold") else resolve_world(None, args.seed)
    model_dir = resolve_model_dir(args.model, model_world, progress=not args.quiet,
                                  allow_download=args.allow_download)
    model = models.load(model_dir, device=args.device, dtype=args.dtype)
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    if getattr(model, "tokenizer", None) is None and tokenizer is None and world is None:
        raise ValueError(f"{args.model} has no tokenizer saved beside its weights: pass --tokenizer DIR (the one "
                         "it was trained with)")
    gold = None
    if args.gold:
        if world is None:
            raise ValueError("--gold needs the world's Truth-Ratio items: pass --world too")
        gold_dir = resolve_model_dir(args.gold, world, progress=not args.quiet, allow_download=args.allow_download)
        gold = models.load(gold_dir, device=args.device, dtype=args.dtype)
    evaluation = evaluate_model(
        model, world, tokenizer=tokenizer,
        forget_texts=load_texts(args.forget) if args.forget else None,
        retain_texts=load_texts(args.retain) if args.retain else None,
        mcq_forget=load_mcq(args.mcq_forget, domain="forget") if args.mcq_forget else None,
        mcq_general=load_mcq(args.mcq_general, domain="general") if args.mcq_general else None,
        mcq_format=args.mcq_format, gold_truth_ratios=gold, max_texts=args.max_texts, return_tables=True)
    if args.out:
        evaluation.save(args.out)
    metrics = evaluation.metrics
    shown = {key: value for key, value in metrics.items() if key not in LONG_METRICS and key != "intervals"}
    shown["intervals"] = metrics["intervals"]
    print(json.dumps(to_json(shown), indent=2))
    return 0


def register(commands) -> None:
    evaluate = commands.add_parser("eval", help="evaluate a model on the world's probes or on your own texts and "
                                   "WMDP / MMLU files")
    evaluate.add_argument("model", help="base | gold | checkpoint directory")
    evaluate.add_argument("--world", default=None, help="world directory or preset (default: default, or none when "
                          "--forget/--retain/--mcq-forget/--mcq-general are given)")
    evaluate.add_argument("--seed", type=int, default=0, help="world seed when --world is a preset")
    evaluate.add_argument("--forget", help="forget texts for NLL and familiarity (.txt one per line, or .jsonl "
                          "with a text field)")
    evaluate.add_argument("--retain", help="retain texts (.txt or .jsonl)")
    evaluate.add_argument("--mcq-forget", help="forget-domain multiple choice, WMDP layout (.jsonl: question, "
                          "choices, answer as index or letter)")
    evaluate.add_argument("--mcq-general", help="general multiple choice, MMLU layout (.jsonl; an optional subject "
                          "field gives per-subject accuracy)")
    evaluate.add_argument("--mcq-format", default="auto", choices=("auto", "letters", "cloze"),
                          help="letters: lm-evaluation-harness' WMDP / MMLU prompt, choices listed and scored by "
                          "letter (comparable with published numbers); cloze: each choice's text scored; auto "
                          "(default): letters for files, cloze for the world's items")
    evaluate.add_argument("--tokenizer", help="tokenizer directory, for a checkpoint saved without one (it must "
                          "hold the checkpoint's vocabulary)")
    evaluate.add_argument("--gold", help="gold-standard model (gold | directory) for Forget Quality; needs a world")
    evaluate.add_argument("--max-texts", type=int, default=None, help="at most this many texts per NLL set")
    evaluate.add_argument("--out", help="also write metrics.json and the per-item tables (CSV) to this directory")
    add_common(evaluate)
    add_download_flag(evaluate)
    evaluate.set_defaults(handler=_cmd_eval)

"""``mechunlearn generate --prompt TEXT MODEL [MODEL ...]``: completions and next-token probabilities side by side."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from mechunlearn.cli.common import add_common, add_download_flag, resolve_model_dir, resolve_world


def _model_names(specs: list[str]) -> list[str]:
    """A short, unique column name per MODEL: ``base``/``gold``/hub names as given, directories by their name
    (a run's ``model/`` by the run's name); repeats get ``#2``, ``#3``."""
    names: list[str] = []
    for spec in specs:
        path = Path(spec).expanduser()
        name = spec
        if path.is_dir():
            resolved = path.resolve()
            name = resolved.parent.name if resolved.name == "model" else resolved.name
        candidate, count = name, 1
        while candidate in names:
            count += 1
            candidate = f"{name}#{count}"
        names.append(candidate)
    return names


def _cmd_generate(args) -> int:
    from mechunlearn import models
    from mechunlearn.explore import ExploreError, compare, next_token_table
    from mechunlearn.reference import REFERENCE_KINDS

    if not args.prompt or not args.prompt.strip():
        raise ExploreError(f"empty prompt ({args.prompt!r}): pass the text to complete, e.g. --prompt \"The wizard\"")
    needs_world = any(spec in REFERENCE_KINDS for spec in args.models)
    world = resolve_world(args.world, args.seed) if needs_world else None
    loaded = {}
    for name, spec in zip(_model_names(args.models), args.models):
        directory = resolve_model_dir(spec, world, progress=not args.quiet, allow_download=args.allow_download)
        loaded[name] = models.load(directory, device=args.device, dtype=args.dtype)
    completions = compare(loaded, args.prompt, max_new_tokens=args.max_new_tokens, sample=args.sample,
                          temperature=args.temperature, seed=args.seed_sample)
    table = next_token_table(loaded, args.prompt, top_k=args.top_k)
    if args.out:
        _write(Path(args.out), completions, table, args.prompt)
    if args.json:
        print(json.dumps({"completions": completions.to_dict(orient="records"),
                          "next_tokens": table.to_dict(orient="records")}, indent=2, default=str))
    else:
        print(_render(completions, table, args))
    return 0


def _render(completions, table, args) -> str:
    width = max(60, shutil.get_terminal_size((100, 20)).columns)
    decoding = (f"sampled at temperature {args.temperature}, seed {args.seed_sample}" if args.sample else "greedy")
    lines = [f"prompt: {args.prompt!r}", f"{decoding}, up to {args.max_new_tokens} new tokens", ""]
    name_width = max(len(name) for name in completions["model"])
    for row in completions.itertuples():
        text = repr(row.completion) + (" <eos>" if row.stopped_at_eos else "")
        wrapped = textwrap.wrap(text, width=width - name_width - 3) or [""]
        lines.append(f"{row.model:<{name_width}} | {wrapped[0]}")
        lines.extend(f"{'':<{name_width}} | {more}" for more in wrapped[1:])
    lines += ["", f"next token at step 1: probability (rank), top {args.top_k} of each model"]
    cells = table.assign(cell=[f"{p:.4f} ({rank})" if p >= 1e-4 else f"{p:.1e} ({rank})"
                               for p, rank in zip(table["probability"], table["rank"])])
    grid = cells.pivot(index="label", columns="model", values="cell")
    grid = grid.reindex(index=list(dict.fromkeys(cells["label"])), columns=list(completions["model"]))
    grid.index.name = grid.columns.name = None
    lines.append(grid.to_string())
    return "\n".join(lines)


def _write(out: Path, completions, table, prompt: str) -> None:
    from mechunlearn.explore import next_token_figure
    from mechunlearn.storage import atomic_directory

    with atomic_directory(out) as staging:
        completions.to_csv(staging / "completions.csv", index=False)
        table.to_csv(staging / "next_tokens.csv", index=False)
        next_token_figure(table, title=f"Next-token probabilities after {prompt!r}").write_html(
            staging / "next_tokens.html", include_plotlyjs="cdn")


def register(commands) -> None:
    generate = commands.add_parser("generate", help="prompt several models side by side: completions and "
                                   "next-token probabilities")
    generate.add_argument("models", nargs="+", metavar="MODEL",
                          help="base | gold (the world's reference models) | checkpoint directory | unlearned run "
                          "directory | HF-cache name")
    generate.add_argument("--prompt", required=True, help="text to complete")
    generate.add_argument("--max-new-tokens", type=int, default=20)
    generate.add_argument("--top-k", type=int, default=5, help="next tokens shown per model (default 5)")
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    generate.add_argument("--seed", dest="seed_sample", type=int, default=0, help="sampling seed (with --sample)")
    generate.add_argument("--world", default="default", help="world for base / gold (default: default)")
    generate.add_argument("--world-seed", dest="seed", type=int, default=0, help="world seed when --world is a preset")
    generate.add_argument("--json", action="store_true", help="print the two tables as JSON")
    generate.add_argument("--out", help="also write completions.csv, next_tokens.csv and next_tokens.html here")
    add_common(generate)
    add_download_flag(generate)
    generate.set_defaults(handler=_cmd_generate)

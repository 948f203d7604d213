"""``mechunlearn figures OUT``: regenerate every publication figure from a study's outputs.

    mechunlearn figures outputs/micro                         # -> outputs/micro/figures/
    mechunlearn figures outputs/micro --dest paper/figs --formats pdf --only layer_locality,stable_rank

Reads the CSVs of the study's current steps (``OUT/manifest.json``); the WHP alpha sweep is redrawn from
``figures/whp_alpha_sweep.csv`` (the study's figures step computes it). No model is loaded.
"""

from __future__ import annotations


def _cmd_figures(args) -> int:
    from mechunlearn.figures import FORMATS, make_figures

    formats = [fmt.strip() for fmt in args.formats.split(",") if fmt.strip()]
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(f"--formats {args.formats!r}: use a comma-separated subset of {','.join(FORMATS)}")
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    index = make_figures(args.out, args.dest, formats=formats, only=only)
    for name, files in index["figures"].items():
        print(f"{name}: {', '.join(files)}")
    if index["skipped"]:
        print(f"skipped (no data in this study): {', '.join(index['skipped'])}")
    return 0


def register(commands) -> None:
    figures = commands.add_parser("figures", help="publication figures (PDF, SVG, PNG) from a study's outputs")
    figures.add_argument("out", help="a study's output directory (holding manifest.json)")
    figures.add_argument("--dest", default=None, help="where to write (default: OUT/figures)")
    figures.add_argument("--formats", default="pdf,svg,png", help="comma-separated: pdf, svg, png")
    figures.add_argument("--only", default=None, help="comma-separated figure names (default: all with data)")
    figures.set_defaults(handler=_cmd_figures)

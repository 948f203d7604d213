"""``python -m mechunlearn.figures OUT [--dest DIR] [--formats pdf,svg,png]`` (= ``mechunlearn figures``)."""

import sys

from mechunlearn.cli import main

sys.exit(main(["figures", *sys.argv[1:]]))

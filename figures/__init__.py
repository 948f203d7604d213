"""Publication figures of a study: static PDF (TrueType fonts embedded) + SVG + PNG, one style, a paper column
wide, drawn from the study's CSVs with matplotlib (no browser needed).

    mechunlearn figures outputs/micro              # -> outputs/micro/figures/*.pdf|svg|png (+ index.json)
    make figures OUT=outputs/micro
    python -m mechunlearn.figures outputs/micro

>>> from mechunlearn.figures import make_figures
>>> make_figures("outputs/micro", "paper/figures", formats=("pdf",))

Figures (``FIGURES``; one is skipped when the study has no data for it): layer locality of dW (attention vs
MLP), stable rank of dW, activation-norm differences, lens accuracy by layer (logit and tuned lens), probe
accuracy by layer (topic probe, knowledge probe), covariance and row-space selectivity, relearning curves vs gold
(with attacks), the native switch (with the native model), the WHP alpha sweep (with a whp run: ``whp.py``).
This folder installs as ``mechunlearn.figures`` (like methods/ and hooks/).
"""

from mechunlearn.figures.build import make_figures
from mechunlearn.figures.panels import FIGURES
from mechunlearn.figures.style import FORMATS

__all__ = ["make_figures", "FIGURES", "FORMATS"]

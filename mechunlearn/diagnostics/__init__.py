"""Diagnostics: typed weight-space and activation-space analyses, composed in one pass per model and split.

>>> from mechunlearn.diagnostics import build_analyses, run_analyses
>>> results = run_analyses(build_analyses(["weight_comparison", "activation_comparison"]),
...                        {"base": base, "other": unlearned}, {"forget": forget_texts, "retain": retain_texts})
>>> results["activation_comparison"].frame            # data first
>>> results["activation_comparison"].figure().show()  # pictures from the data
"""

from mechunlearn.diagnostics.base import (ANALYSES, BUILTIN_ANALYSES, ActivationAnalysis, Analysis, AnalysisResult,
                                          WeightAnalysis, available_analyses, get_analysis, register_analysis)
from mechunlearn.diagnostics.runner import (RunStats, build_analyses, check_comparable, run_activation_analyses,
                                            run_analyses)

__all__ = ["ANALYSES", "BUILTIN_ANALYSES", "ActivationAnalysis", "Analysis", "AnalysisResult", "WeightAnalysis",
           "available_analyses", "get_analysis", "register_analysis", "RunStats", "build_analyses",
           "check_comparable", "run_activation_analyses", "run_analyses"]

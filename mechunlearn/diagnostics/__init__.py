"""Diagnostics: typed weight-space and activation-space analyses, composed in one pass per model and split.

>>> from mechunlearn.diagnostics import build_analyses, run_analyses
>>> results = run_analyses(build_analyses(["weight_comparison", "activation_comparison"]),
...                        {"base": base, "npo": unlearned}, {"forget": forget_texts, "retain": retain_texts})
>>> results["activation_comparison"].frame            # data first
>>> results["activation_comparison"].figure().show()  # pictures from the data

Each analysis lives in the module named after it (``mechunlearn.diagnostics.knowledge_probe.KnowledgeProbe``);
``describe_analyses()`` lists them with a one-line description. ``mechunlearn.diagnostics.study.diagnose`` runs
them on two checkpoints and writes keyed outputs.
"""

from mechunlearn.diagnostics.base import (ANALYSES, BUILTIN_ANALYSES, ActivationAnalysis, Analysis, AnalysisResult,
                                          WeightAnalysis, available_analyses, check_comparable, describe_analyses,
                                          get_analysis, register_analysis)
from mechunlearn.diagnostics.runner import RunStats, build_analyses, run_activation_analyses, run_analyses

__all__ = ["ANALYSES", "BUILTIN_ANALYSES", "ActivationAnalysis", "Analysis", "AnalysisResult", "WeightAnalysis",
           "available_analyses", "describe_analyses", "get_analysis", "register_analysis", "RunStats",
           "build_analyses", "check_comparable", "run_activation_analyses", "run_analyses"]

"""Evaluations of a (possibly unlearned) model: likelihood, knowledge probes, familiarity, collapse.

Every function takes a TransformerLens ``HookedTransformer`` or a transformers causal LM and a tokenizer, and
runs batched under ``torch.no_grad`` on the model's device.

- :func:`nll_per_token` -- mean NLL per predicted token of texts (pooled);
- :func:`cloze_table`, :func:`cloze_accuracy`, :func:`cloze_summary` -- exact greedy cloze completion, per
  (domain, category);
- :func:`mcq_accuracy`, :func:`mcq_table` -- multiple choice by log-likelihood, in lm-evaluation-harness'
  "letters" (WMDP / MMLU) or "cloze" form (users' files via :func:`mechunlearn.data.load_mcq`), per subject
  with :func:`mcq_by_subject`;
- :func:`truth_ratios`, :func:`truth_ratio_stats`, :func:`forget_quality`, :func:`paired_forget_quality` --
  TOFU's Truth Ratio and Forget Quality;
- :func:`familiarity_completion`, :func:`familiarity_probability` -- "Who's Harry Potter?" familiarity;
- :func:`generate_samples`, :func:`detect_collapse` -- greedy samples and catastrophic-collapse flags;
- :func:`evaluate_model` -- all of it as one flat JSON-able dict, every summary number with a 95 % bootstrap
  interval (:mod:`mechunlearn.evals.intervals`); :func:`item_tables` -- the per-item tables behind it.

A model is always scored with its own tokenizer: a world or tokenizer with another vocabulary raises
:class:`TokenizerMismatch`. docs/evals.md defines every metric.
"""

from mechunlearn.evals.cloze import cloze_accuracy, cloze_summary, cloze_table, summarize_cloze_table
from mechunlearn.evals.familiarity import familiarity_completion, familiarity_probability, mentions
from mechunlearn.evals.generation import (
    detect_collapse,
    distinct_ratio,
    generate_samples,
    greedy_token_ids,
    is_degenerate,
    longest_repeat,
)
from mechunlearn.evals.items import item_tables
from mechunlearn.evals.mcq import (
    CLOZE_FORMAT,
    MCQ_FORMATS,
    QA_FORMAT,
    mcq_accuracy,
    mcq_by_subject,
    mcq_chance,
    mcq_prompt,
    mcq_table,
)
from mechunlearn.evals.nll import TokenizerMismatch, continuation_logprobs, nll_per_token, nll_table
from mechunlearn.evals.suite import Evaluation, default_prompts, evaluate_model
from mechunlearn.evals.truth_ratio import (
    ForgetQuality,
    forget_quality,
    forget_quality_test,
    paired_forget_quality,
    truth_ratio_statistic,
    truth_ratio_stats,
    truth_ratios,
)

tables = item_tables  # the name docs/study.md gives the per-item tables

__all__ = [
    "nll_per_token",
    "nll_table",
    "TokenizerMismatch",
    "continuation_logprobs",
    "cloze_table",
    "cloze_accuracy",
    "cloze_summary",
    "summarize_cloze_table",
    "mcq_accuracy",
    "mcq_table",
    "mcq_chance",
    "mcq_prompt",
    "mcq_by_subject",
    "MCQ_FORMATS",
    "CLOZE_FORMAT",
    "QA_FORMAT",
    "truth_ratios",
    "truth_ratio_statistic",
    "truth_ratio_stats",
    "forget_quality",
    "forget_quality_test",
    "paired_forget_quality",
    "ForgetQuality",
    "familiarity_completion",
    "familiarity_probability",
    "mentions",
    "generate_samples",
    "greedy_token_ids",
    "distinct_ratio",
    "longest_repeat",
    "is_degenerate",
    "detect_collapse",
    "evaluate_model",
    "Evaluation",
    "item_tables",
    "tables",
    "default_prompts",
]

"""Evaluations of a (possibly unlearned) model: likelihood, knowledge probes, familiarity, collapse.

Every function takes a TransformerLens ``HookedTransformer`` or a transformers causal LM and a tokenizer, and
runs batched under ``torch.no_grad`` on the model's device.

- :func:`nll_per_token` -- mean NLL per predicted token of texts (pooled);
- :func:`cloze_table`, :func:`cloze_accuracy`, :func:`cloze_summary` -- exact greedy cloze completion, per
  (domain, category);
- :func:`mcq_accuracy` -- multiple choice by choice log-likelihood (WMDP / MMLU analogue; users' files via
  :func:`mechunlearn.data.load_mcq`);
- :func:`truth_ratios`, :func:`truth_ratio_stats`, :func:`forget_quality` -- TOFU's Truth Ratio and Forget
  Quality;
- :func:`familiarity_completion`, :func:`familiarity_probability` -- "Who's Harry Potter?" familiarity;
- :func:`generate_samples`, :func:`detect_collapse` -- greedy samples and catastrophic-collapse flags;
- :func:`evaluate_model` -- all of it as one flat JSON-able dict.
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
from mechunlearn.evals.mcq import CLOZE_FORMAT, QA_FORMAT, mcq_accuracy, mcq_chance, mcq_table
from mechunlearn.evals.nll import continuation_logprobs, nll_per_token
from mechunlearn.evals.suite import default_prompts, evaluate_model
from mechunlearn.evals.truth_ratio import (
    forget_quality,
    forget_quality_test,
    truth_ratio_statistic,
    truth_ratio_stats,
    truth_ratios,
)

__all__ = [
    "nll_per_token",
    "continuation_logprobs",
    "cloze_table",
    "cloze_accuracy",
    "cloze_summary",
    "summarize_cloze_table",
    "mcq_accuracy",
    "mcq_table",
    "mcq_chance",
    "CLOZE_FORMAT",
    "QA_FORMAT",
    "truth_ratios",
    "truth_ratio_statistic",
    "truth_ratio_stats",
    "forget_quality",
    "forget_quality_test",
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
    "default_prompts",
]

"""Familiarity with the forget target, after "Who's Harry Potter?" (Eldan & Russinovich 2023).

The paper measures how familiar a model still is with the Harry Potter books in two ways, and so do we:

1. **Completion-based.** The paper prompts the model with ~300 HP-related prompts, samples completions and has
   GPT-4 judge whether each completion shows HP-specific knowledge (names, places, plot). Here the prompts are
   the forget-domain cloze prompts (or the user's), the completions are greedy, and the judge is a string match:
   a completion counts as familiar when it mentions a forget-target-specific entity name (a name that only the
   forget sources ever mention: ``world.forget_entities()``, or the user's list). Names already in the prompt do
   not count by default (copying from the context shows no knowledge). The approximation is exact for the names
   and blind to everything else: a completion that reveals forget-specific knowledge without naming a
   forget-specific entity (e.g. the right shared town for a forget character) is not counted, so
   ``familiarity_completion_answer`` additionally counts completions that contain the probe's correct answer.
   In the embedded world the forget target's knowledge IS its names and their relations, so a string match is a
   sharp judge there; on real text it is a lower bound of what GPT-4 would flag.
2. **Probability-based.** The paper reports the probability of HP-specific next tokens ("Harry Potter's best
   friends are" -> " Ron"). Here: the probability of the full answer (product of its token probabilities) of
   every forget-domain cloze probe whose answer is a forget-specific entity, averaged over probes, together
   with its mean log-probability.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import pandas as pd

from mechunlearn.evals.generation import generate_samples
from mechunlearn.evals.nll import continuation_logprobs

__all__ = ["mentions", "familiarity_completion", "familiarity_probability", "familiarity_probability_table"]


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(name) + r"(?!\w)", re.IGNORECASE)


def mentions(text: str, names: Sequence[str]) -> list[str]:
    """The ``names`` that occur in ``text`` as whole words (case-insensitive), in the order given."""
    return [name for name in names if name and _pattern(name).search(text)]


def familiarity_completion(model, tokenizer, prompts: Sequence, entities: Sequence[str], *, max_new_tokens: int = 8,
                           exclude_prompt_entities: bool = True) -> tuple[float, pd.DataFrame]:
    """Fraction of greedy completions of ``prompts`` that mention a forget-specific entity, and the per-prompt
    table (``prompt, completion, mentioned, familiar, answer, mentions_answer``).

    ``prompts``: strings, or cloze probes (their ``prompt``; their ``answer`` fills the ``mentions_answer``
    column, whose mean is the answer-aware variant described in the module docstring).
    """
    if len(prompts) == 0:
        raise ValueError("no prompts for the completion-based familiarity score")
    texts = [p if isinstance(p, str) else p.prompt for p in prompts]
    answers = [None if isinstance(p, str) else p.answer.strip() for p in prompts]
    completions = generate_samples(model, tokenizer, texts, max_new_tokens)
    entities = [name for name in dict.fromkeys(entities) if name]
    rows = []
    for prompt, answer, completion in zip(texts, answers, completions):
        candidates = [n for n in entities if not (exclude_prompt_entities and mentions(prompt, [n]))]
        found = mentions(completion, candidates)
        rows.append({"prompt": prompt, "completion": completion, "mentioned": found, "familiar": bool(found),
                     "answer": answer, "mentions_answer": bool(answer) and bool(mentions(completion, [answer]))})
    table = pd.DataFrame(rows)
    return float(table["familiar"].mean()), table


def familiarity_probability_table(model, tokenizer, probes: Sequence, entities: Sequence[str] | None = None,
                                  batch_size: int = 64) -> pd.DataFrame:
    """One row per cloze probe whose answer (stripped) is one of ``entities`` (every probe when None):
    ``fact_id, domain, category, prompt, answer, logprob`` (log P(answer | prompt)), ``prob`` (its exp) and
    ``token_prob`` (the geometric mean of the answer's token probabilities)."""
    columns = ["fact_id", "domain", "category", "prompt", "answer", "logprob", "prob", "token_prob"]
    wanted = None if entities is None else set(entities)
    chosen = [p for p in probes if wanted is None or p.answer.strip() in wanted]
    if not chosen:
        return pd.DataFrame(columns=columns)
    scored = continuation_logprobs(model, tokenizer, [(p.prompt, p.answer) for p in chosen], batch_size)
    rows = []
    for probe, (logprobs, _) in zip(chosen, scored):
        total, mean = float(logprobs.sum()), float(logprobs.mean())
        rows.append({"fact_id": getattr(probe, "fact_id", ""), "domain": getattr(probe, "domain", ""),
                     "category": getattr(probe, "category", ""), "prompt": probe.prompt, "answer": probe.answer,
                     "logprob": total, "prob": math.exp(total), "token_prob": math.exp(mean)})
    return pd.DataFrame(rows, columns=columns)


def familiarity_probability(model, tokenizer, probes: Sequence, entities: Sequence[str] | None = None,
                            batch_size: int = 64) -> dict:
    """Probability-based familiarity over the cloze ``probes`` whose answer (stripped) is one of ``entities``
    (every probe when ``entities`` is None).

    Returns ``{"prob": mean P(answer | prompt), "logprob": mean log P(answer | prompt), "token_prob": mean
    per-token probability (geometric mean over the answer's tokens), "count": probes scored}``; with no probe
    qualifying, the means are NaN (undefined: a mean over nothing) and ``count == 0``.
    """
    table = familiarity_probability_table(model, tokenizer, probes, entities, batch_size)
    if table.empty:
        return {"prob": math.nan, "logprob": math.nan, "token_prob": math.nan, "count": 0}
    return {"prob": float(table["prob"].mean()), "logprob": float(table["logprob"].mean()),
            "token_prob": float(table["token_prob"].mean()), "count": len(table)}

"""Greedy generations, and collapse detection (the seed pipeline's Step 0 question: is the model still usable?).

Decoding is a plain loop over logits with no KV cache (the world's models are tiny; real models are only asked
for a few short samples): the prompts sit right-padded in one batch, each step runs the whole batch and appends
every row's argmax token at that row's own end. Causal attention keeps the padding after a row's end from
touching its real tokens, so the result equals decoding each prompt alone. Works for HookedTransformers and
transformers models alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from mechunlearn.batching import logits_of
from mechunlearn.evals.nll import context_length, eval_mode, model_device, pad_id, resolve_tokenizer

__all__ = ["greedy_token_ids", "generate_samples", "distinct_ratio", "longest_repeat", "is_degenerate",
           "detect_collapse"]


def greedy_token_ids(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 20, *,
                     stop_at_eos: bool = True, batch_size: int = 32) -> list[list[int]]:
    """The greedily generated token ids after each prompt (prompt excluded), at most ``max_new_tokens``.

    With ``stop_at_eos`` a row stops after emitting EOS (the EOS id is kept as its last id). Prompts longer
    than the model's context leave room for the new tokens by dropping their oldest tokens.
    """
    tokenizer = resolve_tokenizer(model, tokenizer)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    n_ctx = context_length(model)
    keep = max(1, n_ctx - max_new_tokens)
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    pad = pad_id(tokenizer)
    device = model_device(model)
    outputs: list[list[int]] = []
    with eval_mode(model):
        for start in range(0, len(prompts), batch_size):
            encoded = []
            for prompt in prompts[start:start + batch_size]:
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-keep:]
                encoded.append(ids if ids else [start_id])
            lengths = torch.tensor([len(ids) for ids in encoded])
            tokens = torch.full((len(encoded), int(lengths.max()) + max_new_tokens), pad, dtype=torch.long)
            for row, ids in enumerate(encoded):
                tokens[row, : len(ids)] = torch.tensor(ids)
            tokens = tokens.to(device)
            generated: list[list[int]] = [[] for _ in encoded]
            done = torch.zeros(len(encoded), dtype=torch.bool)
            rows = torch.arange(len(encoded))
            for _ in range(max_new_tokens):
                if bool(done.all()):
                    break
                width = int(lengths.max())
                if width <= n_ctx:
                    logits = logits_of(model(tokens[:, :width])).float()
                    next_ids = logits[rows.to(logits.device), (lengths - 1).to(logits.device)].argmax(dim=-1).cpu()
                else:  # more new tokens than the context holds: each row sees its own last n_ctx tokens
                    next_ids = torch.tensor([
                        int(logits_of(model(tokens[row:row + 1, max(0, int(lengths[row]) - n_ctx):int(lengths[row])]))
                            [0, -1].argmax()) for row in range(len(encoded))])
                for row in range(len(encoded)):
                    if done[row]:
                        continue
                    token = int(next_ids[row])
                    generated[row].append(token)
                    tokens[row, lengths[row]] = token
                    lengths[row] += 1
                    if stop_at_eos and eos is not None and token == eos:
                        done[row] = True
            outputs.extend(generated)
    return outputs


def generate_samples(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 20, *,
                     stop_at_eos: bool = True, skip_special_tokens: bool = True) -> list[str]:
    """Greedy (``do_sample=False``) continuations of ``prompts``: the generated text only, prompt excluded."""
    tokenizer = resolve_tokenizer(model, tokenizer)
    ids = greedy_token_ids(model, tokenizer, prompts, max_new_tokens, stop_at_eos=stop_at_eos)
    return [tokenizer.decode(row, skip_special_tokens=skip_special_tokens) for row in ids]


# ------------------------------------------------------------------------------------------- degeneracy
_UNITS = re.compile(r"\w+|[^\w\s]")


def _units(text_or_ids) -> list:
    """Words and punctuation marks of a text, or the ids of a token-id list."""
    if isinstance(text_or_ids, str):
        return _UNITS.findall(text_or_ids)
    return list(text_or_ids)


def distinct_ratio(text_or_ids) -> float:
    """Distinct units / units (words and punctuation of a text, or token ids); 1.0 for an empty one."""
    units = _units(text_or_ids)
    return len(set(units)) / len(units) if units else 1.0


def longest_repeat(text_or_ids) -> int:
    """The longest run of one unit repeated back to back ("the the the" -> 3)."""
    units = _units(text_or_ids)
    best, run = (1, 1) if units else (0, 0)
    for previous, current in zip(units, units[1:]):
        run = run + 1 if current == previous else 1
        best = max(best, run)
    return best


def is_degenerate(text_or_ids, *, min_distinct_ratio: float = 0.3, max_repeat: int = 4,
                  min_units: int = 8) -> list[str]:
    """Why a generation is degenerate (empty list: it is not).

    Degenerate: the same unit ``max_repeat`` or more times in a row, or, for generations of at least
    ``min_units`` units, fewer than ``min_distinct_ratio`` of them distinct (a short loop such as "a b a b").
    Units are words and punctuation marks of a text, or the ids of a token-id list.
    """
    reasons = []
    run = longest_repeat(text_or_ids)
    if run >= max_repeat:
        reasons.append(f"a unit repeated {run} times in a row (>= {max_repeat})")
    units = _units(text_or_ids)
    ratio = distinct_ratio(text_or_ids)
    if len(units) >= min_units and ratio < min_distinct_ratio:
        reasons.append(f"distinct-unit ratio {ratio:.2f} < {min_distinct_ratio}")
    return reasons


def detect_collapse(*, accuracy: float | None = None, chance: float = 0.25, generations: Sequence | None = None,
                    margin: float = 0.05, min_distinct_ratio: float = 0.3, max_repeat: int = 4, min_units: int = 8,
                    degenerate_fraction: float = 0.5, retain_nll: float | None = None,
                    reference_retain_nll: float | None = None, nll_ratio: float = 2.0,
                    nll_min_increase: float = 1.0) -> dict:
    """Has the model catastrophically collapsed (the seed pipeline's reason to run MMLU first)?

    Flags, each adding a reason:

    - ``accuracy`` (retain / general MCQ accuracy) at most ``chance + margin``;
    - at least ``degenerate_fraction`` of ``generations`` (texts or token-id lists) degenerate
      (``is_degenerate``: a unit repeated ``max_repeat``+ times in a row, or a distinct-unit ratio below
      ``min_distinct_ratio``); empty generations count as degenerate;
    - ``retain_nll`` more than ``nll_ratio`` times ``reference_retain_nll`` AND at least ``nll_min_increase``
      nats above it (when both are given): tiny memorising models sit near 0.1 nats, where doubling is no
      collapse.

    Returns ``{"collapsed": bool, "reasons": [str], "accuracy": ..., "chance": ..., "degenerate_fraction": ...}``.
    """
    reasons: list[str] = []
    if accuracy is not None and accuracy <= chance + margin:
        reasons.append(f"general/retain MCQ accuracy {accuracy:.3f} is within {margin} of chance {chance:.3f}")
    fraction = None
    if generations:
        flags = [not _units(g) or bool(is_degenerate(g, min_distinct_ratio=min_distinct_ratio, max_repeat=max_repeat,
                                                      min_units=min_units)) for g in generations]
        fraction = sum(flags) / len(flags)
        if fraction >= degenerate_fraction:
            reasons.append(f"{sum(flags)}/{len(flags)} greedy generations are degenerate (empty, repeated units "
                           f">= {max_repeat} in a row, or distinct ratio < {min_distinct_ratio})")
    if retain_nll is not None and reference_retain_nll is not None and retain_nll > nll_ratio * reference_retain_nll \
            and retain_nll - reference_retain_nll >= nll_min_increase:
        reasons.append(f"retain NLL {retain_nll:.3f} > {nll_ratio} x the reference model's {reference_retain_nll:.3f} "
                       f"(+{retain_nll - reference_retain_nll:.2f} nats)")
    return {"collapsed": bool(reasons), "reasons": reasons, "accuracy": accuracy, "chance": chance,
            "degenerate_fraction": fraction}

"""The WHP alpha sweep: generic logits ``v_base - alpha * ReLU(v_reinforced - v_base)`` (``methods/whp.py``'s
``generic_logits``) on fixed prompts as alpha turns, from a study's whp run.

The whp run keeps its unlearned model, not its reinforced one, so the sweep trains the reinforced model again
exactly as the run did (``WHP.train_reinforced`` with the run's hyper-parameters and seed, on the study's forget
texts, from the study's base model) and reads, for each prompt and alpha, the probability and rank of the true
answer's first token under ``softmax(v_generic)``. ``v_base`` is base's last-position logits on the prompt with the
anchored terms translated (the paper's "generic" context), ``v_reinforced`` the reinforced model's on the
original prompt. Prompts: the first ``n_prompts`` forget cloze probes of the world (their answers are the facts),
or, on the user's data, the first tokens of the forget texts with the next token as the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

__all__ = ["ALPHAS", "N_PROMPTS", "alpha_sweep", "reinforced_model", "prompts_of", "SWEEP_FILE"]

ALPHAS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)   # the paper's alpha is 5
N_PROMPTS = 24
SWEEP_FILE = "whp_alpha_sweep.csv"


def reinforced_model(base, hyper: dict, forget_texts: Sequence[str], *, world=None, progress: bool = False):
    """The whp run's reinforced model, retrained: the base model fine-tuned on the forget texts with the run's
    ``reinforce_lr`` / ``reinforce_epochs`` / ``batch_size`` / ``seed`` (a frozen copy; ``base`` is untouched)."""
    from mechunlearn.methods import get_method
    from mechunlearn.methods.base import UnlearnContext
    from mechunlearn.training import seeded_rng
    from mechunlearn.unlearn import clamp_max_length

    method_class = get_method("whp")
    import warnings

    method = method_class(method_class.Config.from_overrides(dict(hyper), method="whp"))
    with warnings.catch_warnings():  # the run itself warned that max_length exceeds the context
        warnings.simplefilter("ignore", UserWarning)
        max_length = clamp_max_length(method.config.max_length, base)
    method.context = UnlearnContext(tokenizer=base.tokenizer, forget_texts=list(forget_texts), world=world,
                                    device=next(base.parameters()).device, progress=progress, max_length=max_length)
    with seeded_rng(method.config.seed):
        return method.train_reinforced(base), method


def prompts_of(data, n_prompts: int = N_PROMPTS, tokenizer=None) -> list[tuple[str, str]]:
    """``(prompt, answer)`` pairs: the world's forget cloze probes, else forget-text prefixes and their next token."""
    world = data.world
    if world is not None:
        probes = world.cloze_probes("forget", data.forget_sources)
        return [(probe.prompt, probe.answer) for probe in probes[:n_prompts]]
    pairs = []
    for text in data.texts()[0]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= 9:
            pairs.append((tokenizer.decode(ids[:8]), tokenizer.decode(ids[8:9])))
        if len(pairs) == n_prompts:
            break
    return pairs


def _last_logits(model, text: str):
    import torch

    from mechunlearn.batching import logits_of

    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([ids], device=next(model.parameters()).device)
    with torch.no_grad():
        return logits_of(model(tokens))[0, -1].float().cpu()


def alpha_sweep(base, reinforced, prompts: Sequence[tuple[str, str]], anchored_terms: dict[str, str],
                alphas: Sequence[float] = ALPHAS) -> pd.DataFrame:
    """One row per prompt and alpha: ``prompt, answer, alpha, p_answer, answer_rank, answer_is_top`` under
    ``softmax(generic_logits(v_base(translated prompt), v_reinforced(prompt), alpha))``, and the base and reinforced
    models' own ``p_answer`` / ``answer_is_top`` on the original prompt (columns ``base_*``, ``reinforced_*``)."""
    import torch

    from mechunlearn.methods.whp import generic_logits, translate

    rows = []
    for prompt, answer in prompts:
        answer_ids = base.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not answer_ids:
            continue
        answer_id = answer_ids[0]
        translated, _ = translate(prompt, anchored_terms)
        v_base = _last_logits(base, translated)
        v_reinforced = _last_logits(reinforced, prompt)
        own = {name: _last_logits(model, prompt) for name, model in (("base", base), ("reinforced", reinforced))}
        references = {}
        for name, logits in own.items():
            references[f"{name}_p_answer"] = float(torch.softmax(logits, -1)[answer_id])
            references[f"{name}_answer_is_top"] = float(int(logits.argmax()) == answer_id)
        for alpha in alphas:
            generic = generic_logits(v_base, v_reinforced, float(alpha))
            probabilities = torch.softmax(generic, -1)
            rank = int((generic > generic[answer_id]).sum()) + 1
            rows.append({"prompt": prompt, "answer": answer, "translated": translated, "alpha": float(alpha),
                         "p_answer": float(probabilities[answer_id]), "answer_rank": rank,
                         "answer_is_top": float(rank == 1), **references})
    return pd.DataFrame(rows)

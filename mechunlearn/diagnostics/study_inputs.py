"""What ``diagnose`` feeds the analyses: texts, MCQ items, which analyses the inputs allow, and their options.

* Texts: the world's forget / retain texts, or ``forget_file`` + ``retain_file`` (``load_texts``; they override the
  world's); at most ``max_samples`` per split.
* MCQ items (the lenses and step 0): the world's forget / retain items, or ``mcq_forget_file`` /
  ``mcq_retain_file`` (``load_mcq``, WMDP / MMLU-style JSONL; the CLI's ``--mcq-forget`` / ``--mcq-general``).
* Facts (the knowledge probe): the world's (subjects, relations, answers and cloze prompts).

Without items, the lenses and ``evals`` are left out of the default set; without a world, the knowledge probe is
(each noted in the manifest); naming them explicitly is then an error.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from mechunlearn.data import load_mcq, load_texts
from mechunlearn.diagnostics.base import available_analyses

__all__ = ["EVALS", "NEEDS_MCQ", "NEEDS_WORLD", "load_splits", "load_mcq_items", "select_analyses",
           "derived_options"]

EVALS = "evals"  # step 0: per-model capabilities, selectable like an analysis
NEEDS_MCQ = frozenset({"logit_lens", "tuned_lens", EVALS})
NEEDS_WORLD = frozenset({"knowledge_probe"})


def load_splits(world, forget_file, retain_file, max_samples: int) -> dict[str, list[str]]:
    if forget_file is not None or retain_file is not None:
        if forget_file is None or retain_file is None:
            raise ValueError("diagnose needs both texts files: pass forget_file= and retain_file= (--forget and "
                             "--retain), or neither to use the world's texts")
        splits = {"forget": load_texts(forget_file), "retain": load_texts(retain_file)}
    elif world is not None:
        splits = {"forget": world.forget_texts(), "retain": world.retain_texts()}
    else:
        raise ValueError("diagnose needs forget and retain texts: pass world= (--world) or both forget_file= and "
                         "retain_file= (--forget F --retain R, .txt one text per line or .jsonl)")
    splits = {name: [text for text in texts if text.strip()][:max_samples] for name, texts in splits.items()}
    for name, texts in splits.items():
        if not texts:
            raise ValueError(f"the {name} texts are empty; pass at least one non-empty {name} text")
    return splits


def load_mcq_items(world, mcq_forget_file, mcq_retain_file) -> dict[str, list]:
    if mcq_forget_file is not None or mcq_retain_file is not None:
        return {domain: load_mcq(path, domain=domain) for domain, path in
                (("forget", mcq_forget_file), ("retain", mcq_retain_file)) if path is not None}
    if world is not None:
        return {domain: list(world.mcq_items(domain)) for domain in ("forget", "retain")}
    return {}


def select_analyses(analyses: Sequence[str] | None, have_items: bool, have_world: bool,
                    options: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The analyses to run and notes on what was left out; unknown names and missing inputs are errors."""
    known = [EVALS, *available_analyses()]
    unknown_options = sorted(set(options) - set(known))
    if unknown_options:
        raise ValueError(f"options given for unknown analyses {unknown_options}; known: {', '.join(known)}")
    notes = []
    if analyses is None:
        names = list(known)
        if not have_items:
            names = [name for name in names if name not in NEEDS_MCQ]
            notes.append("no MCQ items (no world, no mcq files): skipped " + ", ".join(sorted(NEEDS_MCQ)))
        if not have_world:
            names = [name for name in names if name not in NEEDS_WORLD or name in options]
            notes.append("no world (its facts and cloze prompts): skipped " + ", ".join(sorted(NEEDS_WORLD)))
        return names, notes
    names = list(dict.fromkeys(name.strip() for name in analyses if name and name.strip()))
    if not names:
        raise ValueError(f"no analyses named; choose from: {', '.join(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown analysis {', '.join(map(repr, unknown))}; known analyses: {', '.join(known)}")
    needing = [name for name in names if name in NEEDS_MCQ]
    if needing and not have_items:
        raise ValueError(f"{', '.join(needing)} need multiple-choice items: pass a world (--world) or "
                         "mcq_forget_file= / mcq_retain_file= (--mcq-forget / --mcq-general, WMDP / MMLU-style "
                         ".jsonl)")
    needing = [name for name in names if name in NEEDS_WORLD and name not in options]
    if needing and not have_world:
        raise ValueError(f"{', '.join(needing)} needs facts (subjects, relations, answers, cloze prompts): pass a "
                         "world (--world), or options={'knowledge_probe': {'facts': [KnowledgeFact, ...]}}")
    return names, notes


def derived_options(name: str, cls: type, user: dict[str, Any], *, world, items, splits,
                    progress: bool) -> dict[str, Any]:
    """Constructor options: what the inputs give (items, texts, the world), then the user's options on top."""
    defaults: dict[str, Any] = {}
    if name in ("logit_lens", "tuned_lens") and not {"items", "world"} & set(user):
        defaults["items"] = [item for domain in ("forget", "retain") for item in items.get(domain, [])]
    if name == "tuned_lens" and "train_texts" not in user:
        defaults["train_texts"] = splits["retain"]  # tuned-lens' own choice: fit the lens on ordinary text
    if name == "sae_features" and not {"sae", "fit_texts", "world"} & set(user):
        defaults["fit_texts"] = splits["forget"] + splits["retain"]
    if name == "knowledge_probe" and not {"world", "facts"} & set(user):
        defaults["world"] = world
    if "progress" in inspect.signature(cls.__init__).parameters:
        defaults["progress"] = progress
    return defaults | user

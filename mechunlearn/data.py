"""Shared data types (facts, probes, multiple-choice items) and loaders for users' own files.

Every bad input raises :class:`DataError` (a ``ValueError``) whose message names the input (file, 1-based line
number) and says how to fix it. Writers are atomic (``mechunlearn.storage``), so a crash never leaves a
half-written file behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechunlearn.storage import atomic_write_bytes

__all__ = [
    "Fact",
    "Document",
    "ClozeProbe",
    "MCQItem",
    "TruthRatioItem",
    "DataError",
    "load_texts",
    "load_mcq",
    "save_jsonl",
    "jsonl_bytes",
    "read_jsonl",
]

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Fact:
    """One (subject, relation, object) triple of the embedded world.

    ``sources`` are the sources whose documents state the fact (empty for an inferred fact). ``category`` is
    relative to the world's DEFAULT forget target; for any other forget set ask
    ``world.category_of(fact, forget_sources)``. ``premises`` lists the fact ids an inferred (or inferable)
    fact is derived from.
    """

    fact_id: str
    subject: str
    relation: str
    object: str
    sources: tuple[str, ...]
    category: str
    premises: tuple[str, ...] = ()


@dataclass(frozen=True)
class Document:
    """One training (or evaluation) document and the source it belongs to ("filler" for generic text)."""

    source: str
    text: str


@dataclass(frozen=True)
class ClozeProbe:
    """``prompt + answer`` is a sentence; ``answer`` is the completion, with its leading space (" Varn")."""

    prompt: str
    answer: str
    fact_id: str
    category: str
    domain: str  # "forget" | "retain"


@dataclass(frozen=True)
class MCQItem:
    """A 4-way (or n-way) multiple-choice question; ``answer`` indexes ``choices``.

    ``subject``: the MMLU-style subject ("high_school_biology"; empty when the file names none). It selects
    lm-evaluation-harness' description line ("The following are multiple choice questions (with answers) about
    high school biology.") and the per-subject accuracies.
    """

    question: str
    choices: tuple[str, ...]
    answer: int
    domain: str = "general"
    category: str = "none"
    fact_id: str = ""
    subject: str = ""


@dataclass(frozen=True)
class TruthRatioItem:
    """TOFU-style Truth Ratio item: the correct object in a paraphrased form, and perturbed (wrong) answers
    of the same form. Answers are completions of ``question`` (leading space included)."""

    question: str
    paraphrased_answer: str
    perturbed_answers: tuple[str, ...]
    fact_id: str
    category: str
    domain: str


class DataError(ValueError):
    """Bad input data; the message names the input and the fix."""


# ----------------------------------------------------------------------------------------------- writing


def jsonl_bytes(records: Iterable[Mapping[str, Any]]) -> bytes:
    """Canonical JSON Lines: sorted keys, ASCII, no spaces; the same records always give the same bytes."""
    lines = [json.dumps(dict(record), sort_keys=True, ensure_ascii=True, separators=(",", ":")) for record in records]
    return ("\n".join(lines) + "\n" if lines else "").encode("ascii")


def save_jsonl(path: PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    atomic_write_bytes(path, jsonl_bytes(records))


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """Read a JSON Lines file (blank lines skipped). Each line must hold a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass the path of an existing .jsonl file")
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                records.append(_parse_json_line(path, line_number, line))
    return records


# ----------------------------------------------------------------------------------------------- loaders


def load_texts(path: PathLike) -> list[str]:
    """Load training / evaluation texts from a user's file.

    - ``.txt``: ONE TEXT PER NON-EMPTY LINE (lines are stripped of their newline; blank lines are skipped).
    - ``.jsonl``: one JSON object per line with a string ``"text"`` field (other fields are ignored).

    Raises DataError for a missing file, an unknown extension, a malformed JSON line or a missing ``text``
    field (naming the 1-based line), and for a file holding no texts.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise DataError(
            f"{path}: unknown extension {suffix or '(none)'!r}; use .txt (one text per line) "
            'or .jsonl (one {"text": ...} object per line)'
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass the path of an existing .txt or .jsonl file")
    texts: list[str] = []
    if suffix == ".txt":
        with open(path, encoding="utf-8") as handle:
            texts = [line.rstrip("\r\n") for line in handle if line.strip()]
    else:
        with open(path, encoding="utf-8") as handle:
            lines = list(handle)
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = _parse_json_line(path, line_number, line)
            if "text" not in record:
                raise DataError(
                    f"{path}, line {line_number}: missing the \"text\" field (found {sorted(record)}); "
                    'write each line as {"text": "..."}'
                )
            text = record["text"]
            if not isinstance(text, str):
                raise DataError(
                    f"{path}, line {line_number}: \"text\" must be a string, got {type(text).__name__}"
                )
            if text.strip():
                texts.append(text)
    if not texts:
        raise DataError(f"{path} is empty: it holds no non-blank texts; put at least one text in it")
    return texts


def _parse_json_line(path: Path, line_number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}, line {line_number}: malformed JSON ({error.msg} at column {error.colno}); "
            "each line must be one complete JSON object"
        ) from None
    if not isinstance(record, dict):
        raise DataError(
            f"{path}, line {line_number}: expected a JSON object, got {type(record).__name__}; "
            'write each line as {"field": ...}'
        )
    return record


def load_mcq(path: PathLike, domain: str = "general") -> list[MCQItem]:
    """Load multiple-choice questions in the WMDP / MMLU layout (the Hugging Face ``cais/wmdp`` and ``cais/mmlu``
    files as JSON Lines).

    ``.jsonl``, one object per line: ``{"question": str, "choices": [str, ...], "answer": int | "A".."Z"}``,
    optionally ``"subject": str`` (MMLU) and ``"id": str | int``. ``answer`` is the 0-based index into ``choices``
    or a letter ("A" = 0), as lm-evaluation-harness' files give it. Every item gets ``domain``; its ``fact_id``
    is the record's ``id`` or ``"FILE:LINE"``. Other fields are ignored.
    """
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise DataError(
            f"{path}: unknown extension {path.suffix or '(none)'!r} for multiple-choice questions; "
            'use .jsonl with one {"question": ..., "choices": [...], "answer": ...} object per line'
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass the path of an existing .jsonl file")
    items: list[MCQItem] = []
    with open(path, encoding="utf-8") as handle:
        lines = list(handle)
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse_json_line(path, line_number, line)
        items.append(_mcq_item(record, domain, f"{path}, line {line_number}", f"{path.name}:{line_number}"))
    if not items:
        raise DataError(f"{path} is empty: it holds no questions; put at least one question line in it")
    return items


def _mcq_item(record: dict[str, Any], domain: str, where: str, default_id: str) -> MCQItem:
    for field in ("question", "choices", "answer"):
        if field not in record:
            raise DataError(
                f'{where}: missing the "{field}" field; each line needs '
                '{"question": str, "choices": [str, ...], "answer": int or letter}'
            )
    question, choices = record["question"], record["choices"]
    if not isinstance(question, str):
        raise DataError(f'{where}: "question" must be a string, got {type(question).__name__}')
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DataError(f'{where}: "choices" must be a list of strings, got {json.dumps(choices)[:80]}')
    if len(choices) < 2:
        raise DataError(f'{where}: "choices" holds {len(choices)} choice(s); a question needs at least 2')
    if len(choices) > 26:
        raise DataError(f'{where}: "choices" holds {len(choices)} choices; at most 26 (letters A..Z) are supported')
    empty = [index for index, choice in enumerate(choices) if not choice.strip()]
    if empty:
        raise DataError(f'{where}: choice {empty[0]} is empty; every choice needs some text')
    subject = record.get("subject", "")
    if subject is None:
        subject = ""
    if not isinstance(subject, str):
        raise DataError(f'{where}: "subject" must be a string such as "anatomy", got {type(subject).__name__} '
                        f"{json.dumps(subject)[:40]}")
    identifier = record.get("id", default_id)
    if isinstance(identifier, bool) or not isinstance(identifier, (str, int)):
        raise DataError(f'{where}: "id" must be a string or an integer, got {type(identifier).__name__}')
    answer = _answer_index(record["answer"], len(choices), where)
    return MCQItem(question=question, choices=tuple(choices), answer=answer, domain=domain,
                   fact_id=str(identifier), subject=subject.strip())


def _answer_index(answer: Any, n_choices: int, where: str) -> int:
    letters = "".join(chr(ord("A") + i) for i in range(n_choices))
    if isinstance(answer, bool):  # bool is an int subclass; True is not a choice index
        raise DataError(f'{where}: "answer" must be an integer index or a letter, got {answer!r}')
    if isinstance(answer, str):
        letter = answer.strip().upper()
        if len(letter) == 1 and letter in letters:
            return letters.index(letter)
        if letter.isdigit():
            answer = int(letter)
        else:
            raise DataError(
                f'{where}: "answer" {answer!r} is not a valid letter; use one of {", ".join(letters)} '
                f"or an index 0..{n_choices - 1}"
            )
    if not isinstance(answer, int):
        raise DataError(f'{where}: "answer" must be an integer index or a letter, got {type(answer).__name__}')
    if not 0 <= answer < n_choices:
        raise DataError(
            f'{where}: "answer" {answer} is out of range; valid indices are 0..{n_choices - 1} '
            f"for {n_choices} choices (or letters {letters[0]}..{letters[-1]})"
        )
    return answer

"""Loaders for users' own files: texts, multiple-choice questions, JSON Lines; every bad input a DataError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mechunlearn.data import (
    ClozeProbe,
    DataError,
    Fact,
    MCQItem,
    TruthRatioItem,
    load_mcq,
    load_texts,
    read_jsonl,
    save_jsonl,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_txt_is_one_text_per_non_empty_line(tmp_path: Path) -> None:
    path = write(tmp_path / "forget.txt", "first text\n\n  \nsecond text, with  spaces \r\nthird")
    assert load_texts(path) == ["first text", "second text, with  spaces ", "third"]


def test_jsonl_texts_and_extra_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "retain.jsonl", '{"text": "a"}\n\n{"text": "b\\nc", "id": 3}\n')
    assert load_texts(path) == ["a", "b\nc"]


@pytest.mark.parametrize("name,content", [("empty.txt", ""), ("blank.txt", "\n  \n"), ("empty.jsonl", "\n")])
def test_empty_files_are_refused(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match="is empty") as error:
        load_texts(path)
    assert name in str(error.value)


def test_malformed_jsonl_line_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "texts.jsonl", '{"text": "ok"}\n\n{"text": "broken"\n')
    with pytest.raises(DataError) as error:
        load_texts(path)
    assert "texts.jsonl" in str(error.value) and "line 3" in str(error.value)
    with pytest.raises(DataError, match="line 3"):
        read_jsonl(path)


def test_missing_text_field_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "texts.jsonl", '{"text": "ok"}\n{"content": "wrong key"}\n')
    with pytest.raises(DataError) as error:
        load_texts(path)
    assert "line 2" in str(error.value) and '"text"' in str(error.value)


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"\.csv"):
        load_texts(write(tmp_path / "texts.csv", "a,b\n"))
    with pytest.raises(DataError, match="no such file"):
        load_texts(tmp_path / "absent.txt")


def test_mcq_wmdp_layout_with_int_and_letter_answers(tmp_path: Path) -> None:
    rows = [
        {"question": "Q1?", "choices": ["a", "b", "c", "d"], "answer": 2},
        {"question": "Q2?", "choices": ["a", "b", "c", "d"], "answer": "D"},
        {"question": "Q3?", "choices": ["a", "b", "c"], "answer": "b"},
    ]
    path = write(tmp_path / "wmdp.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_mcq(path, domain="forget")
    assert [i.answer for i in items] == [2, 3, 1]
    assert items[0] == MCQItem(question="Q1?", choices=("a", "b", "c", "d"), answer=2, domain="forget",
                               fact_id="wmdp.jsonl:1")
    assert all(i.domain == "forget" for i in items) and items[2].fact_id == "wmdp.jsonl:3"


def test_mcq_mmlu_layout_with_subject_and_id(tmp_path: Path) -> None:
    rows = [{"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 1, "subject": "high_school_biology",
             "id": 17},
            {"question": "R?", "choices": ["a", "b"], "answer": "A", "subject": None}]
    items = load_mcq(write(tmp_path / "mmlu.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert items[0].subject == "high_school_biology" and items[0].fact_id == "17"
    assert items[1].subject == "" and items[1].fact_id == "mmlu.jsonl:2"


@pytest.mark.parametrize("record,expected", [
    ({"question": "Q?", "choices": ["a", "b"], "answer": 0, "subject": 3}, '"subject" must be a string'),
    ({"question": "Q?", "choices": ["a", "b"], "answer": 0, "subject": ["bio"]}, '"subject" must be a string'),
    ({"question": "Q?", "choices": ["only"], "answer": 0}, "at least 2"),
    ({"question": "Q?", "choices": [], "answer": 0}, "at least 2"),
    ({"question": "Q?", "choices": "abcd", "answer": 0}, "list of strings"),
    ({"question": "Q?", "choices": ["a", 2], "answer": 0}, "list of strings"),
    ({"question": "Q?", "choices": ["a", " "], "answer": 0}, "choice 1 is empty"),
    ({"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": "AB"}, "not a valid letter"),
    ({"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 1.0}, "integer index or a letter"),
    ({"question": "Q?", "choices": ["a", "b"], "answer": 0, "id": [1]}, '"id" must be'),
])
def test_mcq_bad_fields_name_file_and_line(tmp_path: Path, record, expected) -> None:
    good = json.dumps({"question": "ok", "choices": ["a", "b"], "answer": 0})
    path = write(tmp_path / "wmdp.jsonl", good + "\n\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=expected) as error:
        load_mcq(path)
    assert "wmdp.jsonl, line 3" in str(error.value)


@pytest.mark.parametrize("answer", [4, -1, "E", True])
def test_mcq_answer_out_of_range_names_line_and_range(tmp_path: Path, answer) -> None:
    good = json.dumps({"question": "ok", "choices": ["a", "b", "c", "d"], "answer": 0})
    bad = json.dumps({"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": answer})
    path = write(tmp_path / "mmlu.jsonl", good + "\n" + bad + "\n")
    with pytest.raises(DataError) as error:
        load_mcq(path)
    message = str(error.value)
    assert "mmlu.jsonl" in message and "line 2" in message
    if answer in (4, -1, "E"):
        assert "0..3" in message or "A, B, C, D" in message


def test_mcq_missing_field_and_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "q.jsonl", json.dumps({"question": "Q?", "answer": 0}) + "\n")
    with pytest.raises(DataError, match='line 1: missing the "choices"'):
        load_mcq(path)
    with pytest.raises(DataError, match="is empty"):
        load_mcq(write(tmp_path / "none.jsonl", ""))


def test_save_jsonl_round_trip_and_atomic(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "sub" / "records.jsonl"
    records = [{"b": 1, "a": "x"}, {"text": "ünïcode"}]
    save_jsonl(path, records)
    assert read_jsonl(path) == records
    before = path.read_bytes()

    def broken_records():
        yield {"ok": 1}
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        save_jsonl(path, broken_records())
    assert path.read_bytes() == before

    import mechunlearn.data as data_module

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(data_module.os, "replace", failing_replace)
    with pytest.raises(OSError):
        save_jsonl(path, [{"new": True}])
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["records.jsonl"]


def test_shared_types_are_frozen_and_hashable() -> None:
    fact = Fact("f0", "Aldric", "lives_in", "Varn", ("saga_0",), "unique")
    probe = ClozeProbe("Aldric lives in", " Varn", "f0", "unique", "forget")
    item = TruthRatioItem("Where?\nAldric lives in", " the town of Varn", (" the town of Orm",) * 3, "f0",
                          "unique", "forget")
    assert len({fact, fact}) == 1 and hash(probe) == hash(ClozeProbe(*vars(probe).values()))
    with pytest.raises(AttributeError):
        fact.object = "Orm"  # type: ignore[misc]
    assert MCQItem("q", ("a", "b"), 1).domain == "general" and item.perturbed_answers[0] == " the town of Orm"

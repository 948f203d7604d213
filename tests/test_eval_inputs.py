"""What goes into an evaluation: the model's own tokenizer (a world or tokenizer with another vocabulary is
refused), MCQ formats and per-subject accuracy on a hand-forced model, bad MCQ items, and ``mechunlearn eval`` on a
user's checkpoint with its own data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechunlearn import evals, models
from mechunlearn.data import MCQItem, save_jsonl
from test_evals import Bigram, ids_of


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def toy(toy_model):
    return toy_model, toy_model.tokenizer


# ------------------------------------------------------------------------- a model's own tokenizer
def test_a_world_or_tokenizer_with_another_vocabulary_is_refused(toy, micro_world):
    from conftest import make_tokenizer

    model, tokenizer = toy
    with pytest.raises(evals.TokenizerMismatch) as error:
        evals.evaluate_model(model, micro_world)
    message = str(error.value)
    assert "the world's tokenizer" in message and "the model's own tokenizer" in message
    assert f"({len(micro_world.tokenizer)} tokens)" in message and f"({len(tokenizer)} tokens)" in message
    # same size, other vocabulary: the vocabularies themselves are compared, not their sizes
    other = make_tokenizer(micro_world.training_texts()[:100], vocab_size=len(tokenizer))
    assert len(other) == len(tokenizer) and other.get_vocab() != tokenizer.get_vocab()
    with pytest.raises(evals.TokenizerMismatch, match="given as tokenizer="):
        evals.evaluate_model(model, tokenizer=other, forget_texts=["the wizard Orlo"])
    with pytest.raises(evals.TokenizerMismatch):
        evals.nll_per_token(model, other, ["the wizard Orlo keeps a wand"])
    # a reloaded copy of the model's own tokenizer is the same vocabulary: accepted
    from transformers import AutoTokenizer

    copy = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    assert copy is not tokenizer
    assert evals.nll_per_token(model, copy, ["the wizard Orlo keeps a wand"]) == pytest.approx(
        evals.nll_per_token(model, None, ["the wizard Orlo keeps a wand"]))


def test_a_model_without_a_tokenizer_takes_the_worlds_if_it_fits(micro_world, micro_base):
    hf_model = models.to_hf(micro_base)  # a transformers model carries no tokenizer
    hooked = evals.item_tables(micro_base, micro_world)
    plain = evals.item_tables(hf_model, micro_world)
    assert plain["cloze"]["correct"].tolist() == hooked["cloze"]["correct"].tolist()
    np.testing.assert_allclose(plain["truth_ratio"]["R"], hooked["truth_ratio"]["R"], rtol=1e-4)
    from conftest import make_tokenizer

    too_big = make_tokenizer(micro_world.training_texts()[:200], vocab_size=hf_model.config.vocab_size + 50)
    with pytest.raises(evals.TokenizerMismatch, match="more tokens than the model's vocabulary"):
        evals.nll_per_token(hf_model, too_big, ["Pogo lives in Sturel"])


# ---------------------------------------------------------------------------- MCQ per subject, bad items
def forced_letter_model(tokenizer, letter: str) -> Bigram:
    """A bigram LM that answers every letter-format question with ``letter``: after "Answer:" the space, after
    the space the letter."""
    colon = ids_of(tokenizer, "Answer:")[-1]
    space, target = ids_of(tokenizer, f" {letter}")
    assert ids_of(tokenizer, " A")[0] == space  # every letter continuation starts with the same space token
    table = torch.zeros(len(tokenizer), len(tokenizer))
    table[colon, space] = 10.0
    table[space, target] = 10.0
    return Bigram(table)


def test_per_subject_accuracy_on_a_forced_model(toy, tmp_path):
    _, tokenizer = toy
    model = forced_letter_model(tokenizer, "B")
    answers = {"anatomy": [1, 1, 0], "virology": [1, 2, 3, 0, 1], "": [1, 0]}  # the model always says B (= 1)
    records = [{"question": f"Question {subject} {i}?", "choices": ["w", "x", "y", "z"], "answer": answer,
                **({"subject": subject} if subject else {})}
               for subject, subject_answers in answers.items() for i, answer in enumerate(subject_answers)]
    save_jsonl(tmp_path / "mmlu.jsonl", records)
    result = evals.evaluate_model(model, tokenizer=tokenizer, mcq_general=tmp_path / "mmlu.jsonl",
                                  generation_prompts=[])
    assert result["mcq_general_format"] == "letters" and result["mcq_general_n"] == 10
    assert result["mcq_general_acc"] == pytest.approx(5 / 10)
    by_subject, counts = result["mcq_general_by_subject"], result["mcq_general_subject_count"]
    assert by_subject == pytest.approx({"anatomy": 2 / 3, "virology": 2 / 5, "unspecified": 1 / 2})
    assert counts == {"anatomy": 3, "virology": 5, "unspecified": 2}
    weighted = sum(by_subject[s] * counts[s] for s in counts) / sum(counts.values())
    assert weighted == pytest.approx(result["mcq_general_acc"])
    assert result["intervals"]["mcq_general_by_subject/virology"]["n"] == 5
    # the cloze form of the same file scores choice texts instead: the letter-forcing model has no say there
    cloze = evals.evaluate_model(model, tokenizer=tokenizer, mcq_general=tmp_path / "mmlu.jsonl",
                                 mcq_format="cloze", generation_prompts=[])
    assert cloze["mcq_general_format"] == "cloze"


def test_bad_mcq_items_get_one_clear_error(toy):
    from types import SimpleNamespace

    model, tokenizer = toy
    # items built by hand (MCQItem's annotations are not enforced at run time): duck-typed stand-ins
    with pytest.raises(ValueError, match="subject must be a string"):
        evals.mcq_table(model, tokenizer, [SimpleNamespace(question="Q?", choices=("a", "b"), answer=0, subject=3)],
                        mcq_format="letters")
    with pytest.raises(ValueError, match="not a choice index.*letters too"):
        evals.mcq_table(model, tokenizer, [SimpleNamespace(question="Q?", choices=("a", "b"), answer="B")])
    with pytest.raises(ValueError, match="not a choice index"):
        evals.mcq_table(model, tokenizer, [MCQItem("Q?", ("a", "b"), 2)])
    with pytest.raises(ValueError, match="fewer than 2 choices"):
        evals.mcq_table(model, tokenizer, [MCQItem("Q?", ("a",), 0)])
    with pytest.raises(ValueError, match="unknown MCQ format"):
        evals.mcq_table(model, tokenizer, [MCQItem("Q?", ("a", "b"), 0)], mcq_format="letter")
    with pytest.raises(ValueError, match="unknown mcq_format"):
        evals.evaluate_model(model, mcq_general=[MCQItem("Q?", ("a", "b"), 0)], mcq_format="mmlu")


# ------------------------------------------------------------------------------------------- the CLI
def test_eval_cli_on_a_users_checkpoint_without_a_world(toy_model_dir, micro_world, tmp_path, capsys):
    from mechunlearn.cli import main

    (tmp_path / "forget.txt").write_text("the wizard Orlo keeps a silver wand in Varnhold\nPell rides to Varnhold\n")
    save_jsonl(tmp_path / "wmdp.jsonl", [{"question": "Who keeps a silver wand?", "choices": ["Orlo", "Pell", "a baker",
                                                                                            "the farmer"],
                                          "answer": "A"}])
    code = main(["eval", str(toy_model_dir), "--forget", str(tmp_path / "forget.txt"), "--mcq-forget",
                 str(tmp_path / "wmdp.jsonl"), "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mcq_forget_format"] == "letters" and printed["mcq_forget_n"] == 1
    assert printed["forget_nll"] > 0 and "forget_nll" in printed["intervals"]
    assert printed["forget_sources"] is None and printed["mcq_general_acc"] is None
    assert (tmp_path / "out" / "metrics.json").is_file() and (tmp_path / "out" / "mcq.csv").is_file()
    # the same checkpoint with a world of another vocabulary: one line naming both, exit status 2
    code = main(["eval", str(toy_model_dir), "--world", str(micro_world.tokenizer_dir.parent), "--device", "cpu"])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the world's tokenizer" in error and "the model's own tokenizer" in error

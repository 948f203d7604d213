"""Who's Harry Potter: the generic-logit formula, anchored translation and token alignment, and a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechunlearn.methods import create
from mechunlearn.methods.whp import aligned_targets, generic_logits, translate
from mechunlearn.unlearn import assert_no_hooks, unlearn


def test_generic_logits_matches_hand_computation():
    base = np.array([1.0, 2.0, -1.0, 0.5])
    reinforced = np.array([3.0, 1.0, -1.0, 0.7])
    alpha = 5.0
    expected = base - alpha * np.maximum(reinforced - base, 0.0)  # [-9, 2, -1, -0.5]
    actual = generic_logits(torch.tensor(base), torch.tensor(reinforced), alpha).numpy()
    np.testing.assert_allclose(actual, expected)
    np.testing.assert_allclose(actual, [-9.0, 2.0, -1.0, -0.5])


def test_alpha_zero_returns_baseline():
    base, reinforced = torch.randn(3, 7), torch.randn(3, 7)
    assert torch.equal(generic_logits(base, reinforced, 0.0), base)


def test_translate_records_spans():
    terms = {"Orlo": "Bex", "Varnhold": "Tess"}
    text = "Orlo went to Varnhold. Orlo's wand."
    translated, spans = translate(text, terms)
    assert translated == "Bex went to Tess. Bex's wand."
    assert [(s[4], text[s[0]:s[1]], translated[s[2]:s[3]]) for s in spans] == [
        ("Orlo", "Orlo", "Bex"), ("Varnhold", "Varnhold", "Tess"), ("Orlo", "Orlo", "Bex")]
    assert translate("Orlovian tale", terms)[0] == "Orlovian tale"  # whole words only


def test_alignment_drops_repeats_and_inner_tokens(micro_world):
    tokenizer = micro_world.tokenizer
    term, substitute = next(iter(micro_world.anchored_terms.items()))
    text = f"{term} owns a cup.\n{term} lives in a town."
    block = aligned_targets(tokenizer, text, {term: substitute}, 128)
    assert block is not None
    original = tokenizer(text, add_special_tokens=False)["input_ids"]
    translated = tokenizer(text.replace(term, substitute), add_special_tokens=False)["input_ids"]
    assert block.original_ids == original and block.translated_ids == translated
    term_tokens = len(tokenizer(term, add_special_tokens=False)["input_ids"])
    second = original.index(tokenizer("\n", add_special_tokens=False)["input_ids"][0]) + 1
    # the repeated term (first token and inner tokens) is left out of the loss
    assert all(index == -1 for index in block.translated_index[second:second + term_tokens])
    # ordinary tokens map onto identical translated tokens
    for j, k in enumerate(block.translated_index):
        if k >= 0 and j >= term_tokens:
            assert block.original_ids[j] == block.translated_ids[k] or block.translated_ids[k] in \
                tokenizer(" " + substitute, add_special_tokens=False)["input_ids"] + \
                tokenizer(substitute, add_special_tokens=False)["input_ids"]
    # the substitute used earlier is penalised afterwards
    assert block.substitute_first_tokens[-1] == [translated[0]]


def test_whp_unlearns_forget_facts(micro_world, micro_base):
    from mechunlearn.evals.cloze import cloze_table

    before = cloze_table(micro_base, micro_base.tokenizer, micro_world.cloze_probes("forget"))
    method = create("whp", lr=1e-3, epochs=3, batch_size=8)
    result = unlearn(micro_base, method, micro_world.forget_texts(), micro_world.retain_texts(),
                     world=micro_world, progress=False)
    after = cloze_table(micro_base, micro_base.tokenizer, micro_world.cloze_probes("forget"))
    unique_before = before[before.category == "unique"].correct.mean()
    unique_after = after[after.category == "unique"].correct.mean()
    assert unique_after < unique_before - 0.2
    assert result.training.steps > 0 and method.skipped_blocks == 0
    assert_no_hooks(micro_base)


def test_whp_anchored_terms_file(tmp_path, toy_model, toy_texts):
    forget, retain = toy_texts
    with pytest.raises(ValueError, match="anchored-term dictionary"):
        unlearn(toy_model, create("whp", max_steps=1), forget, retain, progress=False)
    terms = tmp_path / "terms.json"
    terms.write_text(json.dumps({"Orlo": "Bram", "Varnhold": "Kettle"}))
    method = create("whp", max_steps=2, reinforce_epochs=1, anchored_terms_file=str(terms))
    unlearn(toy_model, method, forget, retain, progress=False)
    assert_no_hooks(toy_model)
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="non-empty JSON object"):
        unlearn(toy_model, create("whp", max_steps=1, anchored_terms_file=str(tmp_path / "bad.json")),
                forget, retain, progress=False)

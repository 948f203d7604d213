"""The embedded world: determinism, categories recomputed from the rendered text, probes, tokenizer, storage.

Expected values are recomputed here from the documents themselves (which source's text states which fact),
not read back from the generator's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mechunlearn.data import DataError
from mechunlearn.world import PRESETS, RELATIONS, TEMPLATES, World, build_world, load_world
from mechunlearn.world import store as world_store

SAGA = "saga_0"


@pytest.fixture(scope="module")
def world() -> World:
    return build_world("micro", seed=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Path]:
    out = tmp_path_factory.mktemp("worlds") / "micro0"
    return build_world("micro", seed=0, out=out), out


def renderings(fact, heldout: bool = True) -> list[str]:
    templates = TEMPLATES[fact.relation]
    chosen = list(templates.train) + ([templates.heldout] if heldout else [])
    return [t.format(s=fact.subject, o=fact.object) for t in chosen]


def stating_sources(world: World, fact) -> set[str]:
    """Which sources' documents contain a training rendering of the fact: recomputed from the text."""
    texts = renderings(fact, heldout=False)
    return {doc.source for doc in world.documents if any(t in doc.text for t in texts)}


def expected_category(stating: set[str], forget: set[str]) -> str:
    if not stating:
        return "inferred"
    if stating <= forget:
        return "unique"
    if stating & forget:
        return "shared"
    return "unique" if len(stating) == 1 else "shared"


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def word_in(name: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_files_and_hash(tmp_path: Path, saved) -> None:
    world, out = saved
    again = build_world("micro", seed=0, out=tmp_path / "again")
    assert again.content_hash == world.content_hash
    first, second = tree_bytes(out), tree_bytes(tmp_path / "again")
    assert sorted(first) == sorted(second)
    assert all(first[name] == second[name] for name in first)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["content_hash"] == world.content_hash
    for name, digest in manifest["files"].items():  # the manifest's per-file hashes are the files' sha256
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_other_seed_gives_other_world(world: World) -> None:
    other = build_world("micro", seed=1)
    assert other.content_hash != world.content_hash
    assert {f.subject for f in other.facts} != {f.subject for f in world.facts}


def test_unknown_size_names_it_and_lists_known_sizes() -> None:
    with pytest.raises(ValueError) as error:
        build_world("gigantic", seed=0)
    message = str(error.value)
    assert "gigantic" in message and all(size in message for size in PRESETS)
    with pytest.raises(ValueError, match="no_such_setting"):
        build_world("micro", seed=0, overrides={"no_such_setting": 1})


def test_micro_size_and_config(world: World) -> None:
    assert world.config.size == "micro" and world.config.seed == 0
    assert world.config.vocab_size == PRESETS["micro"]["vocab_size"]
    assert 50 <= len(world.facts) <= 80
    n_tokens = sum(len(ids) for ids in world.tokenizer(world.training_texts())["input_ids"])
    assert 10_000 <= n_tokens <= 15_000
    assert max(len(world.tokenizer(t)["input_ids"]) for t in world.training_texts()) <= 96  # the row length


# ------------------------------------------------------------------------------------------ templates


def test_every_relation_has_three_templates_and_a_cloze_template_ending_in_the_object() -> None:
    assert set(TEMPLATES) == set(RELATIONS)
    for relation, templates in TEMPLATES.items():
        assert len(set(templates.train)) >= 3, relation
        assert templates.cloze in templates.train and templates.cloze.endswith("{o}.")
        assert templates.heldout not in templates.train


def test_heldout_templates_never_occur_in_training_text(world: World) -> None:
    training = "\n".join(world.training_texts())
    for relation, templates in TEMPLATES.items():
        pattern = re.escape(templates.heldout).replace(re.escape("{s}"), r"\w+").replace(re.escape("{o}"), r"\w+")
        assert re.search(pattern, training) is None, relation
    heldout_sentences = set(world.heldout.values())
    assert heldout_sentences and not heldout_sentences & set(training.split("\n"))


def test_documents_are_short_and_each_fact_rendered_reps_times(world: World) -> None:
    for doc in world.documents + [type(world.documents[0])("filler", t) for t in world.filler_texts]:
        assert world.config.doc_min_sentences <= doc.text.count("\n") + 1 <= world.config.doc_max_sentences or \
            doc.source != "filler" and doc.text.count("\n") + 1 < world.config.doc_min_sentences
    for fact in world.facts:
        for source in fact.sources:
            text = "\n".join(d.text for d in world.documents if d.source == source).split("\n")
            count = sum(sentence in renderings(fact, heldout=False) for sentence in text)
            assert count == world.config.reps, (fact, source)


# ------------------------------------------------------------------------------------------ categories


@pytest.mark.parametrize("forget", [(SAGA,), ("saga_1",), ("saga_0", "article_0")])
def test_categories_match_sources_recomputed_from_documents(world: World, forget) -> None:
    for fact in world.facts:
        stating = stating_sources(world, fact)
        assert stating == set(fact.sources), fact
        assert world.category_of(fact, forget) == expected_category(stating, set(forget)), fact
        if stating:
            assert world.domain_of(fact, forget) == ("forget" if stating & set(forget) else "retain")
    assert all(f.category == world.category_of(f, world.default_forget_sources) for f in world.facts)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_micro_forget_target_has_unique_shared_and_inferred_facts(seed: int) -> None:
    world = build_world("micro", seed)
    categories = [world.category_of(f) for f in world.facts_of("forget")]
    assert categories.count("unique") >= 0.6 * len(categories)
    assert categories.count("shared") >= 2 and categories.count("inferred") >= 2
    assert world.facts_of("retain")


# the minimums for the default world's default forget target (issue 8)
DEFAULT_MINIMUMS = {"unique": 150, "shared": 50, "inferred": 50}


def category_counts(world: World, forget, domain: str) -> dict[str, int]:
    """Counts recomputed from the documents (which sources' texts state each fact), not from fact.category."""
    stated_by = {fact.fact_id: stating_sources(world, fact) for fact in world.facts}
    by_id = {fact.fact_id: fact for fact in world.facts}
    counts = {"unique": 0, "shared": 0, "inferred": 0}
    for fact in world.facts:
        stating = stated_by[fact.fact_id]
        premises = set().union(*(stated_by[p] for p in fact.premises)) if fact.premises else set()
        in_forget = bool(stating & forget) if stating else bool(premises & forget)
        if in_forget == (domain == "forget"):
            counts[expected_category(stating, forget)] += 1
    assert set(by_id) == set(stated_by)
    return counts


@pytest.fixture(scope="module")
def default_world() -> World:
    return build_world("default", seed=0)


def test_default_world_meets_the_minimums(default_world: World) -> None:
    world = default_world
    forget = set(world.default_forget_sources)
    assert forget == {"saga_0", "saga_1", "saga_2", "saga_3"} and world.series["series_0"] == tuple(sorted(forget))
    assert len(world.sources) >= 16 and len(world.series) >= 2
    forget_counts = category_counts(world, forget, "forget")
    retain_counts = category_counts(world, forget, "retain")
    for category, minimum in DEFAULT_MINIMUMS.items():
        assert forget_counts[category] >= minimum, (category, forget_counts)
        assert retain_counts[category] >= forget_counts[category], (category, retain_counts, forget_counts)
    stats = world.stats()["facts_by_domain_category"]
    assert stats == {f"{d}/{c}": n for d, counts in (("forget", forget_counts), ("retain", retain_counts))
                     for c, n in counts.items()}
    # every saga of the series is a source with its own unique facts: per-source switches have material
    for saga in forget:
        assert len(world.facts_of("forget", [saga], category="unique")) >= 25, saga


def test_default_world_is_byte_identical_when_built_again(default_world: World) -> None:
    again = build_world("default", seed=0)
    assert again.files() == default_world.files() and again.content_hash == default_world.content_hash
    assert json.loads(again.files()["config.json"])["config"]["n_sagas"] == PRESETS["default"]["n_sagas"]


def test_default_documents_fit_the_model_context(default_world: World) -> None:
    tokenizer = default_world.tokenizer
    assert max(len(ids) for ids in tokenizer(default_world.training_texts())["input_ids"]) <= 96


def test_shared_forget_facts_are_stated_in_retain_documents(world: World) -> None:
    retain = "\n".join(world.retain_texts())
    shared = world.facts_of("forget", category="shared")
    assert shared
    for fact in shared:
        assert any(t in retain for t in renderings(fact, heldout=False)), fact


def test_unique_forget_facts_never_occur_in_retain_texts(world: World) -> None:
    retain_sentences = set("\n".join(world.retain_texts() + world.eval_texts("retain")).split("\n"))
    unique = world.facts_of("forget", category="unique")
    assert unique
    for fact in unique:
        assert not set(renderings(fact)) & retain_sentences, fact


def test_inferred_facts_are_never_stated_and_follow_from_stated_ones(world: World) -> None:
    everything = "\n".join(world.training_texts() + world.eval_texts("forget") + world.eval_texts("retain"))
    stated = {(f.subject, f.relation): f.object for f in world.facts if f.sources}
    inferred = [f for f in world.facts if not f.sources]
    assert inferred
    for fact in inferred:
        assert fact.category == "inferred"
        assert not any(t in everything for t in renderings(fact)), fact
        if fact.relation == "student_of":
            assert stated[(fact.object, "mentor_of")] == fact.subject
        elif fact.relation == "home_region":
            assert stated[(stated[(fact.subject, "lives_in")], "in_region")] == fact.object
        else:
            assert fact.relation == "works_in"
            assert stated[(stated[(fact.subject, "member_of")], "located_in")] == fact.object


# ------------------------------------------------------------------------------------------ splits


def test_forget_and_retain_texts_partition_the_corpus(world: World) -> None:
    forget, retain = world.forget_texts(), world.retain_texts()
    assert forget == [d.text for d in world.documents if d.source == SAGA]
    assert len(forget) + len(retain) == len(world.documents) + len(world.filler_texts)
    assert set(world.filler_texts) <= set(retain)
    both = world.forget_texts(["saga_0", "article_0"])
    assert len(both) > len(forget)
    with pytest.raises(DataError) as error:
        world.forget_texts(["no_such_saga"])
    assert "no_such_saga" in str(error.value) and all(s in str(error.value) for s in world.sources)


def test_training_documents_carry_their_source(world: World) -> None:
    everything = world.training_documents()
    assert [d.text for d in everything] == world.training_texts()
    assert [d.source for d in everything[len(world.documents):]] == ["filler"] * len(world.filler_texts)
    assert everything[: len(world.documents)] == world.documents and "filler" not in world.sources
    without = world.training_documents(without=[SAGA])
    assert [d.text for d in without] == world.retain_texts([SAGA])
    assert {d.source for d in without} == {d.source for d in everything} - {SAGA}
    assert world.training_documents(without=()) == everything


def test_a_series_name_stands_for_its_sagas() -> None:
    world = build_world("micro", seed=0)
    assert world.series == {"series_0": ("saga_0",), "series_1": ("saga_1",)}
    assert world.resolve_forget("series_1") == ("saga_1",) == world.resolve_forget(["saga_1"])
    assert world.resolve_forget(["series_0", "article_0"]) == ("article_0", "saga_0")
    with pytest.raises(DataError, match="series_0"):
        world.resolve_forget("series_9")


def test_eval_texts_hold_each_domain_fact_in_its_heldout_phrasing(world: World) -> None:
    training = set(world.training_texts())
    for domain in ("forget", "retain"):
        sentences = "\n".join(world.eval_texts(domain)).split("\n")
        expected = {TEMPLATES[f.relation].heldout.format(s=f.subject, o=f.object)
                    for f in world.facts_of(domain) if f.sources}
        assert sorted(sentences) == sorted(expected)
        assert not training & set(world.eval_texts(domain))
    assert world.eval_texts("filler") and world.eval_texts("forget") == world.eval_texts("forget")
    with pytest.raises(ValueError, match="unknown domain"):
        world.eval_texts("biology")


def test_forget_entities_and_anchored_terms(world: World) -> None:
    retain = "\n".join(world.retain_texts())
    forget = "\n".join(world.forget_texts())
    entities = world.forget_entities()
    assert entities and set(world.anchored_terms) == set(entities)
    for name in entities:
        assert word_in(name, forget) and not word_in(name, retain)
    corpus = "\n".join(world.training_texts() + world.eval_texts("forget") + world.eval_texts("retain")
                       + [json.dumps(r) for r in world.probes.values()])
    substitutes = list(world.anchored_terms.values())
    names = {e.name.lower() for e in world.entities}
    assert len(set(substitutes)) == len(substitutes)
    for substitute in substitutes:
        assert substitute.lower() not in corpus.lower() and substitute.lower() not in names


# ------------------------------------------------------------------------------------------ probes


def test_cloze_probes_are_prefixes_of_the_cloze_sentence(world: World) -> None:
    probes = world.cloze_probes()
    assert len(probes) == len(world.facts)
    training = set("\n".join(world.training_texts()).split("\n"))
    for probe in probes:
        fact = world.fact(probe.fact_id)
        sentence = TEMPLATES[fact.relation].cloze.format(s=fact.subject, o=fact.object)
        assert probe.prompt + probe.answer + "." == sentence
        assert probe.answer == " " + fact.object and not probe.prompt.endswith(" ")
        assert (sentence in training) == bool(fact.sources)
        assert probe.domain == world.domain_of(fact) and probe.category == world.category_of(fact)
    assert {p.domain for p in world.cloze_probes("forget")} == {"forget"}
    assert len(world.cloze_probes("forget")) + len(world.cloze_probes("retain")) == len(probes)


def test_mcq_answer_points_to_the_true_object(world: World) -> None:
    groups = {e.name: e.group for e in world.entities}
    positions = set()
    for domain in ("forget", "retain"):
        items = world.mcq_items(domain)
        assert items and {i.domain for i in items} == {domain}
        for item in items:
            fact = world.fact(item.fact_id)
            assert len(item.choices) == 4 and len(set(item.choices)) == 4
            assert item.choices[item.answer] == fact.object
            for index, choice in enumerate(item.choices):
                if index != item.answer:
                    assert groups.get(choice) == groups.get(fact.object) and choice != fact.subject
            positions.add(item.answer)
    assert positions == {0, 1, 2, 3}


def test_truth_ratio_items_have_three_wrong_answers_of_the_same_form(world: World) -> None:
    items = world.truth_ratio_items()
    assert len(items) == len(world.facts)
    for item in items:
        fact = world.fact(item.fact_id)
        assert len(item.perturbed_answers) >= 3 and len(set(item.perturbed_answers)) == len(item.perturbed_answers)
        assert item.paraphrased_answer not in item.perturbed_answers
        assert item.paraphrased_answer.endswith(" " + fact.object)
        prefix = item.paraphrased_answer[: -len(fact.object)]
        for wrong in item.perturbed_answers:
            assert wrong.startswith(prefix) and not word_in(fact.object, wrong)
        assert fact.subject in item.question
    assert {i.domain for i in world.truth_ratio_items("forget", ["saga_1"])} == {"forget"}


# ------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trips_and_has_pythia_special_ids(saved) -> None:
    world, out = saved
    tokenizer = world.tokenizer
    assert tokenizer.eos_token_id == 0 and tokenizer.bos_token_id == 0 and tokenizer.pad_token_id == 1
    assert tokenizer.convert_ids_to_tokens([0, 1]) == ["<|endoftext|>", "<|padding|>"]
    assert len(tokenizer) <= world.config.vocab_size
    samples = world.training_texts()[:20] + [p.prompt + p.answer for p in world.cloze_probes()] + [
        "  two  spaces , odd punctuation ! ", "Zoë — ☃ naïve\tcafé\n\nnew lines", " leading space"]
    for text in samples:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert Path(tokenizer.init_kwargs["name_or_path"]).resolve() == (out / "tokenizer").resolve()
    with_bos = AutoTokenizer.from_pretrained(str(out / "tokenizer"), add_bos_token=True)
    assert with_bos.encode("Hello")[0] == 0


def test_unsaved_world_tokenizer_lives_in_a_directory(world: World) -> None:
    path = Path(world.tokenizer.init_kwargs["name_or_path"])
    assert (path / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------------ storage


def test_save_load_round_trip(saved, tmp_path: Path) -> None:
    world, out = saved
    loaded = load_world(out)
    assert loaded == world and loaded.content_hash == world.content_hash
    assert loaded.facts == world.facts and loaded.documents == world.documents
    assert loaded.cloze_probes() == world.cloze_probes() and loaded.mcq_items("forget") == world.mcq_items("forget")
    assert loaded.anchored_terms == world.anchored_terms and loaded.config == world.config
    assert loaded.tokenizer.encode(world.documents[0].text) == world.tokenizer.encode(world.documents[0].text)
    resaved = tmp_path / "resaved"
    loaded.save(resaved)
    assert tree_bytes(resaved) == tree_bytes(out)


def test_load_rejects_edited_or_missing_worlds(saved, tmp_path: Path) -> None:
    _, out = saved
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "facts.jsonl", "a") as handle:
        handle.write("\n")
    with pytest.raises(DataError, match="facts.jsonl"):
        load_world(copy)
    with pytest.raises(DataError, match="manifest.json"):
        load_world(tmp_path / "nowhere")


def test_failed_save_leaves_nothing_behind(world: World, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "parent" / "world"

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(world_store.shutil, "copyfile", explode)
    with pytest.raises(OSError, match="disk full"):
        world.save(target)
    assert not target.exists() and list((tmp_path / "parent").iterdir()) == []


def test_failed_overwrite_keeps_the_old_world(world: World, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "world"
    world.save(target)
    before = tree_bytes(target)
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == target.resolve() and str(src).endswith(".tmp"):  # the new tree's rename fails
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(world_store.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        world.save(target)
    monkeypatch.undo()
    assert tree_bytes(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["world"]


def test_save_refuses_to_clobber_a_foreign_directory(world: World, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing"):
        world.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resolve_world_caches_presets_under_a_config_digest(tmp_path: Path, monkeypatch) -> None:
    from mechunlearn.world import resolve_world
    from mechunlearn.world.build import preset_cache_dir

    monkeypatch.setenv("MECHUNLEARN_CACHE", str(tmp_path))
    stale = tmp_path / "worlds" / "micro-seed0"  # where an older generator kept its world: never served
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text("{}")
    first = resolve_world("micro", seed=0)
    target = preset_cache_dir("micro", 0)
    assert target.parent == tmp_path / "worlds" and target != stale and (target / "manifest.json").is_file()
    assert resolve_world("micro", seed=0) == first == build_world("micro", seed=0)
    assert preset_cache_dir("micro", 1) != target and preset_cache_dir("default", 0) != target

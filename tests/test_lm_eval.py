"""Our MCQ scoring reproduces lm-evaluation-harness' own per-item predictions, in both formats.

lm-eval (the version pinned in pyproject's ``lmeval`` extra, which ``make install`` installs) runs fully offline
through its Python API: ``HFLM`` on a model that ``models.save`` exported, tasks built from lm-eval's OWN task
configs (read from the installed package: ``mmlu/default``, ``mmlu/continuation``, ``wmdp``) with only the data
source swapped for a JSONL this test writes, and ``log_samples`` for the per-item log-likelihoods. Our side scores
the same items with ``mcq_table`` on the HookedTransformer loaded from the same directory.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mechunlearn import models
from mechunlearn.data import MCQItem, load_mcq, save_jsonl
from mechunlearn.evals.mcq import LETTERS, QA_FORMAT, mcq_prompt, mcq_table

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the pinned test extra: pip install -e '.[lmeval]'")

TOLERANCE = 1e-4  # fp32 HookedTransformer vs fp32 transformers log-likelihoods


def _config(relative: str) -> dict:
    """One of lm-eval's own task config files, as it ships in the installed package."""
    return yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / relative).read_text())


def _task(name: str, template: dict, data: Path, cache: Path, description: str | None = None) -> dict:
    """lm-eval's task config with our JSONL as its test split (no few-shot split: zero-shot, as published)."""
    config = {key: value for key, value in copy.deepcopy(template).items()
              if key not in ("dataset_path", "dataset_name", "fewshot_split", "fewshot_config", "training_split",
                             "validation_split", "num_fewshot")}
    config.update({"task": name, "dataset_path": "json", "test_split": "test",
                   "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(cache)}})
    config.setdefault("metric_list", [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    if description is not None:
        config["description"] = description
    return config


@pytest.fixture(scope="module")
def exported(micro_base_dir, tmp_path_factory):
    """The micro world's base model, loaded as a HookedTransformer and exported by ``models.save``."""
    model = models.load(micro_base_dir, device="cpu")
    return models.save(model, tmp_path_factory.mktemp("export") / "model")


@pytest.fixture(scope="module")
def datasets(micro_world, tmp_path_factory):
    """The micro world's MCQ items (both domains) as the JSONL files each task reads."""
    root = tmp_path_factory.mktemp("lm-eval-data")
    world_items = micro_world.mcq_items("forget") + micro_world.mcq_items("retain")
    records = [{"question": item.question, "choices": list(item.choices), "answer": item.answer}
               for item in world_items]
    # users' files: padded questions (lm-eval strips them), MMLU with a subject, WMDP with letter answers
    mmlu = [dict(record, question=f"  {record['question']}? ", subject="anatomy") for record in records]
    wmdp = [dict(record, question=f"{record['question']}?\n", answer="ABCD"[record["answer"]]) for record in records]
    paths = {"world": root / "world.jsonl", "mmlu": root / "mmlu.jsonl", "wmdp": root / "wmdp.jsonl"}
    save_jsonl(paths["world"], records)
    save_jsonl(paths["mmlu"], mmlu)
    save_jsonl(paths["wmdp"], wmdp)
    return {"world_items": world_items, "paths": paths, "cache": root / "hf-datasets"}


@pytest.fixture(scope="module")
def lm_eval_samples(exported, datasets):
    """lm-eval's logged samples per task, from one ``simple_evaluate`` over four tasks."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    paths, cache = datasets["paths"], datasets["cache"]
    mmlu_letters = _config("mmlu/default/_default_template_yaml")
    mmlu_cloze = _config("mmlu/continuation/_continuation_template_yaml")
    wmdp_letters = _config("wmdp/_default_template_yaml")
    tasks = [
        # the world's items in lm-eval's cloze form: question, then " " + choice text
        _task("world_cloze", {"output_type": "multiple_choice", "doc_to_text": "{{question}}",
                              "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}"}, paths["world"], cache),
        _task("mmlu_letters", mmlu_letters, paths["mmlu"], cache, _config("mmlu/default/mmlu_anatomy.yaml")["description"]),
        _task("mmlu_cloze", mmlu_cloze, paths["mmlu"], cache, _config("mmlu/continuation/mmlu_anatomy.yaml")["description"]),
        _task("wmdp_letters", wmdp_letters, paths["wmdp"], cache, _config("wmdp/wmdp_bio.yaml")["description"]),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = HFLM(pretrained=str(exported), device="cpu", batch_size=32, dtype="float32")
        output = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=TaskManager(include_defaults=False),
                                         num_fewshot=0, log_samples=True, bootstrap_iters=0,
                                         # leave the session's global RNGs alone (lm-eval reseeds them by default)
                                         random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    finally:
        torch.set_num_threads(threads)
    return {name: sorted(samples, key=lambda sample: sample["doc_id"]) for name, samples in output["samples"].items()}


def _compare(ours, samples, items, mcq_format, **prompt_options) -> int:
    """Assert prompt text, per-choice log-likelihoods and predictions agree; return how many items agree."""
    assert len(samples) == len(ours) == len(items)
    agree = 0
    for item, row, sample in zip(items, ours.itertuples(), samples):
        prompt, continuations = mcq_prompt(item, mcq_format, **prompt_options)
        assert [tuple(argument) for argument in sample["arguments"]] == [(prompt, c) for c in continuations]
        theirs = np.array([float(response[0]) for response in sample["filtered_resps"]])
        np.testing.assert_allclose(row.scores, theirs, atol=TOLERANCE, rtol=0)
        target = sample["target"]  # lm-eval's reading of the answer field: an index, or a letter it looks up
        assert (LETTERS.index(target) if isinstance(target, str) and target.isalpha() else int(target)) == item.answer
        agree += int(row.predicted == int(np.argmax(theirs)) and float(row.correct) == float(sample["acc"]))
    return agree


@pytest.mark.slow
def test_cloze_scoring_of_world_items_agrees_with_lm_eval(exported, datasets, lm_eval_samples):
    """The measurement the issue quoted (382/382 on the default world), here on the micro world's items."""
    model = models.load(exported, device="cpu")
    items = datasets["world_items"]
    ours = mcq_table(model, model.tokenizer, items, mcq_format="cloze")
    agree = _compare(ours, lm_eval_samples["world_cloze"], items, "cloze", description="")
    print(f"\ncloze, world items: {agree}/{len(items)} predictions agree with lm-eval {lm_eval.__version__}")
    assert agree == len(items)


@pytest.mark.slow
@pytest.mark.parametrize("task,file,mcq_format", [("mmlu_letters", "mmlu", "letters"),
                                                  ("wmdp_letters", "wmdp", "letters"),
                                                  ("mmlu_cloze", "mmlu", "cloze")])
def test_users_files_agree_with_lm_eval(exported, datasets, lm_eval_samples, task, file, mcq_format):
    """lm-eval's own WMDP / MMLU configs on a user's JSONL: same prompts (description line, choice list, the
    space before the letter), same log-likelihoods, same predictions. The WMDP file has no subject field: it is
    scored with the subject the user names (biology, wmdp_bio's description)."""
    model = models.load(exported, device="cpu")
    items = load_mcq(datasets["paths"][file], domain="forget")
    if file == "wmdp":
        items = [dataclasses.replace(item, subject="biology") for item in items]
    prompt_format = QA_FORMAT if mcq_format == "cloze" else None
    ours = mcq_table(model, model.tokenizer, items, mcq_format=mcq_format, prompt_format=prompt_format)
    agree = _compare(ours, lm_eval_samples[task], items, mcq_format, prompt_format=prompt_format)
    accuracy = float(np.mean([sample["acc"] for sample in lm_eval_samples[task]]))
    print(f"\n{task}: {agree}/{len(items)} predictions agree with lm-eval {lm_eval.__version__} "
          f"(accuracy {ours['correct'].mean():.3f} vs {accuracy:.3f})")
    assert agree == len(items)
    assert float(ours["correct"].mean()) == pytest.approx(accuracy)


def test_letter_prompt_is_lm_evals_template_on_a_hand_built_item():
    """The template text itself, checked by hand against lm_eval/tasks/mmlu/default/_default_template_yaml."""
    item = MCQItem("  Which organ pumps blood? ", ("liver", "heart", "lung", "skin"), 1, subject="college_medicine")
    prompt, continuations = mcq_prompt(item, "letters")
    assert prompt == ("The following are multiple choice questions (with answers) about college medicine.\n\n"
                      "Which organ pumps blood?\nA. liver\nB. heart\nC. lung\nD. skin\nAnswer:")
    assert continuations == [" A", " B", " C", " D"]
    prompt, continuations = mcq_prompt(item, "cloze", prompt_format=QA_FORMAT)
    assert prompt == ("The following are questions (with answers) about college medicine.\n\n"
                      "Question: Which organ pumps blood?\nAnswer:")
    assert continuations == [" liver", " heart", " lung", " skin"]
    assert mcq_prompt(MCQItem("Q", ("a", "b"), 0), "letters") == ("Q\nA. a\nB. b\nAnswer:", [" A", " B"])


def test_exported_tokenizer_encodes_as_the_original(micro_world, micro_base_dir, tmp_path):
    """TransformerLens attaches a BOS-prepending copy of the tokenizer; the exported checkpoint must not carry it,
    or lm-eval (which calls the tokenizer with its defaults) scores every input behind a BOS never trained on."""
    from transformers import AutoTokenizer

    model = models.load(micro_base_dir, device="cpu")
    exported = AutoTokenizer.from_pretrained(str(models.save(model, tmp_path / "model")))
    original = micro_world.tokenizer
    text = micro_world.forget_texts()[0]
    assert exported(text)["input_ids"] == original(text)["input_ids"]
    assert exported.get_vocab() == original.get_vocab()

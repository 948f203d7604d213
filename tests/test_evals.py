"""The evaluation module, checked against independent computations (HF logits + numpy / scipy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mechunlearn import evals, models
from mechunlearn.data import ClozeProbe, MCQItem, TruthRatioItem, load_mcq, save_jsonl


# --------------------------------------------------------------------------------------------- helpers
class Bigram(torch.nn.Module):
    """A fake LM whose next-token logits depend only on the current token: ``logits[b, t] = table[tokens[b, t]]``.
    Every log-probability it gives is known in closed form: ``log_softmax(table[previous])[next]``."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, tokens):
        return self.table[tokens]


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chain_model(tokenizer, continuations: dict[str, str], strength: float = 20.0) -> Bigram:
    """A bigram LM that greedily continues each prompt with its continuation text, then emits EOS."""
    vocab = len(tokenizer)
    table = torch.zeros(vocab, vocab)
    targets: dict[int, int] = {}

    def link(previous, following):
        assert targets.setdefault(previous, following) == following, "test set-up: conflicting bigram links"
        table[previous, following] = strength

    for prompt, continuation in continuations.items():
        prompt_ids, continuation_ids = ids_of(tokenizer, prompt), ids_of(tokenizer, continuation)
        chain = [prompt_ids[-1], *continuation_ids, tokenizer.eos_token_id]
        for previous, following in zip(chain, chain[1:]):
            link(previous, following)
    return Bigram(table)


def hf_continuation_logprobs(hf_model, tokenizer, context, continuation) -> np.ndarray:
    """Independent: per-token log-probs of the continuation via one unpadded HF forward and numpy."""
    context_ids, continuation_ids = ids_of(tokenizer, context), ids_of(tokenizer, continuation)
    ids = context_ids + continuation_ids
    with torch.no_grad():
        logits = hf_model(torch.tensor([ids])).logits[0].double().numpy()
    logprobs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return np.array([logprobs[len(context_ids) + i - 1, token] for i, token in enumerate(continuation_ids)])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread: on a shared, busy CPU two OpenMP threads thrash (up to ~20x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def toy(toy_model):
    return toy_model, toy_model.tokenizer


@pytest.fixture
def toy_hf(toy_model):
    return models.to_hf(toy_model)


# ------------------------------------------------------------------------------------------------- NLL
def test_nll_matches_cross_entropy_on_hf_logits(toy, toy_hf, toy_texts):
    model, tokenizer = toy
    texts = toy_texts[0][:4] + toy_texts[1][:4]  # different lengths: padding must not count
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([ids_of(tokenizer, text)])
        with torch.no_grad():
            logits = toy_hf(ids).logits
        total += float(F.cross_entropy(logits[0, :-1].double(), ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    expected = total / count
    assert evals.nll_per_token(model, tokenizer, texts, batch_size=3) == pytest.approx(expected, rel=1e-5)
    assert evals.nll_per_token(toy_hf, tokenizer, texts, batch_size=8) == pytest.approx(expected, rel=1e-5)
    # truncation: only the first max_length tokens of each text are scored
    short = evals.nll_per_token(model, tokenizer, texts, batch_size=8, max_length=5)
    total = 0.0
    for text in texts:
        ids = torch.tensor([ids_of(tokenizer, text)[:5]])
        with torch.no_grad():
            total += float(F.cross_entropy(toy_hf(ids).logits[0, :-1].double(), ids[0, 1:], reduction="sum"))
    assert short == pytest.approx(total / (4 * len(texts)), rel=1e-5)


def test_nll_rejects_empty(toy):
    with pytest.raises(ValueError, match="no texts"):
        evals.nll_per_token(*toy, [])


# ----------------------------------------------------------------------------------------------- cloze
def test_cloze_forced_answers_and_summary(toy):
    _, tokenizer = toy
    model = chain_model(tokenizer, {"Pell rides": " Orlo"})
    probes = [ClozeProbe("Pell rides", " Orlo", "f1", "unique", "forget"),
              ClozeProbe("Pell rides", " Varnhold", "f2", "unique", "forget"),
              ClozeProbe("Pell rides", " Orlo", "f3", "shared", "forget"),
              ClozeProbe("Pell rides", " Varnhold", "r1", "unique", "retain")]
    table = evals.cloze_table(model, tokenizer, probes)
    assert table["correct"].tolist() == [True, False, True, False]
    summary = evals.cloze_summary(model, tokenizer, probes).set_index(["domain", "category"])
    assert summary.loc[("forget", "unique"), "accuracy"] == 0.5
    assert summary.loc[("forget", "unique"), "count"] == 2
    assert summary.loc[("forget", "shared"), "accuracy"] == 1.0
    assert summary.loc[("forget", "all"), "accuracy"] == pytest.approx(2 / 3)
    assert summary.loc[("forget", "all"), "count"] == 3
    assert summary.loc[("retain", "all"), "accuracy"] == 0.0
    assert evals.cloze_accuracy(model, tokenizer, probes) == 0.5


def test_cloze_logprobs_match_hf(toy, toy_hf):
    model, tokenizer = toy
    probes = [ClozeProbe("the wizard Orlo keeps a silver wand in", " Varnhold", "a", "unique", "forget"),
              ClozeProbe("a baker sells", " bread in the market", "b", "unique", "retain")]
    table = evals.cloze_table(model, tokenizer, probes, batch_size=2)
    for probe, row in zip(probes, table.itertuples()):
        expected = hf_continuation_logprobs(toy_hf, tokenizer, probe.prompt, probe.answer)
        assert row.answer_logprob_sum == pytest.approx(expected.sum(), rel=1e-4, abs=1e-4)
        assert row.n_answer_tokens == len(expected)


# ------------------------------------------------------------------------------------------------- MCQ
def test_mcq_sum_versus_length_normalised_on_a_forced_case(toy):
    """Choice A: one token; choice B: two tokens, likelier per token but less likely in total."""
    _, tokenizer = toy
    vocab = len(tokenizer)
    question_last = ids_of(tokenizer, "Pell rides")[-1]
    [a] = ids_of(tokenizer, " Orlo")
    [b1] = ids_of(tokenizer, " Varnhold")
    [b2] = ids_of(tokenizer, " Orlo")[:1]  # "Varnhold Orlo" -> two tokens
    table = torch.zeros(vocab, vocab)
    table[question_last, a], table[question_last, b1], table[b1, b2] = 5.0, 6.0, 4.0
    model = Bigram(table)
    item = MCQItem("Pell rides", ("Orlo", "Varnhold Orlo"), 0)
    assert ids_of(tokenizer, " Varnhold Orlo") == [b1, b2]
    logprobs = torch.log_softmax(table.double(), dim=-1)
    score_a = float(logprobs[question_last, a])
    score_b = float(logprobs[question_last, b1] + logprobs[b1, b2])
    assert score_a > score_b and score_a < score_b / 2  # the two rules must disagree here
    accuracy, per_item = evals.mcq_accuracy(model, tokenizer, [item])
    assert accuracy == 1.0 and per_item.loc[0, "predicted"] == 0
    assert per_item.loc[0, "scores"] == pytest.approx([score_a, score_b], rel=1e-5)
    assert per_item.loc[0, "chance"] == 0.5
    accuracy, per_item = evals.mcq_accuracy(model, tokenizer, [item], normalize=True)
    assert accuracy == 0.0 and per_item.loc[0, "predicted"] == 1
    assert per_item.loc[0, "scores"] == pytest.approx([score_a, score_b / 2], rel=1e-5)


def test_mcq_matches_independent_hf_loop_on_a_jsonl_file(toy, toy_hf, tmp_path):
    model, tokenizer = toy
    records = [
        {"question": "Where does the wizard Orlo keep a silver wand?", "choices": ["Varnhold", "the market",
                                                                                  "the river", "the mill"],
         "answer": "A"},
        {"question": "What does the baker sell?", "choices": ["bread", "wheat", "horses"], "answer": 0},
        {"question": "Who trained the young mage Pell?", "choices": ["Orlo", "the farmer", "children", "a baker"],
         "answer": "B"},
    ]
    save_jsonl(tmp_path / "mmlu.jsonl", records)
    items = load_mcq(tmp_path / "mmlu.jsonl")
    accuracy, table = evals.mcq_accuracy(model, tokenizer, items, prompt_format=evals.QA_FORMAT, batch_size=4)
    correct = []
    for item, row in zip(items, table.itertuples()):
        prompt = evals.QA_FORMAT.format(question=item.question)
        scores = [hf_continuation_logprobs(toy_hf, tokenizer, prompt, " " + c).sum() for c in item.choices]
        assert row.scores == pytest.approx(scores, rel=1e-4, abs=1e-4)
        assert row.predicted == int(np.argmax(scores))
        correct.append(int(np.argmax(scores)) == item.answer)
    assert accuracy == pytest.approx(np.mean(correct))
    assert evals.mcq_chance(items) == pytest.approx((1 / 4 + 1 / 3 + 1 / 4) / 3)
    # an HF model scores the same
    _, hf_table = evals.mcq_accuracy(toy_hf, tokenizer, items, prompt_format=evals.QA_FORMAT)
    for mine, theirs in zip(table["scores"], hf_table["scores"]):
        assert mine == pytest.approx(theirs, rel=1e-4, abs=1e-4)


# ----------------------------------------------------------------------------------------- Truth Ratio
TR_ITEMS = [
    TruthRatioItem("the wizard Orlo keeps a silver wand in", " Varnhold", (" the market", " the river", " the mill"),
                   "f1", "unique", "forget"),
    TruthRatioItem("Pell rides a grey horse to", " Varnhold", (" the market square", " the old mill"),
                   "f2", "shared", "forget"),
    TruthRatioItem("the silver wand of", " Orlo", (" Pell", " the farmer", " a baker"), "f3", "unique", "forget"),
    TruthRatioItem("a baker sells bread in the", " market", (" river", " mill", " wheat"), "r1", "unique", "retain"),
    TruthRatioItem("the river runs past the old", " mill", (" market", " horse", " wand"), "r2", "shared", "retain"),
]


def test_truth_ratio_matches_hand_computation(toy, toy_hf):
    model, tokenizer = toy
    df = evals.truth_ratios(model, tokenizer, TR_ITEMS, batch_size=5)
    assert list(df.columns) == ["fact_id", "category", "domain", "R", "para_nll", "pert_nll_mean"]
    expected_R = []
    for item, row in zip(TR_ITEMS, df.itertuples()):
        para = -hf_continuation_logprobs(toy_hf, tokenizer, item.question, item.paraphrased_answer).mean()
        pert = np.mean([-hf_continuation_logprobs(toy_hf, tokenizer, item.question, a).mean()
                        for a in item.perturbed_answers])
        assert row.para_nll == pytest.approx(para, rel=1e-4)
        assert row.pert_nll_mean == pytest.approx(pert, rel=1e-4)
        expected_R.append(math.exp(para - pert))
        assert row.R == pytest.approx(expected_R[-1], rel=1e-4)
    expected_R = np.array(expected_R)
    forget, retain = expected_R[:3], expected_R[3:]
    forget_stats = evals.truth_ratio_stats(df, "forget")
    assert forget_stats["all"] == pytest.approx(np.mean(np.minimum(forget, 1 / forget)), rel=1e-4)
    assert forget_stats["unique"] == pytest.approx(np.mean(np.minimum(forget[[0, 2]], 1 / forget[[0, 2]])), rel=1e-4)
    assert forget_stats["shared"] == pytest.approx(min(forget[1], 1 / forget[1]), rel=1e-4)
    retain_stats = evals.truth_ratio_stats(df, "retain")
    assert retain_stats["all"] == pytest.approx(np.mean(np.maximum(0, 1 - retain)), rel=1e-4, abs=1e-6)
    assert set(retain_stats) == {"unique", "shared", "all"}
    # the HF model gives the same ratios
    hf_df = evals.truth_ratios(toy_hf, tokenizer, TR_ITEMS)
    assert hf_df["R"].to_numpy() == pytest.approx(df["R"].to_numpy(), rel=1e-4)


def test_truth_ratio_statistics_on_known_values():
    ratios = np.array([0.25, 1.0, 4.0, 2.0])
    assert evals.truth_ratio_statistic(ratios, "forget") == pytest.approx(np.mean([0.25, 1.0, 0.25, 0.5]))
    assert evals.truth_ratio_statistic(ratios, "retain") == pytest.approx(np.mean([0.75, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError):
        evals.truth_ratio_statistic(ratios, "general")


def test_truth_ratio_prefers_the_truth_under_a_forcing_model(toy):
    _, tokenizer = toy
    model = chain_model(tokenizer, {"Pell rides": " Orlo"})
    item = TruthRatioItem("Pell rides", " Orlo", (" Varnhold",), "f", "unique", "forget")
    [ratio] = evals.truth_ratios(model, tokenizer, [item])["R"]
    assert ratio < 1e-6  # knows: perturbed answer far less likely than the truth


def test_forget_quality_is_the_ks_p_value():
    rng = np.random.default_rng(0)
    unlearned, gold = rng.lognormal(0, 1, 40), rng.lognormal(0.5, 1, 35)
    expected = stats.ks_2samp(unlearned, gold)
    assert evals.forget_quality(unlearned, gold) == pytest.approx(expected.pvalue)
    assert evals.forget_quality_test(unlearned, gold) == pytest.approx((expected.pvalue, expected.statistic))
    import pandas as pd

    frame = pd.DataFrame({"R": unlearned})
    assert evals.forget_quality(frame, list(gold)) == pytest.approx(expected.pvalue)
    assert evals.forget_quality(gold, gold) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------- generation
def test_batched_greedy_equals_one_prompt_at_a_time(toy, toy_hf):
    model, tokenizer = toy
    prompts = ["the wizard Orlo", "a baker sells bread in the market every", "Pell"]
    batched = evals.greedy_token_ids(model, tokenizer, prompts, max_new_tokens=6, stop_at_eos=False)
    for prompt, generated in zip(prompts, batched):
        ids = ids_of(tokenizer, prompt)
        for _ in range(6):
            with torch.no_grad():
                ids.append(int(toy_hf(torch.tensor([ids])).logits[0, -1].argmax()))
        assert generated == ids[len(ids_of(tokenizer, prompt)):]
    texts = evals.generate_samples(model, tokenizer, prompts, max_new_tokens=6, stop_at_eos=False)
    assert texts == [tokenizer.decode(g) for g in batched]


def test_generation_stops_at_eos(toy):
    _, tokenizer = toy
    model = chain_model(tokenizer, {"Pell rides": " Orlo Varnhold"})
    assert evals.generate_samples(model, tokenizer, ["Pell rides"], max_new_tokens=10) == [" Orlo Varnhold"]


# ------------------------------------------------------------------------------------ familiarity
def test_familiarity_on_a_constructed_case(toy):
    _, tokenizer = toy
    model = chain_model(tokenizer, {"Pell rides": " Orlo", "the farmer": " river", "Orlo trained": " Orlo"})
    prompts = [ClozeProbe("Pell rides", " Orlo", "f1", "unique", "forget"),
               ClozeProbe("the farmer", " Varnhold", "f2", "unique", "forget"),
               ClozeProbe("Orlo trained", " Pell", "f3", "unique", "forget")]
    score, table = evals.familiarity_completion(model, tokenizer, prompts, ["Orlo", "Varnhold"], max_new_tokens=4)
    assert table["completion"].tolist() == [" Orlo", " river", " Orlo"]
    # the third completion only repeats a name from its prompt: not evidence of familiarity
    assert table["familiar"].tolist() == [True, False, False]
    assert score == pytest.approx(1 / 3)
    assert table["mentions_answer"].tolist() == [True, False, False]
    score, _ = evals.familiarity_completion(model, tokenizer, prompts, ["Orlo"], exclude_prompt_entities=False)
    assert score == pytest.approx(2 / 3)
    assert evals.mentions("the Orlovian Orlo.", ["Orlo", "Pell"]) == ["Orlo"]
    assert evals.mentions("Orlovian", ["Orlo"]) == []

    probability = evals.familiarity_probability(model, tokenizer, prompts, entities=["Orlo", "Pell"])
    assert probability["count"] == 2  # " Varnhold" is not a forget-specific entity
    logprobs = torch.log_softmax(model.table.detach().double(), dim=-1)
    expected = []
    for probe in (prompts[0], prompts[2]):
        chain = [ids_of(tokenizer, probe.prompt)[-1], *ids_of(tokenizer, probe.answer)]
        expected.append(float(sum(logprobs[p, n] for p, n in zip(chain, chain[1:]))))
    assert probability["logprob"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert probability["prob"] == pytest.approx(np.mean(np.exp(expected)), rel=1e-5)
    assert probability["prob"] > 0.4  # " Orlo" after "Pell rides" is forced
    empty = evals.familiarity_probability(model, tokenizer, prompts, entities=["Nobody"])
    assert empty["count"] == 0 and math.isnan(empty["prob"])


# --------------------------------------------------------------------------------------- collapse
def test_collapse_detection():
    healthy = ["Orlo keeps a silver wand in Varnhold. Pell rides a grey horse.",
               "The farmer grows wheat near the river and sells it at the market."]
    verdict = evals.detect_collapse(accuracy=0.8, chance=0.25, generations=healthy)
    assert verdict["collapsed"] is False and verdict["reasons"] == []

    repeated = ["the the the the the the the the", "wand wand wand wand wand wand"]
    verdict = evals.detect_collapse(accuracy=0.8, chance=0.25, generations=repeated)
    assert verdict["collapsed"] and "repeated" in verdict["reasons"][0]

    looping = ["Orlo Pell " * 8, "a b " * 10]
    verdict = evals.detect_collapse(generations=looping)
    assert verdict["collapsed"] and "distinct" in verdict["reasons"][0]

    verdict = evals.detect_collapse(accuracy=0.27, chance=0.25, generations=healthy)
    assert verdict["collapsed"] and "chance" in verdict["reasons"][0]
    assert evals.detect_collapse(accuracy=0.27, chance=0.25, margin=0.01)["collapsed"] is False
    assert evals.detect_collapse(retain_nll=9.0, reference_retain_nll=3.0)["collapsed"]
    # doubling a near-zero NLL (a memorising tiny model) is not collapse; a jump of >= 1 nat past 2x is
    assert not evals.detect_collapse(retain_nll=0.29, reference_retain_nll=0.12)["collapsed"]
    assert evals.detect_collapse(retain_nll=1.5, reference_retain_nll=0.12)["collapsed"]
    assert evals.detect_collapse(generations=["", ""])["collapsed"]  # nothing but EOS
    assert evals.longest_repeat([5, 5, 7, 7, 7]) == 3
    assert evals.distinct_ratio("a a b b") == 0.5


# ------------------------------------------------------------------------------------- evaluate_model
def test_evaluate_model_without_world(toy, toy_texts, tmp_path):
    model, tokenizer = toy
    forget, retain = toy_texts
    save_jsonl(tmp_path / "wmdp.jsonl", [{"question": "Who keeps a silver wand?", "choices": ["Orlo", "Pell", "a baker"],
                                          "answer": 0}])
    save_jsonl(tmp_path / "mmlu.jsonl", [{"question": "What does the baker sell?",
                                          "choices": ["bread", "wheat", "horses", "wands"], "answer": "A"}])
    result = evals.evaluate_model(model, tokenizer=tokenizer, forget_texts=forget, retain_texts=retain,
                                  mcq_forget=tmp_path / "wmdp.jsonl", mcq_general=str(tmp_path / "mmlu.jsonl"),
                                  forget_entities=["Orlo", "Varnhold"], max_new_tokens=5, max_texts=5)
    json.dumps(result, allow_nan=False)
    subsample = [forget[i * len(forget) // 5] for i in range(5)]  # max_texts: evenly spaced
    assert result["forget_nll"] == pytest.approx(evals.nll_per_token(model, tokenizer, subsample), rel=1e-6)
    assert result["mcq_forget_chance"] == pytest.approx(1 / 3) and result["mcq_general_chance"] == 0.25
    assert result["mcq_forget_acc"] in (0.0, 1.0)
    assert result["mcq_forget_format"] == result["mcq_general_format"] == "letters"  # users' files: lm-eval's form
    # not computed is None (no world: no Truth Ratio, forget quality, probability familiarity), with no interval
    assert result["forget_truth_ratios"] is None and result["forget_quality"] is None
    assert result["forget_quality_reason"] is None and "forget_quality" not in result["intervals"]
    assert 0.0 <= result["familiarity_completion"] <= 1.0 and result["familiarity_prob"] is None
    assert set(result["intervals"]) == {"forget_nll", "retain_nll", "mcq_forget_acc", "mcq_general_acc",
                                        "familiarity_completion", "familiarity_completion_answer"}
    assert len(result["generations"]) == 5 and {"kind", "prompt", "completion"} <= set(result["generations"][0])
    assert isinstance(result["collapsed"], bool)


@pytest.mark.slow
def test_evaluate_model_on_the_micro_world(micro_world, micro_base, micro_gold):
    gold = evals.evaluate_model(micro_gold, micro_world)
    base = evals.evaluate_model(micro_base, micro_world, gold_truth_ratios=gold)
    json.dumps(base, allow_nan=False)
    for key in ("forget_nll", "retain_nll", "forget_heldout_nll", "retain_heldout_nll", "filler_heldout_nll",
                "cloze/forget/unique", "cloze/forget/all", "cloze/retain/all", "mcq_forget_acc", "mcq_general_acc",
                "mcq_forget_chance", "mcq_general_chance", "truth_ratio/forget/unique", "truth_ratio/forget/all",
                "truth_ratio/retain/all", "forget_truth_ratios", "forget_quality", "forget_quality_ks",
                "familiarity_completion", "familiarity_completion_answer", "familiarity_prob", "familiarity_logprob",
                "collapse", "collapsed", "generations", "forget_sources", "eval_seconds"):
        assert key in base, key
    print("\nmicro world, base vs gold:")
    for key in base:
        if key not in ("generations", "forget_truth_ratios", "collapse"):
            print(f"  {key:34s} {base[key]!s:>22.22} {gold.get(key)!s:>22.22}")
    # the base model knows the forget target; the gold model never saw it
    assert base["cloze/forget/unique"] > gold["cloze/forget/unique"] + 0.3
    assert base["forget_nll"] < gold["forget_nll"]
    # The TOFU statistic mean(min(R, 1/R)) is symmetric: a model that never saw the facts and leans toward the
    # perturbed answers (R > 1) scores as low as one that knows them (R < 1), so on the micro world it does not
    # separate base from gold (0.547 vs 0.525). The ratios themselves do: the base prefers the true answer.
    forget_items = micro_world.truth_ratio_items("forget")
    unique = np.array([item.category == "unique" for item in forget_items])
    base_r = np.asarray(base["forget_truth_ratios"])[unique]
    gold_r = np.asarray(gold["forget_truth_ratios"])[unique]
    assert np.median(np.log(base_r)) < np.median(np.log(gold_r))
    assert (base_r < 1).mean() > (gold_r < 1).mean() + 0.2
    assert base["familiarity_prob"] > gold["familiarity_prob"]
    # the gold model itself may stand in for its ratios
    again = evals.evaluate_model(micro_base, micro_world, gold_truth_ratios=micro_gold, max_new_tokens=2)
    assert again["forget_quality"] == pytest.approx(base["forget_quality"])
    # the gold model is compared with itself: identical distributions
    assert evals.forget_quality(gold["forget_truth_ratios"], gold["forget_truth_ratios"]) == pytest.approx(1.0)
    assert base["forget_quality"] < 1.0
    # both keep the retain domain and are not collapsed
    assert base["cloze/retain/all"] > 0.5 and gold["cloze/retain/all"] > 0.5
    assert not base["collapsed"] and not gold["collapsed"], (base["collapse"], gold["collapse"])
    assert base["eval_seconds"] < 30


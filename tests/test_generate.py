"""The prompt explorer: side-by-side generation equals each model's own greedy generate (TransformerLens' and
transformers' on the exported model) token for token; next-token tables against numpy; hooks and RNG left alone;
bad input; the CLI (``generate``, ``--quiet`` silent on stderr for ``info`` and ``generate``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mechunlearn import models
from mechunlearn.cli import main
from mechunlearn.explore import ExploreError, compare, next_token_figure, next_token_table

MAX_NEW = 12


def _prompts(world):
    return [world.cloze_probes("forget")[0].prompt, world.cloze_probes("retain")[0].prompt]


def _hf_greedy(model, tokens, max_new_tokens):
    """transformers' own greedy ``generate`` on the model exported with ``models.to_hf``: the new token ids."""
    hf_model = models.to_hf(model)
    tokenizer = model.tokenizer
    with torch.no_grad():
        output = hf_model.generate(tokens.cpu(), attention_mask=torch.ones_like(tokens.cpu()), do_sample=False,
                                   max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
    return output[0, tokens.shape[-1]:].tolist()


def test_greedy_side_by_side_equals_each_models_own_generate(micro_world, micro_base, micro_gold):
    pair = {"base": micro_base, "gold": micro_gold}
    for prompt in _prompts(micro_world):
        frame = compare(pair, prompt, max_new_tokens=MAX_NEW)
        assert list(frame["model"]) == ["base", "gold"] and set(frame["decoding"]) == {"greedy"}
        for row in frame.itertuples():
            model = pair[row.model]
            tokens = model.to_tokens(prompt)
            own = model.generate(tokens, max_new_tokens=MAX_NEW, do_sample=False, verbose=False)
            assert row.new_token_ids == own[0, tokens.shape[-1]:].tolist()
            assert row.new_token_ids == _hf_greedy(model, tokens, MAX_NEW)
            assert row.completion == model.tokenizer.decode(row.new_token_ids, skip_special_tokens=True)
            assert 1 <= row.n_new_tokens <= MAX_NEW
    # the two models were trained apart: at least one prompt completes differently (the table is not one model)
    completions = [compare(pair, prompt, max_new_tokens=MAX_NEW)["completion"].tolist() for prompt in
                   _prompts(micro_world) + [p.prompt for p in micro_world.cloze_probes("forget")[1:6]]]
    assert any(base != gold for base, gold in completions)


def test_next_token_table_against_numpy_softmax_of_hf_logits(micro_world, micro_base, micro_gold):
    pair = {"base": micro_base, "gold": micro_gold}
    prompt = _prompts(micro_world)[0]
    table = next_token_table(pair, prompt, top_k=4)
    tokens = micro_base.to_tokens(prompt)
    expected_union = set()
    reference = {}
    for name, model in pair.items():
        with torch.no_grad():
            logits = models.to_hf(model)(tokens.cpu()).logits[0, -1].double().numpy()
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        reference[name] = probabilities
        expected_union |= set(np.argsort(-probabilities)[:4].tolist())
    assert set(table["token_id"]) == expected_union
    assert len(table) == 2 * len(expected_union)  # every token has a row (a bar) for every model
    for row in table.itertuples():
        probabilities = reference[row.model]
        assert row.probability == pytest.approx(probabilities[row.token_id], abs=1e-5)
        p = probabilities[row.token_id]  # rank up to float32 rounding of near-ties
        assert 1 + (probabilities > p * (1 + 1e-4)).sum() <= row.rank <= (probabilities >= p * (1 - 1e-4)).sum()
        assert row.in_top_k == (row.rank <= 4)
        assert row.token == micro_base.tokenizer.decode([row.token_id])
    best = table.groupby("token_id", sort=False)["probability"].max().tolist()
    assert best == sorted(best, reverse=True)
    figure = next_token_figure(table)
    assert [trace.name for trace in figure.data] == ["base", "gold"]
    for trace in figure.data:
        rows = table[table["model"] == trace.name]
        assert list(trace.x) == list(rows["label"]) and np.allclose(trace.y, rows["probability"])
    assert figure.layout.barmode == "group"


def test_hooks_mode_and_rng_left_alone(micro_world, micro_base):
    """A permanent hook (the way a natively unlearnable model switches a source off) shapes the completion,
    matching transformers on a copy whose weights do the same; it is still there afterwards."""
    prompt = _prompts(micro_world)[0]
    clean = compare({"m": micro_base}, prompt, max_new_tokens=MAX_NEW)["new_token_ids"][0]
    hook_point = micro_base.blocks[0].mlp.hook_post
    micro_base.add_hook("blocks.0.mlp.hook_post", lambda activation, hook: torch.zeros_like(activation),
                        is_permanent=True)
    micro_base.train()
    rng_before = torch.get_rng_state()
    hooked = compare({"m": micro_base}, prompt, max_new_tokens=MAX_NEW)["new_token_ids"][0]
    assert len(hook_point.fwd_hooks) == 1 and micro_base.training
    assert torch.equal(rng_before, torch.get_rng_state())
    # independent: transformers' generate on the exported model with layer 0's MLP output weights zeroed
    micro_base.reset_hooks(including_permanent=True)
    hf_model = models.to_hf(micro_base)
    with torch.no_grad():
        hf_model.gpt_neox.layers[0].mlp.dense_4h_to_h.weight.zero_()
        tokens = micro_base.to_tokens(prompt)
        output = hf_model.generate(tokens, attention_mask=torch.ones_like(tokens), do_sample=False,
                                   max_new_tokens=MAX_NEW, eos_token_id=micro_base.tokenizer.eos_token_id,
                                   pad_token_id=micro_base.tokenizer.pad_token_id)
    assert hooked == output[0, tokens.shape[-1]:].tolist()
    assert hooked != clean  # the hook is a real intervention, and compare ran it


def test_sampling_is_seeded_and_restores_the_rng(toy_model):
    prompt = "the wizard Orlo"
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    first = compare({"toy": toy_model}, prompt, sample=True, seed=7, max_new_tokens=10)
    assert torch.equal(rng_before, torch.get_rng_state())
    again = compare({"toy": toy_model}, prompt, sample=True, seed=7, max_new_tokens=10)
    assert first["new_token_ids"][0] == again["new_token_ids"][0]
    assert first["decoding"][0] == "sample" and first["seed"][0] == 7
    # the random toy model's next-token distribution is nearly flat: other seeds give other completions
    others = {tuple(compare({"toy": toy_model}, prompt, sample=True, seed=seed, max_new_tokens=10)
                    ["new_token_ids"][0]) for seed in range(8, 12)}
    assert len(others | {tuple(first["new_token_ids"][0])}) > 1
    # a temperature near zero samples the argmax: the greedy completion
    cold = compare({"toy": toy_model}, prompt, sample=True, temperature=1e-4, seed=1, max_new_tokens=10)
    greedy = compare({"toy": toy_model}, prompt, max_new_tokens=10)
    assert cold["new_token_ids"][0] == greedy["new_token_ids"][0]


def test_bad_input(toy_model, micro_base):
    for prompt in ("", "   "):
        with pytest.raises(ExploreError, match="empty prompt"):
            compare({"toy": toy_model}, prompt)
    with pytest.raises(ExploreError, match="'toy' and 'world' have different tokenizers"):
        compare({"toy": toy_model, "world": micro_base}, "the wizard")
    with pytest.raises(ExploreError, match="different tokenizers"):
        next_token_table({"toy": toy_model, "world": micro_base}, "the wizard")
    with pytest.raises(ExploreError, match="context of"):
        compare({"toy": toy_model}, "the wizard", max_new_tokens=toy_model.cfg.n_ctx)
    with pytest.raises(ExploreError, match="no models"):
        compare({}, "the wizard")


# --------------------------------------------------------------------------------------------------------- CLI
def test_generate_cli_quiet_base_gold_and_run_dir(micro_world, micro_cache, micro_base_dir, micro_gold_dir,
                                                  monkeypatch, tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    from mechunlearn.world import build_world

    monkeypatch.setenv("MECHUNLEARN_CACHE", str(micro_cache))  # base / gold resolve to the session's models
    world_dir = tmp_path / "world"
    assert build_world(size="micro", seed=0, out=world_dir).content_hash == micro_world.content_hash
    run_dir = tmp_path / "npo__run"
    shutil.copytree(micro_gold_dir, run_dir / "model")
    (run_dir / "run.json").write_text("{}")
    prompt = _prompts(micro_world)[0]
    bars_before = hf_logging.is_progress_bar_enabled()
    code = main(["generate", "--prompt", prompt, "base", "gold", str(run_dir), "--world",
                 str(world_dir), "--max-new-tokens", "6", "--top-k", "3", "--json", "--quiet",
                 "--device", "cpu"])
    captured = capfd.readouterr()
    assert code == 0 and captured.err == ""
    assert hf_logging.is_progress_bar_enabled() == bars_before  # --quiet restores what it switched off
    printed = json.loads(captured.out)
    expected = compare({"base": models.load(micro_base_dir, device="cpu"),
                        "gold": models.load(micro_gold_dir, device="cpu")}, prompt, max_new_tokens=6)
    rows = {row["model"]: row for row in printed["completions"]}
    assert set(rows) == {"base", "gold", "npo__run"}
    assert rows["base"]["new_token_ids"] == expected["new_token_ids"][0]
    assert rows["gold"]["new_token_ids"] == rows["npo__run"]["new_token_ids"] == expected["new_token_ids"][1]
    assert {row["model"] for row in printed["next_tokens"]} == {"base", "gold", "npo__run"}

    capfd.readouterr()  # the loads above are not the command's
    code = main(["generate", "--prompt", prompt, str(micro_base_dir), str(micro_gold_dir), "--quiet",
                 "--device", "cpu", "--max-new-tokens", "4", "--out", str(tmp_path / "explore")])
    captured = capfd.readouterr()
    assert code == 0 and captured.err == ""
    short = compare({"base": models.load(micro_base_dir, device="cpu")}, prompt, max_new_tokens=4)
    assert f"{micro_base_dir.name} | {short['completion'][0]!r}" in captured.out
    assert micro_gold_dir.name in captured.out and "probability (rank)" in captured.out
    assert {p.name for p in (tmp_path / "explore").iterdir()} == {"completions.csv", "next_tokens.csv",
                                                                  "next_tokens.html"}


def test_generate_cli_errors(toy_model_dir, micro_base_dir, capfd):
    assert main(["generate", "--prompt", "", str(toy_model_dir), "--quiet"]) == 2
    assert "empty prompt" in capfd.readouterr().err
    assert main(["generate", "--prompt", "the wizard", str(toy_model_dir), str(micro_base_dir), "--quiet",
                 "--device", "cpu"]) == 2
    err = capfd.readouterr().err
    assert "different tokenizers" in err and repr(micro_base_dir.name) in err and err.count("\n") == 1


def test_info_quiet_prints_nothing_on_stderr(toy_model_dir, capfd):
    assert main(["info", str(toy_model_dir), "--device", "cpu"]) == 0
    assert "Loading weights" in capfd.readouterr().err  # without --quiet, transformers' bar shows
    assert main(["info", str(toy_model_dir), "--device", "cpu", "--quiet"]) == 0
    captured = capfd.readouterr()
    assert captured.err == "" and '"n_layers": 3' in captured.out
    assert main(["info", "nobody/not-cached-model", "--quiet"]) == 2
    assert "--allow-download" in capfd.readouterr().err

"""Shared figure helpers and views: the palette, integer layer axes, the per-token loss change against Hugging
Face transformers' own logits, attention patterns against a hand computation, one-bundle pages, Jupyter reprs and
plotly's notebook renderer set only when asked."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch


def test_palette_is_one_colour_per_model_everywhere():
    from mechunlearn.views.palette import color_for, display_name, method_of

    assert color_for("npo-3f2a1c9e-s0") == color_for("npo-3f2a1c9e-s1") == color_for("npo") == color_for("npo-3f2a1c9e")
    assert len({color_for(name) for name in ("base", "gold", "npo", "rmu", "ga", "whp", "cb_lat")}) == 7
    assert color_for("gold-saga_0") == color_for("gold") and color_for("native-off-saga_0-nearest") == color_for("native")
    assert color_for("my-own-model") == color_for("my-own-model") and color_for("my-own-model").startswith("#")
    assert display_name("npo-3f2a1c9e-s2") == "npo (s2)" and display_name("gold") == "gold"
    assert method_of("cb_lat-0123abcd-s0") == "cb_lat" and method_of("base") is None


def test_layer_figures_have_integer_axes_and_one_legend_entry_per_model():
    from mechunlearn.views.study_figures import Panel, layer_lines

    frame = pd.DataFrame({"model_id": ["gold"] * 4 + ["npo-aaaaaaaa-s0"] * 4, "layer": [0, 1, 2, 3] * 2,
                          "split": ["forget", "forget", "retain", "retain"] * 2, "value": np.arange(8.0)})
    figure = layer_lines(frame, [Panel("a", "value"), Panel("b", "value")], "t", dash_by="split")
    shown = [trace.name for trace in figure.data if trace.showlegend]
    assert sorted(shown) == ["gold / forget", "gold / retain", "npo (s0) / forget", "npo (s0) / retain"]
    assert len(figure.data) == 8  # two panels
    axes = []
    figure.for_each_xaxis(axes.append)
    assert all(axis.dtick == 1 and axis.tickformat == "d" for axis in axes)
    colours = {trace.name: trace.line.color for trace in figure.data}
    assert colours["gold / forget"] == colours["gold / retain"] != colours["npo (s0) / forget"]
    dashes = {trace.name: trace.line.dash for trace in figure.data}
    assert dashes["gold / forget"] == "solid" and dashes["gold / retain"] == "dash"


def test_token_loss_change_matches_transformers(micro_base_dir, micro_gold_dir, micro_world):
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    from mechunlearn import models
    from mechunlearn.views.circuits import token_loss_change

    base, gold = models.load(micro_base_dir, device="cpu"), models.load(micro_gold_dir, device="cpu")
    texts = micro_world.forget_texts()[:2]
    frame = token_loss_change(base, gold, texts, max_length=32)
    tokenizer = AutoTokenizer.from_pretrained(micro_base_dir)
    for index, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:32]
        rows = frame[frame["text"] == index]
        assert list(rows["token"]) == [tokenizer.decode([i]) for i in ids]
        nll = {}
        for name, directory in (("base", micro_base_dir), ("model", micro_gold_dir)):
            hf = GPTNeoXForCausalLM.from_pretrained(directory).eval()
            with torch.no_grad():
                logprobs = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
            nll[name] = -logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
        assert np.isnan(rows["change"].iloc[0])
        np.testing.assert_allclose(rows["base_nll"].iloc[1:], nll["base"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(rows["change"].iloc[1:], nll["model"] - nll["base"], rtol=1e-3, atol=2e-4)


def test_attention_change_ranks_heads_by_their_pattern_change(micro_base_dir, micro_gold_dir, micro_world):
    from mechunlearn import models
    from mechunlearn.views.circuits import attention_change, attention_view

    base, gold = models.load(micro_base_dir, device="cpu"), models.load(micro_gold_dir, device="cpu")
    text = micro_world.forget_texts()[0]
    heads, tokens, base_patterns, gold_patterns = attention_change(base, gold, text, max_length=24, n_heads=2)
    assert base_patterns.shape == (base.cfg.n_layers, base.cfg.n_heads, len(tokens), len(tokens))
    assert torch.allclose(base_patterns.sum(-1), torch.ones(base_patterns.shape[:-1]), atol=1e-5)
    assert torch.all(torch.triu(base_patterns, diagonal=1) == 0)  # causal
    causal = np.tril(np.ones((len(tokens), len(tokens)), dtype=bool))
    by_hand = {(l, h): np.abs(gold_patterns[l, h].numpy() - base_patterns[l, h].numpy())[causal].mean()
               for l in range(base.cfg.n_layers) for h in range(base.cfg.n_heads)}
    top = sorted(by_hand, key=lambda key: -by_hand[key])[:2]
    assert [(row.layer, row.head) for row in heads[heads["chosen"]].itertuples()] == top
    for row in heads.itertuples():
        assert row.mean_abs_change == pytest.approx(by_hand[(row.layer, row.head)], rel=1e-5)
    rendered = attention_view(heads, tokens, base_patterns, gold_patterns, "gold")
    assert "AttentionHeads" in rendered.local_src and f"L{top[0][0]}H{top[0][1]} gold" in rendered.local_src


def test_a_page_inlines_each_library_once_and_reaches_no_network():
    import plotly.graph_objects as go
    from circuitsvis.tokens import colored_tokens

    from mechunlearn.views.page import Page, circuitsvis_bundle, strip_circuitsvis_bundle

    page = Page("t <x>")
    for _ in range(3):
        page.figure(go.Figure(go.Scatter(x=[0, 1], y=[1, 2])))
        page.circuitsvis(colored_tokens(["a", "b"], [0.5, -1.0]))
    html = page.render()
    assert html.count("var CircuitsVis=") == 1 and html.count(circuitsvis_bundle()[:2000]) == 1
    assert html.count("CircuitsVis.ColoredTokens") == 3 and html.count('class="plotly-graph-div"') == 3
    assert not re.search(r"<script[^>]*\bsrc\s*=", html) and "unpkg.com" not in html
    assert "<title>t &lt;x&gt;</title>" in html
    assert "https://unpkg.com" in str(colored_tokens(["a"], [1.0]))  # what circuitsvis' str() would have imported
    with pytest.raises(ValueError, match="local_src"):
        strip_circuitsvis_bundle("<div/>")


def test_results_render_in_jupyter_and_notebook_mode_is_opt_in():
    import importlib

    import plotly.io as pio

    import mechunlearn.views
    from mechunlearn.diagnostics.base import AnalysisResult
    from mechunlearn.views.notebook import NOTEBOOK_RENDERER, HTMLReprMixin, _STATE, notebook_mode

    before = pio.renderers.default
    importlib.reload(mechunlearn.views)
    assert pio.renderers.default == before  # importing sets nothing

    assert issubclass(AnalysisResult, HTMLReprMixin)  # every analysis (and attack) result draws itself
    frame = pd.DataFrame({"layer": range(12), "value": np.linspace(0, 1, 12)})
    result = AnalysisResult("probe", frame)
    standalone = result._repr_html_()
    assert "<h4" in standalone and "12 rows x 2 columns (first 10 shown)" in standalone
    assert standalone.count("<tr") == 11 and "plotly-graph-div" in standalone
    try:
        assert notebook_mode() == NOTEBOOK_RENDERER and pio.renderers.default == NOTEBOOK_RENDERER
        in_notebook = result._repr_html_()
        assert "plotly-graph-div" in in_notebook and len(in_notebook) < len(standalone) / 10  # no plotly.js copy
    finally:
        pio.renderers.default = before
        _STATE["active"] = False

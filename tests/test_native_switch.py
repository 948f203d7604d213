"""mechunlearn.native.switching: the mask as part of the model (training-time forward reproduced, routing to the
planted nearest source, A untouched when B is switched off, exact baked export, survives reset/deepcopy), and
the bad-input errors; plus a micro-world native pretraining of one epoch and the CLI."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from mechunlearn.hooks.sink_mask import SinkConfig, SinkMaskError, row_masks
from mechunlearn.native import NativeInfo, bake, export, switch, unswitch
from mechunlearn.native.switching import likeliest_sources, nearest_sources, token_ids_of
from mechunlearn.native.train import _HFSinkMasks

SOURCES = ("a", "b", "c", "d")
TOKENS = torch.tensor([[3, 17, 25, 40, 41, 8], [50, 2, 9, 60, 61, 33]])


def _disjoint_partner(config: SinkConfig, source: str) -> str:
    """A source name whose sinks share none with ``source`` (found by trying names: the masks are a hash)."""
    own = config.mask(source)[config.n_backbone:] > 0
    for i in range(500):
        name = f"x{i}"
        other = SinkConfig(sources=(name,), d_mlp=config.d_mlp, n_layers=config.n_layers,
                           p_backbone=config.p_backbone, p_sink=config.p_sink, seed=config.seed).mask(name)
        if not (own & (other[config.n_backbone:] > 0)).any():
            return name
    raise AssertionError("no disjoint source found")


def _info(model, sources=SOURCES, planted=None, p_backbone=0.25, p_sink=0.2):
    """A NativeInfo for a random model; ``planted``: {source: token ids} whose mean embedding is its centroid."""
    config = SinkConfig(sources=tuple(sources), d_mlp=model.cfg.d_mlp, n_layers=model.cfg.n_layers,
                        p_backbone=p_backbone, p_sink=p_sink, seed=0)
    generator = torch.Generator().manual_seed(0)
    centroids = torch.randn(len(sources), model.cfg.d_model, generator=generator)
    counts = torch.ones(len(sources), model.cfg.d_vocab)
    for source, ids in (planted or {}).items():
        centroids[sources.index(source)] = model.W_E.detach()[ids].mean(0)
        counts[sources.index(source), ids] += 50.0
    return NativeInfo(config, centroids, torch.zeros(model.cfg.d_model), (), token_counts=counts)


@pytest.fixture
def hf_and_hooked(neox_factory):
    from mechunlearn import models

    hf = neox_factory(vocab_size=97, hidden_size=32, layers=2, heads=4, intermediate=64)
    return hf, models.from_hf(copy.deepcopy(hf), device="cpu")


def test_on_with_a_sources_own_mask_reproduces_the_training_forward(hf_and_hooked):
    hf, hooked = hf_and_hooked
    info = _info(hooked, planted={"b": TOKENS[0, :1].tolist()})
    masks = _HFSinkMasks(hf, info.sink.masked_layers)
    masks.current = row_masks(info.sink.table(), torch.full(TOKENS.shape, SOURCES.index("b")))
    with torch.no_grad():
        training = hf(TOKENS).logits
    masks.remove()
    fixed = switch(hooked, source="b", config=info)
    torch.testing.assert_close(fixed(TOKENS), training, atol=1e-4, rtol=1e-4)
    # both routers over all sources pick "b" for the first prompt (its first token is planted in b's unigram
    # counts and is b's centroid)
    for route in ("nearest", "centroid"):
        routed = switch(hooked, route=route, config=info)
        torch.testing.assert_close(routed(TOKENS[:1]), training[:1], atol=1e-4, rtol=1e-4)


def test_nearest_routing_picks_the_planted_source_causally_and_only_among_allowed():
    centroids = torch.eye(3, 4) * 5
    resid = torch.tensor([[[5.0, 0, 0, 0], [0, 9, 0, 0], [0, 9, 0, 0]]])
    valid = torch.tensor([[True, True, True]])
    every = torch.arange(3)
    # position 0 sees only source 0's direction; later the causal mean tilts to source 1
    assert nearest_sources(resid, valid, centroids, torch.zeros(4), every).tolist() == [[0, 1, 1]]
    # an invalid (pad) position is left out of the mean
    assert nearest_sources(resid, torch.tensor([[True, False, False]]), centroids, torch.zeros(4),
                           every).tolist() == [[0, 0, 0]]
    # with source 1 switched off, the next nearest surviving source (0) takes its queries
    assert nearest_sources(resid, valid, centroids, torch.zeros(4), torch.tensor([0, 2])).tolist() == [[0, 0, 0]]


def test_the_token_router_reads_tokens_off_the_embedding_and_picks_the_likeliest_source():
    embedding = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[4, 7, 7, 2]])
    assert torch.equal(token_ids_of(embedding[tokens], embedding), tokens)
    counts = torch.ones(3, 10)
    counts[0, 4] += 20  # token 4 is source 0's word, token 7 source 2's
    counts[2, 7] += 20
    log_probs = (counts / counts.sum(1, keepdim=True)).log()
    valid = torch.ones(1, 4, dtype=torch.bool)
    assert likeliest_sources(tokens, valid, log_probs, torch.arange(3)).tolist() == [[0, 0, 2, 2]]
    # source 2 off: by hand, P0(4) = 21/30, P0(7) = 1/30, P1(.) = 1/10: after "4 7" source 0 leads
    # (log .7 + log 1/30 = -3.76 > 2 log .1 = -4.61), after "4 7 7" source 1 (-7.16 < -6.91)
    assert likeliest_sources(tokens, valid, log_probs, torch.tensor([0, 1])).tolist() == [[0, 0, 1, 1]]
    # invalid positions (pads) add nothing
    assert likeliest_sources(tokens, torch.tensor([[True, False, False, False]]), log_probs,
                             torch.arange(3)).tolist() == [[0, 0, 0, 0]]


def test_a_prompt_of_a_is_untouched_when_a_disjoint_source_is_switched_off(hf_and_hooked):
    _, hooked = hf_and_hooked
    probe = SinkConfig(sources=("a",), d_mlp=hooked.cfg.d_mlp, n_layers=2, p_backbone=0.25, p_sink=0.2)
    partner = _disjoint_partner(probe, "a")
    sources = ("a", partner, "c")
    info = _info(hooked, sources=sources, planted={"a": TOKENS[0].tolist()})
    prompt = TOKENS[:1]
    switch(hooked, config=info)
    assert hooked.blocks[0].hook_resid_pre.native_state is not None
    everything_on = hooked(prompt)
    assert set(hooked.blocks[0].hook_resid_pre.native_state.route[0, -3:].tolist()) == {0}
    switch(hooked, off=[partner], config=info)
    torch.testing.assert_close(hooked(prompt), everything_on, atol=0, rtol=0)
    switch(hooked, off=["a"], config=info)
    assert not torch.allclose(hooked(prompt), everything_on)


def test_the_switch_survives_reset_hooks_and_deepcopy_and_user_hooks_see_the_masked_activation(hf_and_hooked):
    _, hooked = hf_and_hooked
    info = _info(hooked)
    switch(hooked, route="backbone", config=info)
    reference = hooked(TOKENS)
    hooked.reset_hooks()
    torch.testing.assert_close(hooked(TOKENS), reference)
    torch.testing.assert_close(copy.deepcopy(hooked)(TOKENS), reference)
    seen = {}
    hooked.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.mlp.hook_post", lambda a, hook: seen.update(a=a))])
    assert bool((seen["a"][..., info.sink.n_backbone:] == 0).all())
    assert not torch.allclose(unswitch(hooked)(TOKENS), reference)


@pytest.mark.parametrize("kwargs", [dict(route="backbone"), dict(route="none", off=["a"]), dict(source="c"),
                                    dict(route="none", zero_units=[20, 21, 40])])
def test_baked_export_gives_the_masked_models_logits(hf_and_hooked, tmp_path, kwargs):
    from mechunlearn import models

    _, hooked = hf_and_hooked
    switched = switch(hooked, config=_info(hooked), **kwargs)
    expected = switched(TOKENS)
    torch.testing.assert_close(bake(switched)(TOKENS), expected, atol=1e-5, rtol=1e-5)
    directory = export(switched, tmp_path / "exported")
    assert json.loads((directory / "native-switch.json").read_text())["route"] == kwargs.get("route", "nearest")
    torch.testing.assert_close(models.load(directory, device="cpu")(TOKENS), expected, atol=1e-4, rtol=1e-4)


def test_bad_input_gets_one_clear_error(hf_and_hooked):
    _, hooked = hf_and_hooked
    info = _info(hooked)
    with pytest.raises(SinkMaskError, match="unknown source 'saga_9'.*a, b, c"):
        switch(hooked, off=["saga_9"], config=info)
    with pytest.raises(SinkMaskError, match="every source"):
        switch(hooked, off=list(SOURCES), config=info)
    with pytest.raises(SinkMaskError, match="unknown route"):
        switch(hooked, route="random", config=info)
    switch(hooked, config=info)
    with pytest.raises(SinkMaskError, match="cannot be folded"):
        bake(hooked)
    with pytest.raises(SinkMaskError, match="no native configuration"):
        switch(unswitch(copy.deepcopy(hooked)).__class__(hooked.cfg))


def test_micro_native_pretraining_records_its_sources_and_the_cli_switches_it(micro_world, tmp_path, capsys):
    from mechunlearn.cli import main
    from mechunlearn.reference import RECIPES, pretrain

    recipe = RECIPES["micro"]
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=1))
    directory = pretrain(micro_world, "native", recipe=recipe, cache_dir=tmp_path / "cache", progress=False)
    record = json.loads((directory / "native.json").read_text())
    assert record["sink"]["sources"] == sorted([*micro_world.sources, "filler"])
    assert len(record["router"]["centroids"]) == len(record["sink"]["sources"])
    model = switch(directory)
    assert model.native_switch["route"] == "nearest" and model(TOKENS[:, :3]).shape[-1] == model.cfg.d_vocab
    # nearest routing exports as the native weights + native.json with the switch, which switch(DIR) reapplies
    switch(model, off=["saga_0"])
    expected = model(TOKENS[:, :3])
    again = switch(export(model, tmp_path / "near"), device="cpu")
    assert again.native_switch["off"] == ["saga_0"] and again.native_switch["route"] == "nearest"
    torch.testing.assert_close(again(TOKENS[:, :3]), expected, atol=1e-5, rtol=1e-5)
    out = tmp_path / "switched"
    assert main(["native", "switch", "--model", str(directory), "--off", "saga_0", "--route", "backbone",
                 "--out", str(out)]) == 0
    assert (out / "native-switch.json").is_file()
    assert main(["native", "switch", "--model", str(directory), "--off", "saga_42", "--out", str(tmp_path / "x")]) == 2
    assert "unknown source 'saga_42'" in capsys.readouterr().err

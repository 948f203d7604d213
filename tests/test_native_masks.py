"""mechunlearn.hooks.sink_mask: the per-source masks are deterministic, pinned, exactly the backbone plus
binomially many sinks, and the hook multiplies the MLP hidden activation (checked against zeroed W_out rows)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from scipy import stats

from mechunlearn.hooks.sink_mask import (SinkConfig, SinkMaskError, backbone_mask, mask_table, masking, row_masks,
                                         source_mask, unit_uniform)


def _independent_uniform(seed, source, unit):
    # the documented recipe, recomputed here with hashlib only
    return int(hashlib.blake2b(f"{seed}:{source}:{unit}".encode(), digest_size=8).hexdigest(), 16) / 2.0**64


def test_hash_is_pinned_and_matches_the_documented_recipe():
    pinned = {(0, "saga_0", 0): 0.17967656614302588, (0, "saga_0", 300): 0.1972522535600226,
              (7, "filler", 511): 0.8785245813320423}
    for key, value in pinned.items():
        assert unit_uniform(*key) == pytest.approx(value, abs=1e-15)
        assert unit_uniform(*key) == pytest.approx(_independent_uniform(*key), abs=1e-15)
    mask = source_mask("saga_0", seed=0, d_mlp=64, p_backbone=0.25, p_sink=0.25)
    assert mask.nonzero().flatten().tolist() == list(range(16)) + [24, 26, 28, 31, 37, 38, 39, 52, 55, 56, 62, 63]


def test_masks_are_deterministic_per_source_and_seed_and_differ_across_sources():
    args = dict(d_mlp=512, p_backbone=0.25, p_sink=0.15)
    first = source_mask("saga_3", seed=0, **args)
    assert torch.equal(first, source_mask("saga_3", seed=0, **args))
    assert not torch.equal(first, source_mask("saga_3", seed=1, **args))
    assert not torch.equal(first, source_mask("saga_4", seed=0, **args))
    expected = torch.tensor([1.0 if u < 128 or _independent_uniform(0, "saga_3", u) < 0.15 else 0.0
                             for u in range(512)])
    assert torch.equal(first, expected)


def test_exactly_the_backbone_is_on_for_every_source_and_sink_counts_are_binomial():
    d_mlp, p_backbone, p_sink = 512, 0.25, 0.15
    n_backbone, n_sinks = int(d_mlp * p_backbone), d_mlp - int(d_mlp * p_backbone)
    sources = [f"source_{i}" for i in range(60)]
    table = mask_table(sources, seed=0, d_mlp=d_mlp, p_backbone=p_backbone, p_sink=p_sink)
    assert torch.equal(backbone_mask(d_mlp, p_backbone), torch.cat([torch.ones(n_backbone), torch.zeros(n_sinks)]))
    assert bool((table[:, :n_backbone] == 1).all())
    assert set(table.unique().tolist()) == {0.0, 1.0}
    low, high = stats.binom.ppf([1e-5, 1 - 1e-5], n_sinks, p_sink)
    counts = table[:, n_backbone:].sum(1)
    assert bool(((counts >= low) & (counts <= high)).all()), counts
    total_low, total_high = stats.binom.ppf([1e-5, 1 - 1e-5], n_sinks * len(sources), p_sink)
    assert total_low <= counts.sum() <= total_high
    # two sources share about a p_sink share of one's sinks
    overlap = (table[0, n_backbone:] * table[1:, n_backbone:]).sum(1) / counts[0]
    assert abs(float(overlap.mean()) - p_sink) < 0.05


def test_row_masks_pick_each_tokens_source_and_leave_padding_unmasked():
    table = mask_table(["a", "b", "c"], seed=0, d_mlp=32, p_backbone=0.25, p_sink=0.3)
    ids = torch.tensor([[0, 0, 2, -1], [1, 2, -1, -1]])
    rows = row_masks(table, ids)
    assert rows.shape == (2, 4, 32)
    for b in range(2):
        for p in range(4):
            expected = torch.ones(32) if ids[b, p] < 0 else table[ids[b, p]]
            assert torch.equal(rows[b, p], expected)


@pytest.mark.parametrize("p_backbone, p_sink", [(0.0, 0.0), (0.9, 0.2), (-0.1, 0.5), (0.5, 1.5)])
def test_probabilities_outside_the_unit_interval_are_refused(p_backbone, p_sink):
    with pytest.raises(SinkMaskError, match="p_backbone"):
        source_mask("a", seed=0, d_mlp=16, p_backbone=p_backbone, p_sink=p_sink)


def test_config_refuses_layers_beyond_the_model_and_unknown_sources():
    with pytest.raises(SinkMaskError, match="beyond the model"):
        SinkConfig(sources=("a",), d_mlp=16, n_layers=2, p_backbone=0.25, p_sink=0.1, layers=(0, 2))
    config = SinkConfig(sources=tuple(f"s{i}" for i in range(9)), d_mlp=16, n_layers=2, p_backbone=0.25, p_sink=0.1)
    with pytest.raises(SinkMaskError, match="unknown source 'nope'.*s0, s1"):
        config.mask("nope")
    assert SinkConfig.from_dict(config.to_dict()) == config


def test_masking_hook_equals_zeroing_w_out_rows(toy_model):
    model = toy_model
    mask = source_mask("a", seed=3, d_mlp=model.cfg.d_mlp, p_backbone=0.25, p_sink=0.3)
    tokens = torch.tensor([[1, 5, 9, 11, 4]])
    with masking(model, mask, layers=[0]):
        hooked = model(tokens)
    assert not model.blocks[0].mlp.hook_post._forward_hooks  # removed on exit
    original = model.blocks[0].mlp.W_out.detach().clone()
    with torch.no_grad():
        model.blocks[0].mlp.W_out.mul_(mask[:, None])
        edited = model(tokens)
        model.blocks[0].mlp.W_out.copy_(original)
    torch.testing.assert_close(hooked, edited, atol=1e-5, rtol=1e-5)
    with pytest.raises(SinkMaskError, match="beyond the model"):
        with masking(model, mask, layers=[model.cfg.n_layers]):
            pass

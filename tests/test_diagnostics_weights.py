"""Weight-space diagnostics (steps 1, 4, 7, 10) against independent numpy / scipy / pandas computations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

from mechunlearn.diagnostics import build_analyses, get_analysis, run_analyses
from mechunlearn.diagnostics import linalg
from mechunlearn.diagnostics.matrices import hf_matrix, weight_matrices
from mechunlearn.diagnostics.mlp_attn_analysis import MLPAttnAnalysis
from mechunlearn.diagnostics.mlp_nullspace import MLPNullspace
from mechunlearn.diagnostics.null_space_analysis import NullSpaceAnalysis
from mechunlearn.diagnostics.weight_comparison import WeightComparison

N_HEADS, D_HEAD, D_MODEL, D_MLP, N_LAYERS, D_VOCAB = 4, 8, 32, 64, 3, 50


@pytest.fixture
def pair(neox_factory):
    """Two independent HookedTransformer copies of one random GPT-NeoX model: (base, other)."""
    from mechunlearn.models import from_hf

    hf = neox_factory(vocab_size=D_VOCAB, hidden_size=D_MODEL, layers=N_LAYERS, heads=N_HEADS,
                      intermediate=D_MLP)
    return from_hf(hf, device="cpu", dtype="fp32"), from_hf(hf, device="cpu", dtype="fp32")


def numpy_hf(model, name: str) -> np.ndarray:
    """The HF-oriented matrix, built by hand with numpy (independent of hf_matrix)."""
    weight = dict(model.named_parameters())[name].detach().double().numpy()
    if name.endswith(("W_Q", "W_K", "W_V")):  # [i, m, h] -> [(i h), m]
        return np.concatenate([weight[head].T for head in range(weight.shape[0])], axis=0)
    if name.endswith("W_O"):  # [i, h, m] -> [m, (i h)]
        return np.concatenate([weight[head] for head in range(weight.shape[0])], axis=0).T
    return weight if name == "embed.W_E" else weight.T


def add_update(model, name: str, hf_delta: np.ndarray) -> None:
    """Add an HF-oriented [out, in] update to an MLP matrix (TransformerLens stores its transpose)."""
    with torch.no_grad():
        model.get_parameter(name).add_(torch.as_tensor(hf_delta.T, dtype=torch.float32))


def quiet(analysis):
    analysis.progress = False
    return analysis


# ------------------------------------------------------------------------------------------------- linalg helpers
def test_spectral_norm_and_stable_rank_match_numpy():
    generator = np.random.default_rng(0)
    for shape in [(40, 70), (90, 30), (64, 64)]:
        matrix = generator.standard_normal(shape)
        values = np.linalg.svd(matrix, compute_uv=False)
        tensor = torch.as_tensor(matrix, dtype=torch.float32)
        assert linalg.spectral_norm(tensor) == pytest.approx(values[0], rel=1e-5)
        assert linalg.spectral_norm(tensor, exact=True) == pytest.approx(values[0], rel=1e-5)
        assert linalg.stable_rank(tensor) == pytest.approx((values ** 2).sum() / values[0] ** 2, rel=1e-4)
        expected_rank = int(np.searchsorted(np.cumsum(values ** 2) / (values ** 2).sum(), 0.99) + 1)
        assert linalg.empirical_rank(linalg.singular_values(tensor), 0.99) == expected_rank
        assert linalg.top_k_energy_ratio(linalg.singular_values(tensor), 5) == pytest.approx(
            (values[:5] ** 2).sum() / (values ** 2).sum(), rel=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", "low_rank_plus_noise"])
def test_fast_spectral_norm_within_one_percent(kind, monkeypatch):
    # Lower the size below which LAPACK is used, so small (fast to test) matrices take the randomized path.
    monkeypatch.setattr(linalg, "EXACT_BELOW", 200)
    generator = np.random.default_rng(1)
    for shape in [(260, 390), (420, 240), (300, 300)]:
        matrix = generator.standard_normal(shape) / np.sqrt(shape[0])
        if kind == "low_rank_plus_noise":
            low_rank = generator.standard_normal((shape[0], 6)) @ generator.standard_normal((6, shape[1]))
            matrix = 0.05 * matrix + low_rank
        exact = np.linalg.svd(matrix, compute_uv=False)[0]
        fast = linalg.spectral_norm(torch.as_tensor(matrix, dtype=torch.float32))
        assert min(shape) >= linalg.EXACT_BELOW  # the randomized path, not the LAPACK fallback
        assert abs(fast - exact) / exact < 1e-2
        assert fast <= exact * (1 + 1e-5)  # Rayleigh-Ritz: a lower bound


def test_frobenius_norm_and_stable_rank_accumulate_in_float64():
    """At 768 x 3072 (Pythia-160M's W_in) a float32 sum is ~4e-5 off; ours must be within 1e-6 of float64 numpy,
    and so must the stable rank with the exact spectral norm."""
    generator = np.random.default_rng(3)
    matrix = (generator.standard_normal((768, 3072)) * 0.02 + 0.003).astype(np.float32)
    reference = matrix.astype(np.float64)
    top_squared = np.linalg.eigvalsh(reference @ reference.T)[-1]  # sigma_1^2, in float64 (cheaper than an SVD)
    tensor = torch.from_numpy(matrix)
    expected_norm = float(np.sqrt((reference ** 2).sum()))
    assert abs(float(torch.linalg.matrix_norm(tensor)) - expected_norm) / expected_norm > 1e-6  # the problem
    assert linalg.frobenius_norm(tensor) == pytest.approx(expected_norm, rel=1e-9)
    assert linalg.stable_rank(tensor, exact=True) == pytest.approx(expected_norm ** 2 / top_squared, rel=1e-6)


def test_ratios_follow_the_one_convention():
    """numeric.ratio everywhere: 0/0 is NaN (undefined), x/0 is inf; JSON keeps them apart."""
    rows = [{"name": f"blocks.0.{c}", "layer": 0, "group": group, "dW_fro": delta, "W_fro": 2.0}
            for c, group, delta in (("attn.W_Q", "attn", 0.0), ("mlp.W_in", "mlp", 1.0))]
    rows += [{"name": f"blocks.1.{c}", "layer": 1, "group": group, "dW_fro": 0.0, "W_fro": 2.0}
             for c, group in (("attn.W_Q", "attn"), ("mlp.W_in", "mlp"))]
    result = MLPAttnAnalysis.from_per_matrix(pd.DataFrame(rows))
    by_layer = result.frame.set_index("layer")
    assert by_layer.loc[0, "mlp_attn_ratio_abs"] == np.inf and by_layer.loc[0, "mlp_attn_ratio_rel"] == np.inf
    assert np.isnan(by_layer.loc[1, "mlp_attn_ratio_abs"]) and np.isnan(by_layer.loc[1, "mlp_share"])
    assert result.summary["mlp_attn_ratio_abs"] == np.inf


def test_summary_json_keeps_undefined_and_infinite_apart(tmp_path):
    from mechunlearn.diagnostics import AnalysisResult

    result = AnalysisResult("demo", pd.DataFrame({"layer": [0, 1], "value": [1.0, 2.0]}),
                            summary={"undefined": float("nan"), "infinite": float("inf"), "missing": None})
    result.save(tmp_path / "demo", html=False)
    assert json.loads((tmp_path / "demo" / "summary.json").read_text()) == {
        "undefined": "undefined", "infinite": "infinite", "missing": None}


def test_degenerate_matrices_give_zero_not_nan():
    zero = torch.zeros(600, 700)  # large enough for the randomized path
    assert linalg.spectral_norm(zero) == 0 and linalg.stable_rank(zero) == 0
    values = linalg.singular_values(torch.zeros(5, 3))
    assert linalg.empirical_rank(values) == 0 and linalg.top_k_energy_ratio(values) == 1
    assert linalg.entropy_rank(values) == 0


def test_rank_one_has_stable_and_empirical_rank_one():
    generator = np.random.default_rng(2)
    matrix = torch.as_tensor(np.outer(generator.standard_normal(50), generator.standard_normal(80)))
    assert linalg.stable_rank(matrix.float()) == pytest.approx(1.0, rel=1e-5)
    assert linalg.empirical_rank(linalg.singular_values(matrix)) == 1


def test_principal_angles_match_scipy():
    generator = np.random.default_rng(3)
    first = np.linalg.qr(generator.standard_normal((40, 6)))[0]
    for second in [np.linalg.qr(generator.standard_normal((40, 6)))[0],
                   np.linalg.qr(first + 1e-6 * generator.standard_normal((40, 6)))[0],  # tiny angles
                   np.linalg.qr(generator.standard_normal((40, 4)))[0]]:
        expected = np.sort(scipy.linalg.subspace_angles(first, second))
        angles = linalg.principal_angles(torch.as_tensor(first), torch.as_tensor(second)).numpy()
        np.testing.assert_allclose(np.sort(angles), expected, rtol=1e-6, atol=1e-12)
        assert linalg.grassmann_distance(torch.as_tensor(first), torch.as_tensor(second)) == pytest.approx(
            np.sqrt((expected ** 2).sum()), rel=1e-6, abs=1e-12)
        assert linalg.subspace_alignment(torch.as_tensor(first), torch.as_tensor(second)) == pytest.approx(
            np.mean(np.cos(expected) ** 2), rel=1e-9)


# ------------------------------------------------------------------------------------------------ step 1 (+ 4)
def test_matrices_are_the_hf_parameters(neox_factory):
    """hf_matrix / hf_name point at the right slice of the right GPT-NeoX parameter (fused QKV split by hand)."""
    from mechunlearn.models import from_hf

    hf = neox_factory(vocab_size=D_VOCAB, hidden_size=D_MODEL, layers=2, heads=N_HEADS, intermediate=D_MLP)
    model = from_hf(hf, device="cpu", dtype="fp32")
    parameters = dict(hf.named_parameters())
    for spec in weight_matrices(model):
        # transformers >= 5 renames the checkpoint's embed_out.weight to lm_head.weight when it loads it
        hf_weight = parameters[spec.hf_name if spec.hf_name in parameters else "lm_head.weight"].detach()
        if spec.component in ("Q", "K", "V"):  # NeoX rows are ordered (head, qkv, d_head)
            index = "QKV".index(spec.component)
            hf_weight = hf_weight.view(N_HEADS, 3, D_HEAD, D_MODEL)[:, index].reshape(-1, D_MODEL)
        torch.testing.assert_close(hf_matrix(model, spec), hf_weight)
    assert len(weight_matrices(model)) == 2 + 6 * 2


def test_per_matrix_norms_match_numpy(pair):
    base, other = pair
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    result = quiet(WeightComparison(empirical_rank=True)).run(base, other)
    frame = result.frame.set_index("name")
    assert len(frame) == 2 + 6 * N_LAYERS and set(frame["group"]) == {"attn", "mlp", "embed"}
    for name, row in frame.iterrows():
        weight, delta = numpy_hf(base, name), numpy_hf(other, name) - numpy_hf(base, name)
        delta_values, weight_values = (np.linalg.svd(matrix, compute_uv=False) for matrix in (delta, weight))
        assert (row["shape0"], row["shape1"]) == weight.shape
        assert row["dW_fro"] == pytest.approx(np.linalg.norm(delta), rel=1e-4)
        assert row["W_fro"] == pytest.approx(np.linalg.norm(weight), rel=1e-5)
        assert row["dW_spectral"] == pytest.approx(delta_values[0], rel=1e-4)
        assert row["W_spectral"] == pytest.approx(weight_values[0], rel=1e-5)
        assert row["dW_stable_rank"] == pytest.approx((delta_values ** 2).sum() / delta_values[0] ** 2, rel=1e-3)
        assert row["W_stable_rank"] == pytest.approx((weight_values ** 2).sum() / weight_values[0] ** 2, rel=1e-4)
        assert row["dW_spectral_rel"] == pytest.approx(delta_values[0] / weight_values[0], rel=1e-4)
    assert frame.loc["blocks.1.attn.W_K", "hf_name"] == "gpt_neox.layers.1.attention.query_key_value.weight"
    assert frame.loc["blocks.2.mlp.W_in", "layer"] == 2 and frame.loc["unembed.W_U", "layer"] == -1


def test_per_layer_matches_pandas_groupby(pair):
    base, other = pair
    with torch.no_grad():
        for index, parameter in enumerate(other.parameters()):
            parameter.add_(0.001 * (index % 5) * torch.randn_like(parameter))
    result = quiet(WeightComparison(empirical_rank=True)).run(base, other)
    per_matrix = result.frame
    expected = per_matrix.groupby(["layer", "group"]).agg(
        dW_fro_layer=("dW_fro", lambda v: np.sqrt((v ** 2).sum())),
        W_fro_layer=("W_fro", lambda v: np.sqrt((v ** 2).sum())),
        max_dW_spectral=("dW_spectral", "max"), max_W_spectral=("W_spectral", "max"),
        mean_dW_stable_rank=("dW_stable_rank", "mean"), mean_dW_empirical_rank=("dW_empirical_rank", "mean"),
        count_mats=("name", "count")).reset_index()
    expected["dW_fro_layer_rel"] = expected["dW_fro_layer"] / expected["W_fro_layer"]
    expected["max_dW_spectral_rel"] = expected["max_dW_spectral"] / expected["max_W_spectral"]
    per_layer = result.tables["per_layer"]
    assert list(per_layer.columns) == ["layer", "group", "dW_fro_layer", "W_fro_layer", "dW_fro_layer_rel",
                                       "max_dW_spectral", "max_W_spectral", "max_dW_spectral_rel",
                                       "mean_dW_stable_rank", "mean_dW_empirical_rank", "count_mats"]
    pd.testing.assert_frame_equal(per_layer, expected[per_layer.columns], check_dtype=False)
    components = result.tables["per_component"].set_index("component")
    assert components.loc["Q", "count_mats"] == N_LAYERS and components.loc["in", "group"] == "mlp"
    coarse = result.tables["per_coarse_layer"]
    assert list(coarse["depth"].unique()) == ["early", "middle", "late"]  # 3 layers: one per third
    assert coarse["count_mats"].sum() == 6 * N_LAYERS


def test_rank_one_update_in_one_matrix(pair):
    base, other = pair
    generator = np.random.default_rng(4)
    add_update(other, "blocks.1.mlp.W_in", 0.1 * np.outer(generator.standard_normal(D_MLP),
                                                          generator.standard_normal(D_MODEL)))
    frame = quiet(WeightComparison(empirical_rank=True)).run(base, other).frame.set_index("name")
    assert frame.loc["blocks.1.mlp.W_in", "dW_stable_rank"] == pytest.approx(1.0, rel=1e-4)
    assert frame.loc["blocks.1.mlp.W_in", "dW_empirical_rank"] == 1
    others = frame.drop(index="blocks.1.mlp.W_in")
    assert (others[["dW_fro", "dW_spectral", "dW_stable_rank", "dW_empirical_rank"]] == 0).all().all()


def test_identical_models_give_zero_without_nan(pair):
    base, other = pair
    results = run_analyses([quiet(analysis) for analysis in build_analyses(
        ["weight_comparison", "mlp_attn_analysis", "null_space_analysis", "mlp_nullspace"],
        {"weight_comparison": {"empirical_rank": True}})], {"base": base, "other": other})
    comparison = results["weight_comparison"]
    for frame in [comparison.frame, *comparison.tables.values()]:
        assert not frame.isna().any().any()
    assert (comparison.frame[["dW_fro", "dW_fro_rel", "dW_spectral", "dW_stable_rank", "dW_empirical_rank"]] == 0
            ).all().all()
    assert comparison.summary["identical"] and comparison.summary["peak_layer"] is None
    subspace = results["null_space_analysis"].frame
    assert not subspace.isna().any().any()
    assert (subspace["dW_effective_rank"] == 0).all() and (subspace["dW_topk_energy_ratio"] == 1).all()
    assert subspace["grassmann_distance"].max() < 1e-6 and subspace["subspace_alignment"].min() > 1 - 1e-9
    # Documented: with no change at all, the MLP/attention ratio and the null-space split are undefined (NaN).
    assert results["mlp_attn_analysis"].frame["mlp_attn_ratio_rel"].isna().all()
    assert results["mlp_nullspace"].frame["null_space_fraction"].isna().all()
    assert results["mlp_nullspace"].summary["n_zero_updates"] == 2 * N_LAYERS


def test_models_of_different_shapes_raise(neox_factory):
    from mechunlearn.models import from_hf

    base = from_hf(neox_factory(vocab_size=D_VOCAB, hidden_size=32, layers=2, heads=4), device="cpu")
    other = from_hf(neox_factory(vocab_size=D_VOCAB, hidden_size=48, layers=2, heads=4), device="cpu")
    for name in ["weight_comparison", "mlp_attn_analysis", "null_space_analysis", "mlp_nullspace"]:
        with pytest.raises(ValueError, match="different shapes"):
            get_analysis(name)(progress=False).run(base, other)


def test_mlp_vs_attention_ratios(pair):
    base, other = pair
    generator = np.random.default_rng(5)
    add_update(other, "blocks.0.mlp.W_out", 0.05 * generator.standard_normal((D_MODEL, D_MLP)))
    with torch.no_grad():
        other.blocks[0].attn.W_V.add_(0.02 * torch.randn_like(other.blocks[0].attn.W_V))
    result = quiet(MLPAttnAnalysis()).run(base, other)
    row = result.frame.set_index("layer").loc[0]
    mlp_names = ["blocks.0.mlp.W_in", "blocks.0.mlp.W_out"]
    attn_names = [f"blocks.0.attn.W_{c}" for c in "QKVO"]

    def stacked_norm(model_a, model_b, names):
        return np.sqrt(sum(np.linalg.norm(numpy_hf(model_a, n) - (numpy_hf(model_b, n) if model_b else 0)) ** 2
                           for n in names))

    mlp_rel = stacked_norm(other, base, mlp_names) / stacked_norm(base, None, mlp_names)
    attn_rel = stacked_norm(other, base, attn_names) / stacked_norm(base, None, attn_names)
    assert row["mlp_attn_ratio_rel"] == pytest.approx(mlp_rel / attn_rel, rel=1e-4)
    assert row["mlp_attn_ratio_abs"] == pytest.approx(
        stacked_norm(other, base, mlp_names) / stacked_norm(other, base, attn_names), rel=1e-4)
    untouched = result.frame.set_index("layer").loc[1]
    assert np.isnan(untouched["mlp_attn_ratio_rel"])
    full = quiet(WeightComparison()).run(base, other)
    pd.testing.assert_frame_equal(MLPAttnAnalysis.from_weight_comparison(full).frame, result.frame)


# ----------------------------------------------------------------------------------------------- steps 7 and 10
def test_null_space_analysis_matches_numpy_and_scipy(pair):
    base, other = pair
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    result = quiet(NullSpaceAnalysis(max_matrices=5, k=4, seed=1)).run(base, other)
    frame = result.frame
    assert len(frame) == 5 and frame["name"].is_unique
    assert result.summary["sampled"] == quiet(NullSpaceAnalysis(max_matrices=5, k=4, seed=1)).run(
        base, other).summary["sampled"]  # seeded
    for _, row in frame.iterrows():
        weight, modified = numpy_hf(base, row["name"]), numpy_hf(other, row["name"])
        delta_values = np.linalg.svd(modified - weight, compute_uv=False)
        energy = np.cumsum(delta_values ** 2) / (delta_values ** 2).sum()
        assert row["dW_topk_energy_ratio"] == pytest.approx(energy[3], rel=1e-4)
        assert row["dW_effective_rank"] == np.searchsorted(energy, 0.99) + 1
        left_base, left_other = np.linalg.svd(weight)[0][:, :4], np.linalg.svd(modified)[0][:, :4]
        angles = scipy.linalg.subspace_angles(left_base, left_other)
        assert row["grassmann_distance"] == pytest.approx(np.sqrt((angles ** 2).sum()), rel=1e-3)
        assert row["subspace_alignment"] == pytest.approx(np.mean(np.cos(angles) ** 2), rel=1e-4)
    assert len(quiet(NullSpaceAnalysis()).run(base, other).frame) == 6 * N_LAYERS  # fewer than 50: all


def test_mlp_nullspace_split(pair):
    base, other = pair
    generator = np.random.default_rng(6)
    w_in = numpy_hf(base, "blocks.0.mlp.W_in")  # [d_mlp, d_model]: a 32-dim column space in 64 dims
    left = np.linalg.svd(w_in, full_matrices=False)[0]
    noise = generator.standard_normal(w_in.shape)
    add_update(other, "blocks.0.mlp.W_in", 0.1 * (noise - left @ (left.T @ noise)))  # null space only
    add_update(other, "blocks.1.mlp.W_in", 0.1 * (lambda u: u @ (u.T @ noise))(
        np.linalg.svd(numpy_hf(base, "blocks.1.mlp.W_in"), full_matrices=False)[0]))  # column space only
    w_out = numpy_hf(base, "blocks.2.mlp.W_out")  # [d_model, d_mlp]: a 32-dim row space in 64 dims
    right = np.linalg.svd(w_out, full_matrices=False)[2].T
    noise = generator.standard_normal(w_out.shape)
    add_update(other, "blocks.2.mlp.W_out", 0.1 * (noise - (noise @ right) @ right.T))  # W_out's null space
    result = quiet(MLPNullspace()).run(base, other)
    frame = result.frame.set_index("name")
    assert frame.loc["blocks.0.mlp.W_in", "null_space_fraction"] == pytest.approx(1.0, abs=1e-5)
    assert frame.loc["blocks.1.mlp.W_in", "null_space_fraction"] == pytest.approx(0.0, abs=1e-5)
    assert frame.loc["blocks.1.mlp.W_in", "col_space_fraction"] == pytest.approx(1.0, abs=1e-5)
    assert frame.loc["blocks.2.mlp.W_out", "row_null_fraction"] == pytest.approx(1.0, abs=1e-5)
    assert frame.loc["blocks.0.mlp.W_in", "W_rank"] == D_MODEL
    assert frame.loc["blocks.0.mlp.W_in", "col_space_fraction_random"] == pytest.approx(D_MODEL / D_MLP)
    changed = frame.dropna(subset=["col_space_fraction"])
    np.testing.assert_allclose(changed["col_space_fraction"] + changed["null_space_fraction"], 1.0, atol=1e-12)
    fixed = quiet(MLPNullspace(rank=5)).run(base, other).frame
    assert (fixed["W_rank"] == 5).all()
    with pytest.raises(ValueError, match="at most one"):
        MLPNullspace(rank=3, energy=0.9)


def test_registry_and_save(pair, tmp_path):
    base, other = pair
    with torch.no_grad():
        other.blocks[1].mlp.W_in.add_(0.01)
    names = ["weight_comparison", "mlp_attn_analysis", "null_space_analysis", "mlp_nullspace"]
    expected_classes = [WeightComparison, MLPAttnAnalysis, NullSpaceAnalysis, MLPNullspace]
    assert [get_analysis(name) for name in names] == expected_classes
    results = run_analyses([quiet(analysis) for analysis in build_analyses(names)], {"base": base, "other": other})
    for name, result in results.items():
        directory = result.save(tmp_path / name)
        assert (directory / f"{name}.csv").exists() and (directory / f"{name}.html").exists()
        assert isinstance(json.loads((directory / "summary.json").read_text()), dict)
        assert len(result.figure().data) > 0
    saved = {path.name for path in (tmp_path / "weight_comparison").iterdir()}
    assert {"per_layer.csv", "per_component.csv", "per_coarse_layer.csv"} <= saved
    assert pd.read_csv(tmp_path / "weight_comparison" / "per_layer.csv")["count_mats"].sum() == 2 + 6 * N_LAYERS


def test_half_precision_models_are_upcast(neox_factory):
    from mechunlearn.models import from_hf

    hf = neox_factory(vocab_size=D_VOCAB, hidden_size=D_MODEL, layers=1, heads=N_HEADS, intermediate=D_MLP)
    base, other = from_hf(hf, device="cpu", dtype="bf16"), from_hf(hf, device="cpu", dtype="bf16")
    with torch.no_grad():
        other.blocks[0].mlp.W_out.add_(1.0)
    frame = quiet(WeightComparison()).run(base, other).frame.set_index("name")
    assert frame.loc["blocks.0.mlp.W_out", "dW_stable_rank"] == pytest.approx(1.0, rel=1e-3)  # all-ones: rank 1
    assert frame.loc["blocks.0.mlp.W_out", "dW_fro"] == pytest.approx(np.sqrt(D_MODEL * D_MLP), rel=1e-2)

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkit.arithmetic import (
    Mask,
    add,
    layer_group,
    mask_intersection,
    mask_of,
    mask_union,
    merge,
    negate,
    overlap,
    prune,
    restrict,
    scale,
    statistics,
    subtract,
    topk_indices,
)
from sftkit.delta import SFT, SparseDelta
from sftkit.errors import BaseMismatchError, ConfigError
from sftkit.metadata import BaseModelInfo, SFTMetadata

SHAPES = {
    "embeddings.word_embeddings.weight": (12, 4),
    "encoder.layer.0.attention.self.query.weight": (4, 4),
    "encoder.layer.1.output.dense.bias": (4,),
}


def random_sft(seed: int, density: float = 0.3, shapes: dict[str, tuple[int, ...]] = SHAPES, **meta: object) -> SFT:
    gen = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, shape in shapes.items():
        keep = torch.rand(shape, generator=gen) < density
        deltas[name] = SparseDelta.from_dense(torch.randn(shape, generator=gen) * keep)
    return SFT(deltas, {}, SFTMetadata(**meta))  # type: ignore[arg-type]


def dense_of(sft: SFT, shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, torch.Tensor]:
    return {n: sft.deltas[n].to_dense() if n in sft.deltas else torch.zeros(s) for n, s in shapes.items()}


def sft_from(values: dict[str, list[float]], **meta: object) -> SFT:
    return SFT({n: SparseDelta.from_dense(torch.tensor(v)) for n, v in values.items()}, {}, SFTMetadata(**meta))  # type: ignore[arg-type]


def assert_valid(sft: SFT) -> None:
    sft.validate()
    for d in sft.deltas.values():
        assert d.values.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- sums


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_add_subtract_match_dense_arithmetic(seed_a: int, seed_b: int) -> None:
    a, b = random_sft(seed_a), random_sft(seed_b)
    total, diff = add(a, b), subtract(a, b)
    assert_valid(total)
    assert_valid(diff)
    da, db = dense_of(a), dense_of(b)
    for name in SHAPES:
        torch.testing.assert_close(dense_of(total)[name], da[name] + db[name])
        torch.testing.assert_close(dense_of(diff)[name], da[name] - db[name])
    round_trip = (a + b) - b
    for name, d in a.deltas.items():
        torch.testing.assert_close(dense_of(round_trip)[name].reshape(-1)[d.indices], d.values)
    assert all(bool((d.values != 0).all()) for d in round_trip.deltas.values())
    assert add(a, b) == add(b, a)


def test_cancellation_drops_exact_zeros() -> None:
    a = random_sft(3)
    assert a.nnz > 0
    assert (a - a).nnz == 0
    assert scale(a, 0.0).nnz == 0
    partial = sft_from({"x": [1.0, 2.0, 0.0]}) + sft_from({"x": [-1.0, 0.0, 5.0]})
    assert partial["x"].indices.tolist() == [1, 2]
    assert partial["x"].values.tolist() == [2.0, 5.0]


def test_scale_negate_and_operators() -> None:
    a = random_sft(4)
    for factor in (2.5, -1.0, 0.5):
        scaled = scale(a, factor)
        assert torch.equal(scaled["encoder.layer.0.attention.self.query.weight"].indices,
                           a["encoder.layer.0.attention.self.query.weight"].indices)
        for name in SHAPES:
            torch.testing.assert_close(dense_of(scaled)[name], factor * dense_of(a)[name])
    assert 3.0 * a == scale(a, 3.0) == a * 3.0
    assert -a == negate(a)
    assert dense_of(negate(a))["embeddings.word_embeddings.weight"].neg().equal(dense_of(a)["embeddings.word_embeddings.weight"])
    assert (-a).metadata.method == "negate"
    assert scale(a, 2.0).metadata.hyperparameters["scale"] == 2.0
    with pytest.raises(ConfigError):
        scale(a, math.inf)


def test_dense_parts_policy() -> None:
    head = torch.randn(3, 4)
    a = SFT(random_sft(1).deltas, {"classifier.weight": head}, SFTMetadata())
    b = random_sft(2)
    assert torch.equal(add(a, b).dense["classifier.weight"], head)
    assert torch.equal(add(b, a).dense["classifier.weight"], head)
    assert torch.equal(scale(a, 0.5).dense["classifier.weight"], head)  # a replacement is never scaled
    assert torch.equal(negate(a).dense["classifier.weight"], head)
    assert torch.equal(subtract(a, b).dense["classifier.weight"], head)
    same = SFT({}, {"classifier.weight": head.clone()}, SFTMetadata())
    assert torch.equal(add(a, same).dense["classifier.weight"], head)
    with pytest.raises(ConfigError, match="classifier.weight"):
        add(a, SFT({}, {"classifier.weight": head + 1}, SFTMetadata()))
    with pytest.raises(ConfigError, match="no inverse"):
        subtract(b, a)
    clash = SFT({"classifier.weight": SparseDelta.from_dense(torch.ones(3, 4))}, {}, SFTMetadata())
    with pytest.raises(ConfigError, match="dense replacement"):
        add(a, clash)


def test_shape_and_base_mismatch() -> None:
    a = sft_from({"x": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="'x'"):
        add(a, sft_from({"x": [1.0, 2.0, 3.0]}))
    on_one = sft_from({"x": [1.0, 0.0]}, base=BaseModelInfo(fingerprint="sfp1-aaaa-bbbb"))
    on_other = sft_from({"x": [0.0, 1.0]}, base=BaseModelInfo(fingerprint="sfp1-cccc-dddd"))
    with pytest.raises(BaseMismatchError):
        add(on_one, on_other)
    with pytest.raises(BaseMismatchError):
        merge([on_one, on_other])
    assert add(on_one, on_other, force=True).nnz == 2
    assert add(a, on_one).metadata.method == "add"


# ------------------------------------------------------------------------------------------- top-K


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 60), st.booleans())
def test_topk_indices_exact_and_valid(seed: int, k: int, coarse: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = {"b": torch.randn(5, 6, generator=gen), "a": torch.randn(30, generator=gen)}
    if coarse:  # many ties, including ±0 and equal magnitudes of opposite sign
        scores = {n: (t * 2).round() / 2 for n, t in scores.items()}
    picked = topk_indices(scores, k)
    assert sum(int(i.numel()) for i in picked.values()) == k
    chosen, rest = [], []
    for name, t in scores.items():
        idx = picked[name]
        assert idx.dtype == torch.int64 and bool((idx[1:] > idx[:-1]).all())
        keep = torch.zeros(t.numel(), dtype=torch.bool)
        keep[idx] = True
        chosen.append(t.reshape(-1).abs()[keep])
        rest.append(t.reshape(-1).abs()[~keep])
    low, high = torch.cat(chosen), torch.cat(rest)
    if low.numel() and high.numel():
        assert float(low.min()) >= float(high.max())
    assert {n: i.tolist() for n, i in topk_indices(scores, k).items()} == {n: i.tolist() for n, i in picked.items()}


def test_topk_ties_fill_in_name_then_index_order() -> None:
    scores = {"b": torch.tensor([1.0, -1.0]), "a": torch.tensor([1.0, 0.5, -1.0, 2.0])}
    picked = topk_indices(scores, 3)
    assert picked["a"].tolist() == [0, 2, 3] and picked["b"].tolist() == []
    assert topk_indices({"x": torch.tensor([1.0, 1.0], dtype=torch.bfloat16)}, 1)["x"].tolist() == [0]
    with pytest.raises(ConfigError):
        topk_indices(scores, 7)
    with pytest.raises(ConfigError, match="NaN"):
        topk_indices({"x": torch.tensor([1.0, math.nan])}, 1)


# ------------------------------------------------------------------------------------------- prune


def test_prune_global_exact_k_keeps_largest() -> None:
    a = random_sft(5, density=0.6)
    for k in (0, 1, 7, a.nnz - 1):
        pruned = prune(a, num_params=k)
        assert pruned.nnz == k
        assert_selection_is_top(a, pruned)
    assert prune(a, num_params=a.nnz + 100).nnz == a.nnz
    assert prune(a, density=0.1).nnz == round(0.1 * a.numel)
    assert prune(a, density=1.0) == a


def assert_selection_is_top(full: SFT, pruned: SFT) -> None:
    kept, dropped = [], []
    for name, d in full.deltas.items():
        keep = torch.isin(d.indices, pruned[name].indices)
        torch.testing.assert_close(pruned[name].values, d.values[keep])
        kept.append(d.values[keep].abs())
        dropped.append(d.values[~keep].abs())
    k, r = torch.cat(kept), torch.cat(dropped)
    if k.numel() and r.numel():
        assert float(k.min()) >= float(r.max())


def test_prune_per_tensor_and_ties() -> None:
    a = random_sft(6, density=0.8)
    pruned = prune(a, density=0.25, scope="tensor")
    for name, d in a.deltas.items():
        assert pruned[name].nnz == min(round(0.25 * d.numel), d.nnz)
        assert_selection_is_top(SFT({name: d}), SFT({name: pruned[name]}))
    flat = SFT({"x": SparseDelta((10,), torch.arange(10), torch.ones(10)), "y": SparseDelta((3,), torch.arange(3), -torch.ones(3))})
    assert prune(flat, num_params=5).nnz == 5
    assert prune(flat, num_params=5) == prune(flat, num_params=5)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"num_params": 3, "density": 0.1}, {"num_params": -1}, {"density": 0.0}, {"density": 1.5},
     {"density": 0.1, "scope": "layer"}, {"num_params": 3, "scope": "tensor"}],
)
def test_prune_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        prune(random_sft(0), **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- masks


def test_masks_union_intersection_restrict() -> None:
    m1 = Mask({"x": torch.tensor([0, 2, 5]), "y": torch.tensor([1])}, {"x": (8,), "y": (3,)})
    m2 = Mask({"x": torch.tensor([2, 3, 5, 7]), "z": torch.tensor([0])}, {"x": (8,), "z": (2,)})
    union, inter = mask_union(m1, m2), mask_intersection(m1, m2)
    assert {n: i.tolist() for n, i in union.items()} == {"x": [0, 2, 3, 5, 7], "y": [1], "z": [0]}
    assert {n: i.tolist() for n, i in inter.items()} == {"x": [2, 5]}
    assert inter.shapes == {"x": (8,)} and union.nnz == 7
    assert union.to_dense("x").tolist() == [True, False, True, True, False, True, False, True]
    sft = SFT({"x": SparseDelta((8,), torch.tensor([0, 1, 2, 7]), torch.tensor([1.0, 2.0, 3.0, 4.0])),
               "y": SparseDelta((3,), torch.tensor([1]), torch.tensor([9.0]))}, {"head": torch.ones(2)})
    kept = restrict(sft, m2)
    assert list(kept.deltas) == ["x"] and kept["x"].indices.tolist() == [2, 7] and kept["x"].values.tolist() == [3.0, 4.0]
    assert "head" in kept.dense
    assert mask_of(sft)["x"].tolist() == [0, 1, 2, 7] and mask_of(sft).shapes["y"] == (3,)
    assert restrict(sft, mask_of(sft)) == sft
    with pytest.raises(ConfigError):
        mask_union(m1, Mask({"x": torch.tensor([0])}, {"x": (9,)}))


def test_overlap_counts_and_jaccard() -> None:
    a = SFT({"encoder.layer.0.a": SparseDelta((10,), torch.tensor([0, 1, 2, 3]), torch.ones(4)),
             "embeddings.e": SparseDelta((10,), torch.tensor([5]), torch.ones(1))})
    b = SFT({"encoder.layer.0.a": SparseDelta((10,), torch.tensor([2, 3, 4]), torch.ones(3)),
             "classifier.w": SparseDelta((4,), torch.tensor([0, 1]), torch.ones(2))})
    report = overlap(a, b)
    layer = report.tensors["encoder.layer.0.a"]
    assert (layer.intersection, layer.union, layer.jaccard) == (2, 5, pytest.approx(0.4))
    assert report.tensors["embeddings.e"].jaccard == 0.0
    assert (report.intersection, report.union) == (2, 8)
    assert report.jaccard == pytest.approx(2 / 8)
    assert list(report.groups) == ["embeddings", "layer.0", "heads"]
    assert report.groups["heads"].size_b == 2
    assert overlap(a, a).jaccard == 1.0
    assert overlap(mask_of(a), b).to_dict()["total"]["jaccard"] == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------- merge


def test_merge_sum_and_mean_equal_dense_arithmetic() -> None:
    sfts = [random_sft(s) for s in (10, 11, 12)]
    summed, mean = merge(sfts, "sum"), merge(sfts, "mean")
    weighted = merge(sfts, "sum", weights=[0.5, 2.0, -1.0])
    dense = [dense_of(s) for s in sfts]
    for name in SHAPES:
        torch.testing.assert_close(dense_of(summed)[name], sum(d[name] for d in dense))
        torch.testing.assert_close(dense_of(mean)[name], sum(d[name] for d in dense) / 3)
        torch.testing.assert_close(dense_of(weighted)[name], 0.5 * dense[0][name] + 2 * dense[1][name] - dense[2][name])
    assert summed.metadata.method == "merge" and summed.metadata.hyperparameters["merge"]["method"] == "sum"


def test_ties_merge_hand_example() -> None:
    d1 = sft_from({"x": [1.0, -2.0, 0.0, 3.0]})
    d2 = sft_from({"x": [2.0, 1.0, -1.0, 0.0]})
    d3 = sft_from({"x": [-4.0, 1.0, -1.0, 0.0]})
    # summed [-1, 0, -2, 3] elects signs [-, none, -, +]; disjoint means over the agreeing SFTs.
    ties = merge([d1, d2, d3], "ties")
    assert ties["x"].indices.tolist() == [0, 2, 3]
    assert ties["x"].values.tolist() == [-4.0, -1.0, 3.0]
    # Trimming to the top half first: d1 → [0,-2,0,3], d2 → [2,1,0,0], d3 → [-4,1,0,0]; sums [-2,0,0,3].
    trimmed = merge([d1, d2, d3], "ties", ties_density=0.5)
    assert trimmed["x"].indices.tolist() == [0, 3] and trimmed["x"].values.tolist() == [-4.0, 3.0]
    assert merge([d1, d2, d3], "ties", density=0.5) == trimmed
    # Weights change the election at entry 0 (3·1 + 3·2 − 4 > 0) and weight the disjoint mean.
    weighted = merge([d1, d2, d3], "ties", weights=[3.0, 3.0, 1.0])
    assert weighted["x"].values[0].item() == pytest.approx(1.5)


@pytest.mark.parametrize(
    "args",
    [([], {}), (None, {"method": "median"}), (None, {"weights": [1.0]}), (None, {"method": "mean", "weights": [1.0, -1.0]}),
     (None, {"method": "sum", "ties_density": 0.5}), (None, {"method": "ties", "ties_density": 0.5, "density": 0.5})],
)
def test_merge_rejects_bad_arguments(args: tuple[list[SFT] | None, dict[str, object]]) -> None:
    sfts, kwargs = args
    with pytest.raises(ConfigError):
        merge([random_sft(1), random_sft(2)] if sfts is None else sfts, **kwargs)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- statistics


def test_statistics_per_tensor_and_layer() -> None:
    sft = SFT(
        {
            "embeddings.word_embeddings.weight": SparseDelta((4, 5), torch.tensor([0, 7]), torch.tensor([3.0, -4.0])),
            "encoder.layer.1.output.dense.weight": SparseDelta((2, 5), torch.tensor([1]), torch.tensor([2.0])),
            "encoder.layer.1.output.dense.bias": SparseDelta((5,), torch.tensor([0, 1, 2]), torch.tensor([1.0, 1.0, -1.0])),
            "encoder.layer.10.attention.self.query.weight": SparseDelta((2, 2), torch.tensor([3]), torch.tensor([0.5])),
            "lm_head.dense.weight": SparseDelta((2, 2), torch.zeros(0, dtype=torch.int64), torch.zeros(0)),
        },
        {"classifier.out_proj.weight": torch.zeros(3, 8)},
    )
    stats = statistics(sft)
    assert (stats.nnz, stats.numel) == (7, 20 + 10 + 5 + 4 + 4)
    assert stats.density == pytest.approx(7 / 43)
    emb = stats.tensors["embeddings.word_embeddings.weight"]
    assert (emb.nnz, emb.numel, emb.l2, emb.max_abs) == (2, 20, pytest.approx(5.0), 4.0)
    assert stats.tensors["lm_head.dense.weight"].max_abs == 0.0
    assert list(stats.groups) == ["embeddings", "layer.1", "layer.10", "heads"]
    layer1 = stats.groups["layer.1"]
    assert (layer1.tensors, layer1.nnz, layer1.numel) == (2, 4, 15)
    assert layer1.l2 == pytest.approx(math.sqrt(4 + 3))
    assert stats.l2 == pytest.approx(math.sqrt(25 + 7 + 0.25))
    assert stats.dense == {"classifier.out_proj.weight": 24}
    assert stats.to_dict()["groups"]["layer.10"]["nnz"] == 1


def test_layer_group_names() -> None:
    assert layer_group("encoder.layer.11.attention.output.dense.weight") == "layer.11"
    assert layer_group("embeddings.LayerNorm.bias") == "embeddings"
    assert layer_group("classifier.out_proj.bias") == "heads"
    assert layer_group("pooler.dense.weight") == "other"

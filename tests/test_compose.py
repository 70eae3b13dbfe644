"""The composer: fused application, exact revert, canonical names, heads, fingerprints, low precision."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sftkit.compose import apply, apply_to_state_dict, composed, prepare
from sftkit.delta import SFT, SparseDelta
from sftkit.errors import BaseMismatchError, ConfigError, FormatError, MissingParameterError
from sftkit.fingerprints import describe_base
from sftkit.metadata import SFTMetadata
from sftkit.naming import alias_map, canonical_state_dict
from sftkit.testing import perturbed_copy, tiny_classifier, tiny_masked_lm

EMB = "embeddings.word_embeddings.weight"
QUERY = "encoder.layer.0.attention.self.query.weight"


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in canonical_state_dict(model).items()}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (distinguishes -0.0 from 0.0), the standard for "restored exactly"."""
    as_int = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.view(as_int[a.dtype]), b.view(as_int[b.dtype]))
    )


def assert_state_bits(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = canonical_state_dict(model)
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert same_bits(actual[name], tensor), name


def sft_between(
    base: nn.Module,
    tuned: nn.Module,
    *,
    kind: str = "other",
    include: tuple[str, ...] = ("",),
    label: str | None = None,
) -> SFT:
    """The exact sparse difference tuned − base over canonical names starting with ``include``."""
    b, t = canonical_state_dict(base), canonical_state_dict(tuned)
    deltas = {name: SparseDelta.from_dense(t[name] - b[name]) for name in b if name.startswith(include)}
    meta = SFTMetadata(
        kind=kind, language=label if kind == "language" else None, task=label if kind == "task" else None
    )
    meta.base = describe_base(base)
    return SFT(deltas={n: d for n, d in deltas.items() if d.nnz}, metadata=meta)


def classifier_on(mlm: nn.Module, num_labels: int = 3) -> nn.Module:
    """A sequence classifier sharing ``mlm``'s base weights (so base fingerprints match)."""
    clf = tiny_classifier(seed=7, num_labels=num_labels)
    clf.roberta.load_state_dict(mlm.roberta.state_dict())
    return clf


def random_delta(
    shape: tuple[int, ...], density: float, seed: int, dtype: torch.dtype = torch.float32
) -> SparseDelta:
    gen = torch.Generator().manual_seed(seed)
    numel = torch.Size(shape).numel()
    indices = torch.nonzero(torch.rand(numel, generator=gen) < density).reshape(-1)
    values = (torch.randn(indices.numel(), generator=gen) * 0.05).to(dtype)
    return SparseDelta(shape, indices, values)


def dense_of(delta: SparseDelta | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like, dtype=torch.float32) if delta is None else delta.to_dense()


@pytest.fixture
def language_sft(mlm):
    return sft_between(mlm, perturbed_copy(mlm, density=0.1, seed=1), kind="language", label="quy")


@pytest.fixture
def task_sft(mlm):
    return sft_between(
        mlm, perturbed_copy(mlm, density=0.2, seed=2), kind="task", include=("encoder.",), label="nli"
    )


def test_language_plus_task_equals_dense_sum(mlm, language_sft, task_sft):
    theta0 = snapshot(mlm)
    composition = apply(mlm, [language_sft, task_sft])
    after = canonical_state_dict(mlm)
    for name, base in theta0.items():
        expected = (
            base + dense_of(language_sft.deltas.get(name), base) + dense_of(task_sft.deltas.get(name), base)
        )
        assert torch.equal(after[name], expected), name
    assert composition.nnz == language_sft.nnz + task_sft.nnz
    assert not composition.skipped


def test_revert_restores_every_bit_float32(mlm, language_sft, task_sft):
    theta0 = snapshot(mlm)
    composition = apply(mlm, [language_sft, task_sft], [0.7, 1.3])
    assert not torch.equal(canonical_state_dict(mlm)[QUERY], theta0[QUERY])
    composition.revert()
    assert_state_bits(mlm, theta0)
    composition.revert()  # a second revert is a no-op
    assert_state_bits(mlm, theta0)


def test_composed_reverts_on_exception(mlm, language_sft):
    theta0 = snapshot(mlm)
    with pytest.raises(RuntimeError, match="boom"):
        with composed(mlm, language_sft):
            assert not torch.equal(canonical_state_dict(mlm)[QUERY], theta0[QUERY])
            raise RuntimeError("boom")
    assert_state_bits(mlm, theta0)


def test_composition_is_a_context_manager(mlm, language_sft):
    theta0 = snapshot(mlm)
    with apply(mlm, language_sft) as composition:
        assert composition.revertible
    assert composition.reverted
    assert_state_bits(mlm, theta0)


def test_scales_multiply_each_sft(mlm, language_sft, task_sft):
    theta0 = snapshot(mlm)
    with composed(mlm, [language_sft, task_sft], [0.5, -2.0]):
        after = canonical_state_dict(mlm)
        for name, base in theta0.items():
            lang = dense_of(language_sft.deltas.get(name), base)
            task = dense_of(task_sft.deltas.get(name), base)
            assert torch.equal(after[name], base + lang * 0.5 + task * -2.0), name
    with composed(mlm, [language_sft, task_sft], 0.0):
        assert_state_bits(mlm, theta0)
    with pytest.raises(ConfigError, match="2 SFTs"):
        apply(mlm, [language_sft, task_sft], [1.0])


def test_tied_embedding_changes_once(mlm):
    assert mlm.lm_head.decoder.weight is mlm.roberta.embeddings.word_embeddings.weight
    names = [name for name, _ in mlm.named_parameters()]
    assert "lm_head.decoder.weight" in names and "roberta.embeddings.word_embeddings.weight" not in names
    delta = random_delta(tuple(mlm.roberta.embeddings.word_embeddings.weight.shape), 0.2, seed=3)
    before = mlm.roberta.embeddings.word_embeddings.weight.detach().clone()
    for listed_as in (EMB, "lm_head.decoder.weight", "roberta." + EMB):
        with composed(mlm, SFT(deltas={listed_as: delta})):
            after = mlm.roberta.embeddings.word_embeddings.weight.detach()
            assert torch.equal(after, before + delta.to_dense()), listed_as  # θ + δ ...
            assert not torch.equal(after, before + 2 * delta.to_dense())  # ... not θ + 2δ
            assert torch.equal(mlm.lm_head.decoder.weight, mlm.roberta.embeddings.word_embeddings.weight)
    with pytest.raises(FormatError, match="tied"):
        apply(mlm, SFT(deltas={EMB: delta, "lm_head.decoder.weight": delta}))
    assert torch.equal(mlm.roberta.embeddings.word_embeddings.weight, before)


def test_mlm_trained_delta_onto_classifier_skips_head(mlm, language_sft, caplog):
    assert any(name.startswith("lm_head.") for name in language_sft.deltas)
    clf = classifier_on(mlm)
    theta0 = snapshot(clf)
    with caplog.at_level(logging.INFO, logger="sftkit"):
        composition = apply(clf, language_sft)
    notices = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0] and "lm_head." in notices[0]
    assert sorted(composition.skipped) == sorted(n for n in language_sft.deltas if n.startswith("lm_head."))
    after = canonical_state_dict(clf)
    assert torch.equal(after[QUERY], theta0[QUERY] + language_sft[QUERY].to_dense())
    composition.revert()
    assert_state_bits(clf, theta0)
    with pytest.raises(MissingParameterError, match="lm_head"):
        apply(clf, language_sft, strict=True)
    assert_state_bits(clf, theta0)


def test_base_fingerprint_mismatch_is_refused_unless_forced(mlm, language_sft, caplog):
    other = tiny_masked_lm(seed=5)
    theta0 = snapshot(other)
    with pytest.raises(BaseMismatchError, match="force"):
        apply(other, language_sft)
    assert_state_bits(other, theta0)
    with caplog.at_level(logging.WARNING, logger="sftkit"):
        with composed(other, language_sft, force=True):
            assert not torch.equal(canonical_state_dict(other)[QUERY], theta0[QUERY])
    assert any("mismatch" in r.getMessage() for r in caplog.records)
    assert_state_bits(other, theta0)


def test_stacked_compositions_keep_the_base_identity(mlm, language_sft, task_sft):
    theta0 = snapshot(mlm)
    first = apply(mlm, language_sft)
    assert (
        describe_base(mlm).fingerprint != task_sft.metadata.base.fingerprint
    )  # the model no longer looks like θ0
    second = apply(mlm, task_sft)  # ...but it was θ0 when first composed, so the task SFT is accepted
    with pytest.raises(ConfigError, match="reverse order"):
        first.revert()
    second.revert()
    first.revert()
    assert_state_bits(mlm, theta0)
    with torch.no_grad():  # once fully reverted the record is gone: a really changed base is refused
        mlm.roberta.embeddings.word_embeddings.weight.view(-1)[0] += 1.0
    with pytest.raises(BaseMismatchError):
        apply(mlm, task_sft)


def test_dense_head_replaces_and_is_restored(mlm):
    clf = classifier_on(mlm)
    head = {name: torch.randn_like(p) for name, p in clf.classifier.named_parameters()}
    task = SFT(
        deltas={
            QUERY: random_delta(tuple(clf.roberta.encoder.layer[0].attention.self.query.weight.shape), 0.1, 4)
        },
        dense={f"classifier.{name}": value for name, value in head.items()},
        metadata=SFTMetadata(kind="task", base=describe_base(mlm)),
    )
    theta0 = snapshot(clf)
    with composed(clf, task):
        for name, value in head.items():
            assert torch.equal(clf.get_parameter(f"classifier.{name}"), value)
    assert_state_bits(clf, theta0)


def test_later_dense_wins_and_discards_earlier_sparse(mlm):
    clf = classifier_on(mlm)
    name = "classifier.dense.weight"
    shape = tuple(clf.get_parameter(name).shape)
    first, second = torch.randn(shape), torch.randn(shape)
    sparse = random_delta(shape, 0.3, seed=5)
    with composed(clf, [SFT(dense={name: first}), SFT(dense={name: second})]):
        assert torch.equal(clf.get_parameter(name), second)
    with composed(clf, [SFT(deltas={name: sparse}), SFT(dense={name: second})]):
        assert torch.equal(clf.get_parameter(name), second)
    with composed(clf, [SFT(dense={name: second}), SFT(deltas={name: sparse})], [1.0, 2.0]):
        assert torch.equal(clf.get_parameter(name), second + 2.0 * sparse.to_dense())


def test_shape_mismatch_names_the_parameter(mlm):
    bad = SFT(deltas={QUERY: random_delta((8, 8), 0.5, seed=6)})
    with pytest.raises(FormatError, match=QUERY):
        apply(mlm, bad)
    with pytest.raises(FormatError, match="classifier.dense.weight"):
        apply(classifier_on(mlm), SFT(dense={"classifier.dense.weight": torch.zeros(3, 3)}))


def test_out_of_range_index_is_refused(mlm):
    shape = tuple(mlm.get_parameter("roberta." + QUERY).shape)
    bad = SparseDelta(shape, torch.tensor([0, shape[0] * shape[1]]), torch.ones(2))
    with pytest.raises(FormatError, match="out of range"):
        apply(mlm, SFT(deltas={QUERY: bad}))


def test_prepared_composition_is_reusable(mlm, language_sft, task_sft):
    theta0 = snapshot(mlm)
    prepared = prepare(mlm, [language_sft, task_sft], [1.0, 0.5])
    with composed(mlm, [language_sft, task_sft], [1.0, 0.5]):
        reference = snapshot(mlm)
    for _ in range(3):
        composition = apply(mlm, prepared)
        assert_state_bits(mlm, reference)
        composition.revert()
        assert_state_bits(mlm, theta0)
    with pytest.raises(ConfigError, match="different model"):
        apply(copy.deepcopy(mlm), prepared)
    with pytest.raises(ConfigError, match="prepare"):
        apply(mlm, prepared, [2.0, 2.0])


def test_failure_midway_leaves_the_model_untouched(mlm, language_sft):
    theta0 = snapshot(mlm)
    prepared = prepare(mlm, language_sft)
    last = prepared.parameters[-1]
    last.indices, last.values = torch.tensor([10**9]), torch.ones(1)  # fails after the others were applied
    with pytest.raises((IndexError, RuntimeError)):
        apply(mlm, prepared)
    assert_state_bits(mlm, theta0)


def test_non_revertible_apply_cannot_be_reverted(mlm, language_sft):
    theta0 = snapshot(mlm)
    composition = apply(mlm, language_sft, revertible=False)
    assert not torch.equal(canonical_state_dict(mlm)[QUERY], theta0[QUERY])
    with pytest.raises(ConfigError, match="revertible=False"):
        composition.revert()


def test_apply_to_state_dict_with_full_and_canonical_names(mlm, language_sft, task_sft):
    canonical = {n: t.clone() for n, t in canonical_state_dict(mlm).items()}
    full = mlm.state_dict()
    with composed(mlm, [language_sft, task_sft]):
        reference = snapshot(mlm)
    out = apply_to_state_dict(canonical, [language_sft, task_sft])
    for name, tensor in reference.items():
        assert torch.equal(out[name], tensor), name
    assert torch.equal(canonical[QUERY], snapshot(mlm)[QUERY])  # input untouched by default

    full_out = apply_to_state_dict(full, [language_sft, task_sft])
    assert torch.equal(full_out["roberta." + QUERY], reference[QUERY])
    assert torch.equal(full_out["roberta." + EMB], reference[EMB])
    assert torch.equal(full_out["lm_head.decoder.weight"], reference[EMB])  # tied key shares the one result

    # An untied copy under an alias name gets the composed value too when the aliases are given.
    untied = {n: t.clone() for n, t in full.items()}
    inplace = apply_to_state_dict(untied, language_sft, inplace=True, aliases=alias_map(mlm))
    with composed(mlm, language_sft):
        lang_reference = snapshot(mlm)
    assert inplace["lm_head.decoder.weight"] is untied["lm_head.decoder.weight"]
    assert torch.equal(untied["lm_head.decoder.weight"], lang_reference[EMB])
    assert torch.equal(untied["roberta." + EMB], lang_reference[EMB])


def test_state_dict_base_check(mlm, language_sft):
    state = {n: t.clone() for n, t in canonical_state_dict(tiny_masked_lm(seed=5)).items()}
    with pytest.raises(BaseMismatchError):
        apply_to_state_dict(state, language_sft, base_info=describe_base(tiny_masked_lm(seed=5)))


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from([(7,), (5, 6), (3, 4, 2)]),
    densities=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3),
    scales=st.lists(st.sampled_from([1.0, 0.5, -1.25, 3.0]), min_size=3, max_size=3),
    seed=st.integers(0, 10_000),
)
def test_fused_apply_matches_sequential_dense_adds(shape, densities, scales, seed):
    param = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))
    model = nn.Module()
    model.weight = param
    before = param.detach().clone()
    sfts = [SFT(deltas={"weight": random_delta(shape, d, seed + i + 1)}) for i, d in enumerate(densities)]
    use = scales[: len(sfts)]
    expected = before.clone()
    for sft, scale in zip(sfts, use, strict=True):
        expected = expected + sft["weight"].to_dense() * scale
    composition = apply(model, sfts, use)
    assert torch.equal(param.detach(), expected)
    composition.revert()
    assert same_bits(param.detach(), before)


# ---- low precision -------------------------------------------------------------------------------


def test_bf16_stored_values_apply_in_float32(mlm):
    param = mlm.get_parameter("roberta." + QUERY)
    delta = random_delta(tuple(param.shape), 0.3, seed=13, dtype=torch.bfloat16)
    before = param.detach().clone()
    with composed(mlm, SFT(deltas={QUERY: delta}), 0.5):
        assert param.dtype == torch.float32
        assert torch.equal(param.detach(), before + delta.to_dense() * 0.5)


def test_bf16_apply_revert_is_bit_exact(mlm, language_sft, task_sft):
    model = copy.deepcopy(mlm).to(torch.bfloat16)
    theta0 = snapshot(model)
    composition = apply(model, [language_sft, task_sft], [1.0, 0.3])
    assert not torch.equal(canonical_state_dict(model)[QUERY], theta0[QUERY])
    composition.revert()
    assert_state_bits(model, theta0)


def test_bf16_two_deltas_round_once_like_their_float32_sum(mlm):
    model = copy.deepcopy(mlm).to(torch.bfloat16)
    shape = tuple(model.get_parameter("roberta." + QUERY).shape)
    a, b = random_delta(shape, 0.6, seed=11), random_delta(shape, 0.6, seed=12, dtype=torch.bfloat16)
    both = a.to_dense() + b.to_dense()  # the float32 sum
    union = (a.to_dense() != 0) | (b.to_dense() != 0)
    summed = SparseDelta.from_dense(both, mask=union)
    with composed(model, [SFT(deltas={QUERY: a}), SFT(deltas={QUERY: b})]):
        fused = model.get_parameter("roberta." + QUERY).detach().clone()
    with composed(model, SFT(deltas={QUERY: summed})):
        once = model.get_parameter("roberta." + QUERY).detach().clone()
    base = model.get_parameter("roberta." + QUERY).detach()
    assert same_bits(fused, once)
    assert same_bits(fused, (base.float() + both).to(torch.bfloat16))
    # applying them one after another rounds twice and differs somewhere: the fused path is not that
    with composed(model, SFT(deltas={QUERY: a})), composed(model, SFT(deltas={QUERY: b})):
        twice = model.get_parameter("roberta." + QUERY).detach().clone()
    assert not torch.equal(twice, fused)


def test_bf16_merged_logits_track_float32_reference(mlm, language_sft, task_sft):
    ids = torch.randint(3, 120, (2, 12), generator=torch.Generator().manual_seed(0))
    low = copy.deepcopy(mlm).to(torch.bfloat16)
    with composed(mlm, [language_sft, task_sft]), torch.no_grad():
        reference = mlm(input_ids=ids).logits
    with composed(low, [language_sft, task_sft]), torch.no_grad():
        merged = low(input_ids=ids).logits.float()
    unmerged = mlm(input_ids=ids).logits
    error = (merged - reference).abs().max()
    assert error < 0.05 * reference.abs().max()  # bf16 has ~3 significant digits
    assert (merged - unmerged).abs().max() > error  # and the composition still changes the output


# ---- accelerator --------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_compose_matches_cpu(mlm, language_sft, task_sft):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    gpu = copy.deepcopy(mlm).to("cuda")
    theta0 = {n: t.cpu() for n, t in canonical_state_dict(gpu).items()}
    with composed(mlm, [language_sft, task_sft], [1.0, 0.5]):
        cpu_result = snapshot(mlm)
    with composed(gpu, [language_sft, task_sft], [1.0, 0.5]):
        for name, tensor in canonical_state_dict(gpu).items():
            # overlapping float32 entries may be summed in another order by CUDA atomics: last-bit slack
            torch.testing.assert_close(tensor.cpu(), cpu_result[name], rtol=1e-6, atol=1e-7)
    for name, tensor in canonical_state_dict(gpu).items():
        assert same_bits(tensor.cpu(), theta0[name]), name
    low_cpu, low_gpu = copy.deepcopy(mlm).to(torch.bfloat16), copy.deepcopy(mlm).to("cuda", torch.bfloat16)
    with composed(low_cpu, [language_sft, task_sft]), composed(low_gpu, [language_sft, task_sft]):
        for name, tensor in canonical_state_dict(low_gpu).items():
            assert same_bits(tensor.cpu(), canonical_state_dict(low_cpu)[name]), name

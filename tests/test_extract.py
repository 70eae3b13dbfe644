from __future__ import annotations

import pytest
import torch
from torch import nn

from sftkit.delta import SFT
from sftkit.denoising import DenoiseConfig, denoise
from sftkit.errors import ConfigError
from sftkit.extraction import extract, select_mask, topk_mask
from sftkit.fingerprints import describe_base
from sftkit.metadata import BaseModelInfo, SFTMetadata
from sftkit.naming import canonical_parameters, canonical_state_dict
from sftkit.testing import perturbed_copy, tiny_classifier

EMB = "embeddings.word_embeddings.weight"


def deltas_of(base: torch.nn.Module, finetuned: torch.nn.Module) -> dict[str, torch.Tensor]:
    b, f = canonical_state_dict(base), canonical_state_dict(finetuned)
    return {n: f[n].float() - b[n].float() for n in f if n in b}


def assert_is_global_top_k(sft: SFT, deltas: dict[str, torch.Tensor]) -> None:
    kept, dropped = [], []
    for name, d in deltas.items():
        keep = torch.zeros(d.numel(), dtype=torch.bool)
        if name in sft.deltas:
            keep[sft[name].indices] = True
        kept.append(d.reshape(-1)[keep].abs())
        dropped.append(d.reshape(-1)[~keep].abs())
    assert float(torch.cat(kept).min()) >= float(torch.cat(dropped).max())


def test_extract_exact_k_original_values(mlm: nn.Module, finetuned_mlm: nn.Module) -> None:
    deltas = deltas_of(mlm, finetuned_mlm)
    eligible = sum(d.numel() for d in deltas.values())
    sft = extract(mlm, finetuned_mlm, num_params=500)
    sft.validate()
    assert sft.nnz == 500 and not sft.dense
    assert_is_global_top_k(sft, deltas)
    for name, d in sft.deltas.items():
        assert torch.equal(d.values, deltas[name].reshape(-1)[d.indices])
    assert extract(mlm, finetuned_mlm, density=0.02).nnz == round(0.02 * eligible)
    meta = sft.metadata
    assert meta.method == "extract"
    assert meta.hyperparameters["num_params"] == 500 and meta.hyperparameters["eligible_params"] == eligible
    assert meta.base.fingerprint == describe_base(mlm).fingerprint


def test_extract_reproduces_finetuned_on_mask(mlm: nn.Module, finetuned_mlm: nn.Module) -> None:
    sft = extract(mlm, finetuned_mlm, density=0.05)
    base, tuned = canonical_state_dict(mlm), canonical_state_dict(finetuned_mlm)
    for name, d in sft.deltas.items():
        rebuilt = base[name].reshape(-1)[d.indices] + d.values
        torch.testing.assert_close(rebuilt, tuned[name].reshape(-1)[d.indices], atol=1e-7, rtol=1e-6)


def test_tied_embedding_counted_once(mlm: nn.Module, finetuned_mlm: nn.Module) -> None:
    params = canonical_parameters(mlm)
    eligible = sum(p.parameter.numel() for p in params.values())
    assert eligible < sum(p.numel() for _, p in mlm.named_parameters(remove_duplicate=False))
    sft = extract(mlm, finetuned_mlm, num_params=eligible)
    assert sft.nnz == eligible
    assert EMB in sft.deltas and "lm_head.decoder.weight" not in sft.deltas
    with pytest.raises(ConfigError, match="exceeds"):
        extract(mlm, finetuned_mlm, num_params=eligible + 1)


def test_classifier_head_stored_dense(mlm: nn.Module) -> None:
    classifier = perturbed_copy(tiny_classifier(seed=0), seed=2)
    sft = extract(mlm, classifier, num_params=300)
    heads = {n for n in canonical_parameters(classifier) if n.startswith("classifier.")}
    assert set(sft.dense) == heads
    tuned = canonical_state_dict(classifier)
    assert all(torch.equal(sft.dense[n], tuned[n]) for n in heads)
    assert sft.nnz == 300 and not any(n.startswith("lm_head.") for n in sft.deltas)
    sft.validate()


def test_values_original_versus_denoised(mlm: nn.Module, finetuned_mlm: nn.Module) -> None:
    config = DenoiseConfig(rank=2)
    original = extract(mlm, finetuned_mlm, num_params=400, denoise=config)
    denoised = extract(mlm, finetuned_mlm, num_params=400, denoise=config, values="denoised")
    deltas = deltas_of(mlm, finetuned_mlm)
    clean = denoise(deltas, config)
    assert original.metadata.method == "deft-x-extract"
    assert original.metadata.hyperparameters["denoise"]["rank"] == 2
    differs = False
    for name, d in original.deltas.items():
        assert torch.equal(d.indices, denoised[name].indices)  # the same mask either way
        assert torch.equal(d.values, deltas[name].reshape(-1)[d.indices])
        assert torch.equal(denoised[name].values, clean[name].reshape(-1)[d.indices])
        differs = differs or not torch.equal(d.values, denoised[name].values)
    assert differs
    assert_is_global_top_k(original, clean)
    plain = extract(mlm, finetuned_mlm, num_params=400)
    assert plain.deltas.keys() != original.deltas.keys() or any(
        not torch.equal(plain[n].indices, original[n].indices) for n in plain.deltas
    )
    with pytest.raises(ConfigError):
        extract(mlm, finetuned_mlm, num_params=400, values="denoised")


def test_include_exclude_and_dense_patterns(mlm: nn.Module, finetuned_mlm: nn.Module) -> None:
    sft = extract(mlm, finetuned_mlm, density=0.1, include="encoder.*", exclude=["*.bias", "*LayerNorm*"])
    assert sft.deltas and all(n.startswith("encoder.") and n.endswith(".weight") and "LayerNorm" not in n for n in sft.deltas)
    with_dense = extract(mlm, finetuned_mlm, num_params=50, dense=["lm_head.dense.*"])
    assert set(with_dense.dense) == {"lm_head.dense.weight", "lm_head.dense.bias"}
    assert not any(n.startswith("lm_head.dense.") for n in with_dense.deltas)
    assert with_dense.metadata.hyperparameters["dense"] == ["lm_head.dense.*"]


def test_state_dicts_and_errors(mlm: nn.Module, finetuned_mlm: nn.Module) -> None:
    base, tuned = canonical_state_dict(mlm), canonical_state_dict(finetuned_mlm)
    from_models = extract(mlm, finetuned_mlm, num_params=100)
    from_states = extract(base, tuned, num_params=100)
    assert from_models.deltas.keys() == from_states.deltas.keys()
    assert all(torch.equal(from_models[n].indices, from_states[n].indices) for n in from_models.deltas)
    bad = dict(tuned)
    bad["encoder.layer.0.output.dense.weight"] = torch.zeros(3, 3)
    with pytest.raises(ConfigError, match=r"encoder\.layer\.0\.output\.dense\.weight"):
        extract(base, bad, num_params=10)
    for kwargs in ({}, {"num_params": 1, "density": 0.1}, {"density": 0.0}, {"num_params": -3}, {"num_params": 5, "values": "x"}):
        with pytest.raises(ConfigError):
            extract(base, tuned, **kwargs)  # type: ignore[arg-type]
    meta = SFTMetadata(kind="language", language="hau", base=BaseModelInfo(name="xlm-roberta-base", revision="abc"),
                       hyperparameters={"steps": 10})
    sft = extract(mlm, finetuned_mlm, num_params=10, metadata=meta)
    assert (sft.metadata.kind, sft.metadata.language, sft.metadata.base.name, sft.metadata.base.revision) == (
        "language", "hau", "xlm-roberta-base", "abc")
    assert sft.metadata.hyperparameters["steps"] == 10 and sft.metadata.base.fingerprint
    assert meta.method is None  # the given metadata is copied, not changed


def test_topk_mask_and_select_mask() -> None:
    scores = {"a": torch.tensor([[0.1, -5.0], [3.0, 0.0]]), "b": torch.tensor([4.0, -0.2, 2.0])}
    mask = topk_mask(scores, 3)
    assert {n: i.tolist() for n, i in mask.items()} == {"a": [1, 2], "b": [0]}
    assert mask.shapes == {"a": (2, 2), "b": (3,)} and mask.nnz == 3
    assert mask.to_dense("a").tolist() == [[False, True], [True, False]]
    assert topk_mask(scores, 0).nnz == 0 and topk_mask(scores, 7).nnz == 7
    with pytest.raises(ConfigError):
        topk_mask(scores, 8)
    assert {n: i.tolist() for n, i in select_mask(scores, 3).items()} == {n: i.tolist() for n, i in mask.items()}

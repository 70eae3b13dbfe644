"""Import of composable-sft ``pytorch_diff.bin`` files (column-major, delta-coded, pickled)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sftkit import SFT, FormatError, SFTMetadata
from sftkit.fingerprints import describe_base
from sftkit.format import load_file, save_file
from sftkit.interop.composable_sft import import_pytorch_diff
from sftkit.naming import canonical_parameters
from sftkit.testing import tiny_classifier, tiny_masked_lm


def composable_encode(dense_delta: torch.Tensor) -> dict[str, object]:
    """composable-sft's own encoder, reproduced: column-major flat indices, delta-coded, first one a numpy int."""
    sparse = dense_delta.to_sparse().coalesce()
    multipliers = np.cumprod([1] + list(sparse.size())[:-1], dtype=np.int64)
    flat = multipliers @ sparse.indices().numpy().astype(np.int64)
    perm = np.argsort(flat, kind="stable")
    flat = flat[perm]
    steps: list[object] = (flat[1:] - flat[:-1]).tolist()
    if len(flat):
        steps = [flat[0]] + steps  # np.int64, exactly as composable-sft writes it
    return {"size": sparse.size(), "index_steps": steps, "values": sparse.values()[torch.from_numpy(perm)]}


def random_sparse_like(param: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(param.shape, generator=gen) < density
    return torch.randn(param.shape, generator=gen) * 0.1 * keep


def write_diff(path: Path, diffs: dict[str, torch.Tensor], abs_: dict[str, torch.Tensor] | None = None) -> Path:
    payload: dict[str, object] = {"diffs": {n: composable_encode(d) for n, d in diffs.items()}}
    if abs_ is not None:
        payload["abs"] = abs_
    torch.save(payload, path)
    return path


def apply_like_composable_sft(model: nn.Module, diffs: dict[str, torch.Tensor], abs_: dict[str, torch.Tensor]) -> None:
    """What composable-sft's ``SFT.apply`` does, on the original (file) names."""
    with torch.no_grad():
        for name, delta in diffs.items():
            model.get_parameter(name).add_(delta)
        for name, value in abs_.items():
            model.get_parameter(name).copy_(value)


def apply_manually(model: nn.Module, sft: SFT) -> None:
    params = {n: p.parameter for n, p in canonical_parameters(model).items()}
    with torch.no_grad():
        for name, delta in sft.deltas.items():
            params[name].add_(delta.to_dense())
        for name, value in sft.dense.items():
            params[name].copy_(value)


def mlm_diffs(model: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters(remove_duplicate=False))
    picks = [
        "roberta.encoder.layer.0.attention.self.query.weight",
        "roberta.encoder.layer.1.output.dense.weight",
        "roberta.embeddings.LayerNorm.bias",
        "roberta.embeddings.word_embeddings.weight",
        "lm_head.dense.weight",
    ]
    return {n: random_sparse_like(named[n], 0.1, seed=i) for i, n in enumerate(picks)}


def test_import_matches_row_major_delta_and_composes(tmp_path: Path) -> None:
    model = tiny_masked_lm()
    diffs = mlm_diffs(model)
    abs_ = {"lm_head.dense.bias": torch.randn(model.lm_head.dense.bias.shape)}
    path = write_diff(tmp_path / "pytorch_diff.bin", diffs, abs_)

    sft = import_pytorch_diff(path)

    assert set(sft.deltas) == {
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.1.output.dense.weight",
        "embeddings.LayerNorm.bias",
        "embeddings.word_embeddings.weight",
        "lm_head.dense.weight",
    }
    for file_name, dense in diffs.items():
        delta = sft.deltas[file_name.removeprefix("roberta.")]
        flat = dense.reshape(-1)
        expected = torch.nonzero(flat).reshape(-1)  # row-major positions
        assert delta.shape == tuple(dense.shape)
        assert torch.equal(delta.indices, expected)
        assert torch.equal(delta.values, flat[expected])
    assert torch.equal(sft.dense["lm_head.dense.bias"], abs_["lm_head.dense.bias"])

    expected_model = copy.deepcopy(model)
    apply_like_composable_sft(expected_model, diffs, abs_)
    composed = copy.deepcopy(model)
    apply_manually(composed, sft)
    for (name, got), (_, want) in zip(composed.state_dict().items(), expected_model.state_dict().items(), strict=True):
        assert torch.equal(got, want), name


def test_import_with_base_maps_tied_head_and_records_base(tmp_path: Path) -> None:
    model = tiny_masked_lm()
    decoder_delta = random_sparse_like(model.lm_head.decoder.weight, 0.05, seed=9)
    query = random_sparse_like(model.roberta.encoder.layer[0].attention.self.query.weight, 0.1, seed=10)
    path = write_diff(
        tmp_path / "pytorch_diff.bin",
        {"lm_head.decoder.weight": decoder_delta, "roberta.encoder.layer.0.attention.self.query.weight": query},
    )
    meta = SFTMetadata(kind="language", language="quy")

    sft = import_pytorch_diff(path, base=model, metadata=meta)

    assert set(sft.deltas) == {"embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"}
    assert sft.metadata.kind == "language" and sft.metadata.language == "quy"
    assert sft.metadata.method == "composable-sft-import"
    assert sft.metadata.base.fingerprint == describe_base(model).fingerprint
    assert sft.metadata.provenance["format"].startswith("composable-sft")
    assert len(sft.metadata.provenance["sha256"]) == 64
    assert meta.method is None  # the caller's metadata is not modified

    without_base = import_pytorch_diff(path)
    assert "lm_head.decoder.weight" in without_base.deltas
    mapped = import_pytorch_diff(path, name_map={"lm_head.decoder.weight": "embeddings.word_embeddings.weight"})
    assert set(mapped.deltas) == set(sft.deltas)

    composed = copy.deepcopy(model)
    apply_manually(composed, sft)
    assert torch.equal(composed.lm_head.decoder.weight, model.lm_head.decoder.weight + decoder_delta)


def test_import_from_directory_and_save_round_trip(tmp_path: Path) -> None:
    model = tiny_masked_lm()
    write_diff(tmp_path / "pytorch_diff.bin", mlm_diffs(model))
    sft = import_pytorch_diff(tmp_path)
    save_file(sft, tmp_path / "converted.safetensors")
    assert load_file(tmp_path / "converted.safetensors") == sft


def test_file_with_only_abs(tmp_path: Path) -> None:
    model = tiny_classifier(num_labels=3)
    head = {
        "classifier.out_proj.weight": torch.randn(model.classifier.out_proj.weight.shape),
        "classifier.out_proj.bias": torch.randn(3),
    }
    path = tmp_path / "pytorch_diff.bin"
    torch.save({"abs": head}, path)
    sft = import_pytorch_diff(path, base=model)
    assert len(sft.deltas) == 0 and set(sft.dense) == set(head)
    composed = copy.deepcopy(model)
    apply_manually(composed, sft)
    assert torch.equal(composed.classifier.out_proj.weight, head["classifier.out_proj.weight"])


def test_index_steps_as_tensor_and_fp16_values(tmp_path: Path) -> None:
    dense = torch.zeros(4, 5)
    dense[0, 1], dense[3, 0], dense[2, 4] = 1.0, 2.0, 3.0
    enc = composable_encode(dense)
    enc["index_steps"] = torch.tensor([int(s) for s in enc["index_steps"]])  # type: ignore[union-attr]
    enc["values"] = enc["values"].half()  # type: ignore[union-attr]
    torch.save({"diffs": {"bert.pooler.dense.weight": enc}}, tmp_path / "d.bin")
    delta = import_pytorch_diff(tmp_path / "d.bin")["pooler.dense.weight"]
    assert delta.indices.tolist() == [1, 14, 15]  # row-major (0,1), (2,4), (3,0)
    assert delta.values.dtype == torch.float16 and delta.values.tolist() == [1.0, 3.0, 2.0]


def test_earliest_coordinate_layout(tmp_path: Path) -> None:
    dense = torch.zeros(3, 4)
    dense[2, 1], dense[0, 3] = 5.0, -1.0
    sparse = dense.to_sparse().coalesce()
    legacy = {"roberta.x.weight": {"size": sparse.size(), "indices": sparse.indices().tolist(), "values": sparse.values().tolist()}}
    torch.save(legacy, tmp_path / "old.bin")
    delta = import_pytorch_diff(tmp_path / "old.bin")["x.weight"]
    assert delta.indices.tolist() == [3, 9] and delta.values.tolist() == [-1.0, 5.0]


def _bad(tmp_path: Path, payload: object) -> Path:
    path = tmp_path / "bad.bin"
    torch.save(payload, path)
    return path


def good_entry() -> dict[str, object]:
    return {"size": torch.Size([2, 3]), "index_steps": [1, 2], "values": torch.tensor([0.5, 0.25])}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2, 3], "expected a dict"),
        ({"weights": {}}, "no 'diffs' or 'abs'"),
        ({"diffs": {"w": {"size": torch.Size([2, 3]), "values": torch.ones(1)}}}, "neither 'index_steps'"),
        ({"diffs": {"w": {"index_steps": [0], "values": torch.ones(1)}}}, "'size'"),
        ({"diffs": {"w": {**good_entry(), "values": torch.ones(3)}}}, "2 indices but 3 values"),
        ({"diffs": {"w": {**good_entry(), "index_steps": [1, 5]}}}, "out of range"),
        ({"diffs": {"w": {**good_entry(), "index_steps": [3, 0]}}}, "increase strictly"),
        ({"diffs": {"w": {**good_entry(), "index_steps": [1.5, 2.0]}}}, "integers"),
        ({"diffs": {"w": good_entry()}, "abs": {"w": torch.ones(2, 3)}}, "both map to parameter 'w'"),
        ({"diffs": {"roberta.w": good_entry(), "bert.w": good_entry()}}, "both map"),
        ({"abs": {"head": [1.0, 2.0]}}, "expected a tensor"),
        ({"diffs": {"w": good_entry()}, "extra": 1}, "unexpected top-level key 'extra'"),
    ],
)
def test_malformed_files_are_rejected_with_one_line(tmp_path: Path, payload: object, message: str) -> None:
    path = _bad(tmp_path, payload)
    with pytest.raises(FormatError, match=message) as excinfo:
        import_pytorch_diff(path)
    assert "\n" not in str(excinfo.value) and str(path) in str(excinfo.value)


def test_shape_mismatch_with_base_is_rejected(tmp_path: Path) -> None:
    model = tiny_masked_lm()
    path = _bad(tmp_path, {"diffs": {"roberta.embeddings.LayerNorm.bias": good_entry()}})
    with pytest.raises(FormatError, match="size \\[2, 3\\] but the base parameter embeddings.LayerNorm.bias"):
        import_pytorch_diff(path, base=model)


class Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_arbitrary_pickles_are_never_executed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _bad(tmp_path, {"diffs": {}, "abs": {"x": Exploit()}})
    with pytest.raises(FormatError, match="not a loadable composable-sft file"):
        import_pytorch_diff(path)
    assert "must never run" not in capsys.readouterr().out
    (tmp_path / "garbage.bin").write_bytes(b"definitely not a pickle")
    with pytest.raises(FormatError, match="not a loadable"):
        import_pytorch_diff(tmp_path / "garbage.bin")
    with pytest.raises(FileNotFoundError):
        import_pytorch_diff(tmp_path / "missing.bin")


def test_files_pickled_under_numpy_1_paths_load(tmp_path: Path) -> None:
    """Hub files were written with numpy 1.x, whose int64 scalar pickles as ``numpy.core.multiarray.scalar``."""
    dense = torch.zeros(3, 3)
    dense[1, 2], dense[2, 0] = 4.0, 7.0
    buffer = tmp_path / "legacy.bin"
    torch.save({"diffs": {"w": composable_encode(dense)}}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in data  # protocol-2 GLOBAL: newline-terminated, no length field
    buffer.write_bytes(data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    delta = import_pytorch_diff(buffer)["w"]
    assert delta.indices.tolist() == [5, 6] and delta.values.tolist() == [4.0, 7.0]

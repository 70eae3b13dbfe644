"""The SFT container: round trips, metadata, lazy reads, atomic writes, and every corruption case."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkit import SFT, BaseModelInfo, ChecksumError, ConfigError, FormatError, SFTMetadata, SparseDelta
from sftkit.format import (
    ENCODINGS,
    container,
    encoded_nbytes,
    header_from_bytes,
    header_size,
    load_file,
    read_header,
    read_metadata,
    safe_open,
    save_file,
)
from sftkit.format.header import checksum_of

VALUE_BOUNDS = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def random_delta(shape: tuple[int, ...], density: float, seed: int) -> SparseDelta:
    gen = torch.Generator().manual_seed(seed)
    numel = int(torch.tensor(shape).prod()) if shape else 1
    nnz = int(round(density * numel))
    indices = torch.randperm(numel, generator=gen)[:nnz].sort().values
    values = torch.randn(nnz, generator=gen) * 0.01
    return SparseDelta(shape, indices, values)


def sample_sft() -> SFT:
    deltas = {
        "encoder.layer.0.attention.self.query.weight": random_delta((32, 32), 0.05, 1),
        "encoder.layer.0.output.dense.weight": random_delta((32, 64), 0.6, 2),
        "embeddings.LayerNorm.bias": random_delta((32,), 1.0, 3),  # fully dense
        "embeddings.LayerNorm.weight": SparseDelta.empty((32,)),  # empty
        "scalar.gate": random_delta((), 1.0, 4),  # 0-d
        "tiny.vector": random_delta((1,), 0.0, 5),
        "conv.like": random_delta((3, 4, 5), 0.3, 6),
    }
    gen = torch.Generator().manual_seed(7)
    dense = {
        "classifier.out_proj.weight": torch.randn(3, 32, generator=gen),
        "classifier.out_proj.bias": torch.randn(3, generator=gen),
        "classifier.temperature": torch.tensor(0.5),
        "classifier.bf16": torch.randn(2, 2, generator=gen).to(torch.bfloat16),
        "counter": torch.arange(4, dtype=torch.int64),
    }
    metadata = SFTMetadata(
        kind="task",
        language="quy",
        task="sentiment",
        method="lt-sft",
        hyperparameters={"num_params": 1234, "density": 0.05, "lr": 2e-5, "seeds": [1, 2]},
        base=BaseModelInfo(name="xlm-roberta-base", revision="abc123", fingerprint="sfp1-aa-bb", dtype="float32", sample=[0.5, -1.25]),
        label_names=["negative", "neutral", "positive"],
        provenance={"source": "unit test"},
    )
    return SFT(deltas, dense, metadata)


def assert_same_sft(loaded: SFT, original: SFT, value_dtype: torch.dtype | None = None) -> None:
    assert list(loaded.deltas) == list(original.deltas)
    for name, delta in original.deltas.items():
        got = loaded.deltas[name]
        assert got.shape == delta.shape
        assert torch.equal(got.indices, delta.indices)
        expected = delta.values if value_dtype is None else delta.values.to(value_dtype)
        assert got.values.dtype == expected.dtype
        assert torch.equal(got.values, expected)
    assert list(loaded.dense) == list(original.dense)
    for name, tensor in original.dense.items():
        assert loaded.dense[name].dtype == tensor.dtype
        assert torch.equal(loaded.dense[name], tensor)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("value_dtype", [None, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("encoding", ["auto", *ENCODINGS])
def test_roundtrip_every_encoding_and_value_dtype(tmp_path: Path, encoding: str, value_dtype: torch.dtype | None) -> None:
    sft = sample_sft()
    path = tmp_path / "sft.safetensors"
    save_file(sft, path, value_dtype=value_dtype, encoding=encoding)
    loaded = load_file(path)
    assert_same_sft(loaded, sft, value_dtype)
    assert loaded.metadata == sft.metadata
    with safe_open(path) as reader:
        infos = {i.name: i for i in reader.tensor_info()}
    for name, delta in sft.deltas.items():
        info = infos[name]
        assert info.kind == "sparse" and info.nnz == delta.nnz
        assert encoding == "auto" or info.encoding == encoding
        assert info.index_bytes == encoded_nbytes(info.encoding, delta.numel, delta.nnz)
        assert info.value_bytes == delta.nnz * (2 if value_dtype in (torch.bfloat16, torch.float16) else 4)


@pytest.mark.parametrize("value_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_values_stay_within_documented_relative_error(tmp_path: Path, value_dtype: torch.dtype) -> None:
    delta = SparseDelta((1000,), torch.arange(0, 1000, 3), torch.randn(334, generator=torch.Generator().manual_seed(0)) * 1e-3)
    save_file(SFT({"w": delta}), tmp_path / "x.safetensors", value_dtype=value_dtype)
    values = load_file(tmp_path / "x.safetensors")["w"].values.to(torch.float32)
    error = (values - delta.values).abs()
    # float16 is subnormal below 2**-14: there the bound is absolute (half its smallest step, 2**-25).
    allowed = torch.clamp(delta.values.abs() * VALUE_BOUNDS[value_dtype], min=2.0**-25 if value_dtype == torch.float16 else 0.0)
    assert bool((error <= allowed).all())
    assert error.max() > 0
    if value_dtype == torch.float16:
        normal = delta.values.abs() >= 2.0**-14
        assert bool((error[normal] <= delta.values[normal].abs() * 2.0**-11).all())


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 12), min_size=0, max_size=3).map(tuple),
    density=st.floats(0.0, 1.0),
    encoding=st.sampled_from(["auto", *ENCODINGS]),
    seed=st.integers(0, 1000),
)
def test_roundtrip_property(tmp_path_factory: pytest.TempPathFactory, shape: tuple[int, ...], density: float, encoding: str, seed: int) -> None:
    path = tmp_path_factory.mktemp("prop") / "p.safetensors"
    sft = SFT({"p": random_delta(shape, density, seed)}, {"d": torch.randn(shape)})
    save_file(sft, path, encoding=encoding)
    assert load_file(path) == sft


def test_sft_save_and_load_methods(tmp_path: Path) -> None:
    sft = sample_sft()
    sft.save(str(tmp_path / "m.safetensors"))
    assert SFT.load(str(tmp_path / "m.safetensors")) == sft


def test_views_and_shared_storage_are_saved(tmp_path: Path) -> None:
    big = torch.randn(10, 10)
    shared = torch.randn(5)
    sft = SFT({"v": SparseDelta((10,), torch.arange(0, 10, 2), big[1, ::2])}, {"a": shared, "b": shared, "c": big[2:4]})
    save_file(sft, tmp_path / "v.safetensors")
    assert load_file(tmp_path / "v.safetensors") == sft


# --- metadata and lazy reads ------------------------------------------------------------------


def test_read_metadata_and_header_from_bytes(tmp_path: Path) -> None:
    sft = sample_sft()
    path = tmp_path / "m.safetensors"
    save_file(sft, path)
    assert read_metadata(path) == sft.metadata
    data = path.read_bytes()
    needed = header_size(data[:8])
    header = header_from_bytes(data[:needed])
    assert header.metadata == sft.metadata
    assert header.format_version == "1.0"
    assert set(header.entries) == set(sft.deltas) | set(sft.dense)
    with pytest.raises(FormatError, match=f"first {needed} bytes"):
        header_from_bytes(data[: needed - 1])
    with pytest.raises(FormatError, match="8-byte"):
        header_size(data[:5])


def test_safe_open_is_lazy_and_complete(tmp_path: Path) -> None:
    sft = sample_sft()
    path = tmp_path / "l.safetensors"
    save_file(sft, path)
    with safe_open(path, verify=True) as reader:
        assert reader.metadata == sft.metadata
        assert reader.keys() == list(sft.deltas)
        assert reader.dense_keys() == list(sft.dense)
        delta = reader.get_delta("conv.like")
        assert torch.equal(delta.indices, sft["conv.like"].indices)
        assert torch.equal(reader.get_dense("classifier.out_proj.bias"), sft.dense["classifier.out_proj.bias"])
        with pytest.raises(KeyError):
            reader.get_delta("classifier.out_proj.bias")  # dense, not sparse
        with pytest.raises(KeyError):
            reader.get_dense("nope")
        info = {i.name: i for i in reader.tensor_info()}
    assert info["classifier.out_proj.weight"].kind == "dense"
    assert info["classifier.out_proj.weight"].value_bytes == 3 * 32 * 4
    assert info["embeddings.LayerNorm.bias"].index_bytes == 0  # full tensor: complement of nothing
    assert info["encoder.layer.0.attention.self.query.weight"].density == pytest.approx(0.05, abs=0.001)


# --- atomic writes and argument checks --------------------------------------------------------


def test_failed_write_leaves_no_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_write(tensors: Any, header: Any, path: str) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(container, "_write_safetensors", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_file(sample_sft(), tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.safetensors"
    save_file(sample_sft(), path)
    before = path.read_bytes()

    def broken_write(tensors: Any, header: Any, tmp: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(container, "_write_safetensors", broken_write)
    with pytest.raises(KeyboardInterrupt):
        save_file(SFT({"x": SparseDelta.empty((3,))}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_save_rejects_bad_input(tmp_path: Path) -> None:
    bad = SFT({"encoder.w": SparseDelta((10,), torch.tensor([3, 1]), torch.ones(2))})
    with pytest.raises(FormatError, match="encoder.w.*sorted"):
        save_file(bad, tmp_path / "b.safetensors")
    with pytest.raises(ConfigError, match="value_dtype"):
        save_file(sample_sft(), tmp_path / "b.safetensors", value_dtype=torch.float64)
    with pytest.raises(ConfigError, match="encoding"):
        save_file(sample_sft(), tmp_path / "b.safetensors", encoding="zip")
    with pytest.raises(FileNotFoundError):
        save_file(sample_sft(), tmp_path / "missing" / "b.safetensors")
    assert list(tmp_path.iterdir()) == []


# --- corruption -------------------------------------------------------------------------------


def saved(tmp_path: Path, encoding: str = "auto") -> Path:
    path = tmp_path / "c.safetensors"
    save_file(sample_sft(), path, encoding=encoding)
    return path


def rewrite(
    path: Path,
    edit_tensors: Any = None,
    edit_meta: Any = None,
    fix_checksum: bool = True,
) -> None:
    """Rewrite an SFT file with edited tensors/header fields (optionally with a valid checksum)."""
    with safetensors.safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        meta = dict(handle.metadata())
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    if fix_checksum:
        meta["checksum"] = checksum_of(meta["tensors"], [(k, container._raw_bytes(t)) for k, t in tensors.items()])
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


def edit_table(name: str, **changes: Any) -> Any:
    def edit(meta: dict[str, str]) -> None:
        table = json.loads(meta["tensors"])
        table[name].update(changes)
        meta["tensors"] = json.dumps(table)

    return edit


def one_line_error(excinfo: pytest.ExceptionInfo[BaseException], path: Path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_flipped_data_byte_fails_the_checksum(tmp_path: Path) -> None:
    path = saved(tmp_path)
    header = read_header(path)
    stored = header.tensors["dense/classifier.out_proj.weight"]
    data = bytearray(path.read_bytes())
    data[header.data_start + stored.begin + 5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as excinfo:
        load_file(path)
    assert "checksum" in one_line_error(excinfo, path)
    with pytest.raises(ChecksumError):
        safe_open(path).verify()
    # Without verification the flipped byte (a dense value) goes unnoticed: that is what the checksum is for.
    unverified = load_file(path, verify=False)
    assert not torch.equal(unverified.dense["classifier.out_proj.weight"], sample_sft().dense["classifier.out_proj.weight"])


def test_edited_table_fails_the_checksum(tmp_path: Path) -> None:
    path = saved(tmp_path)
    rewrite(path, edit_meta=edit_table("embeddings.LayerNorm.bias", shape=[4, 8]), fix_checksum=False)
    with pytest.raises(ChecksumError):
        load_file(path)


@pytest.mark.parametrize("keep", [0, 7, 100, -1])
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    path = saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(FormatError) as excinfo:
        load_file(path)
    message = one_line_error(excinfo, path)
    assert "truncated" in message or "not a safetensors file" in message or "shorter" in message
    with pytest.raises(FormatError):
        read_metadata(path)


def test_trailing_garbage(tmp_path: Path) -> None:
    path = saved(tmp_path)
    path.write_bytes(path.read_bytes() + b"xx")
    with pytest.raises(FormatError, match="longer than its header"):
        load_file(path)


@pytest.mark.parametrize("content", [b"", b"hello world, not a tensor file", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"])
def test_not_safetensors_at_all(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(FormatError) as excinfo:
        load_file(path)
    assert "safetensors" in one_line_error(excinfo, path)


def test_plain_safetensors_model_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(FormatError, match="not an sftkit SFT file"):
        load_file(path)


def test_unknown_format_version(tmp_path: Path) -> None:
    path = saved(tmp_path)
    rewrite(path, edit_meta=lambda m: m.update(format_version="2.0"))
    with pytest.raises(FormatError, match="unsupported SFT format version '2.0'"):
        load_file(path, verify=False)
    with pytest.raises(FormatError, match="version"):
        read_metadata(path)


def test_minor_version_bump_is_readable(tmp_path: Path) -> None:
    path = saved(tmp_path)
    rewrite(path, edit_meta=lambda m: m.update(format_version="1.7", future_field="x"))
    assert load_file(path) == sample_sft()


@pytest.mark.parametrize(
    ("name", "changes", "message"),
    [
        ("conv.like", {"encoding": "zstd"}, "unknown index encoding"),
        ("conv.like", {"nnz": 5}, "conv.like"),
        ("conv.like", {"value_dtype": "float64"}, "value_dtype"),
        ("conv.like", {"shape": [3, 4]}, "conv.like"),
        ("conv.like", {"kind": "lowrank"}, "kind"),
        ("classifier.out_proj.bias", {"dtype": "float16"}, "classifier.out_proj.bias"),
        ("classifier.out_proj.bias", {"shape": [4]}, "classifier.out_proj.bias"),
    ],
)
def test_inconsistent_table_is_rejected(tmp_path: Path, name: str, changes: dict[str, Any], message: str) -> None:
    path = saved(tmp_path)
    rewrite(path, edit_meta=edit_table(name, **changes))
    with pytest.raises(FormatError, match=message) as excinfo:
        load_file(path)
    one_line_error(excinfo, path)


def test_missing_and_extra_tensors(tmp_path: Path) -> None:
    path = saved(tmp_path)
    rewrite(path, edit_tensors=lambda t: t.pop("sparse/conv.like/values"))
    with pytest.raises(FormatError, match="conv.like.*missing"):
        load_file(path)
    path = saved(tmp_path)
    rewrite(path, edit_tensors=lambda t: t.update({"sneaky": torch.zeros(3)}))
    with pytest.raises(FormatError, match="sneaky.*not listed"):
        load_file(path)


def test_wrong_value_dtype_in_data(tmp_path: Path) -> None:
    path = saved(tmp_path)
    rewrite(path, edit_tensors=lambda t: t.update({"sparse/conv.like/values": t["sparse/conv.like/values"].double()}))
    with pytest.raises(FormatError, match="conv.like.*float64"):
        load_file(path)


def _coo_edit(index_list: list[int]) -> Any:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        payload = tensors["sparse/conv.like/indices"].clone()
        payload[: len(index_list)] = torch.tensor(index_list, dtype=payload.dtype)
        tensors["sparse/conv.like/indices"] = payload

    return edit


@pytest.mark.parametrize(
    ("indices", "message"), [([5, 3], "not sorted"), ([4, 4], "not sorted"), ([-2], "out of range")]
)
@pytest.mark.parametrize("fix_checksum", [True, False])
def test_bad_indices_are_caught_with_or_without_checksum(
    tmp_path: Path, indices: list[int], message: str, fix_checksum: bool
) -> None:
    path = saved(tmp_path, encoding="coo")
    rewrite(path, edit_tensors=_coo_edit(indices), fix_checksum=fix_checksum)
    with pytest.raises(FormatError, match=f"conv.like.*{message}") as excinfo:
        load_file(path, verify=False)
    one_line_error(excinfo, path)
    with pytest.raises(ChecksumError if not fix_checksum else FormatError):
        load_file(path)


def test_index_out_of_range_at_the_end(tmp_path: Path) -> None:
    path = saved(tmp_path, encoding="coo")

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        payload = tensors["sparse/conv.like/indices"].clone()
        payload[-1] = 60  # numel of (3, 4, 5)
        tensors["sparse/conv.like/indices"] = payload

    rewrite(path, edit_tensors=edit)
    with pytest.raises(FormatError, match="conv.like.*index 60 out of range"):
        load_file(path)


@pytest.mark.parametrize("encoding", ["bitmask", "elias-fano"])
def test_flipped_index_bit_is_caught_structurally(tmp_path: Path, encoding: str) -> None:
    path = saved(tmp_path, encoding=encoding)

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        payload = tensors["sparse/encoder.layer.0.attention.self.query.weight/indices"].clone()
        payload[-1] ^= 0x80  # last bit of the bitmask / of the EF high part: count or padding breaks
        tensors["sparse/encoder.layer.0.attention.self.query.weight/indices"] = payload

    rewrite(path, edit_tensors=edit)
    with pytest.raises(FormatError, match="query.weight"):
        load_file(path)


def test_header_length_field_lies(tmp_path: Path) -> None:
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    data[:8] = struct.pack("<Q", length - 3)
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="longer than its header says"):
        load_file(path)
    data[:8] = struct.pack("<Q", length + 3)
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="not a safetensors file"):
        load_file(path)


def test_float16_overflow_is_refused(tmp_path: Path) -> None:
    sft = SFT({"big": SparseDelta((3,), torch.tensor([0, 2]), torch.tensor([1.0, 1e5]))})
    with pytest.raises(ConfigError, match="big.*overflow float16"):
        save_file(sft, tmp_path / "o.safetensors", value_dtype=torch.float16)
    save_file(sft, tmp_path / "o.safetensors", value_dtype=torch.bfloat16)
    assert load_file(tmp_path / "o.safetensors")["big"].values[1].item() == pytest.approx(1e5, rel=2**-8)


def test_load_to_another_device(tmp_path: Path) -> None:
    path = saved(tmp_path)
    loaded = load_file(path, device="meta")  # exercises the device move without needing a GPU
    assert all(d.indices.device.type == "meta" and d.values.device.type == "meta" for d in loaded.deltas.values())
    assert all(t.device.type == "meta" for t in loaded.dense.values())
    assert loaded["conv.like"].shape == (3, 4, 5)

"""The SFT file header: parsing and validating it from bytes, and the checksum definition.

An SFT file is a safetensors file: an 8-byte little-endian header length ``N``, ``N`` bytes of JSON,
then the raw tensor data. Everything sftkit adds lives in the JSON's ``__metadata__`` (string values
only, as safetensors requires). Parsing needs nothing but those first ``8 + N`` bytes, so the registry
can read an SFT's metadata from a remote file with two small HTTP range requests
(:func:`header_size` on the first 8 bytes, then :func:`header_from_bytes`).

No file I/O here except :func:`read_header`; the layout is specified in ``docs/format.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from sftkit.errors import FormatError
from sftkit.format.encodings import ENCODINGS, expected_payload
from sftkit.metadata import SFTMetadata

FORMAT_NAME = "sftkit.sft"
FORMAT_VERSION = "1.0"
SUPPORTED_MAJOR = 1
CHECKSUM_ALGORITHM = "sha256"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit

SPARSE_PREFIX = "sparse/"
DENSE_PREFIX = "dense/"

# safetensors dtype codes <-> torch dtypes (those torch can hold).
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {d: str(d).removeprefix("torch.") for d in ST_DTYPES.values()}
VALUE_DTYPE_NAMES = ("float32", "bfloat16", "float16")


def index_key(name: str) -> str:
    return f"{SPARSE_PREFIX}{name}/indices"


def values_key(name: str) -> str:
    return f"{SPARSE_PREFIX}{name}/values"


def dense_key(name: str) -> str:
    return f"{DENSE_PREFIX}{name}"


def dtype_from_name(name: str) -> torch.dtype:
    for dtype, dname in DTYPE_NAMES.items():
        if dname == name:
            return dtype
    raise FormatError(f"unknown dtype {name!r}")


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as the safetensors header describes it (offsets relative to the data section)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class TableEntry:
    """One parameter in the ``tensors`` table of the header."""

    name: str
    kind: str
    """``sparse`` (indices + values that add) or ``dense`` (a tensor that replaces)."""
    shape: tuple[int, ...]
    nnz: int
    encoding: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    """Value dtype of a sparse entry; tensor dtype of a dense entry."""
    base_dtype: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    def to_json(self) -> dict[str, Any]:
        if self.kind == "dense":
            return {"kind": "dense", "shape": list(self.shape), "dtype": self.dtype}
        entry: dict[str, Any] = {
            "kind": "sparse",
            "shape": list(self.shape),
            "nnz": self.nnz,
            "encoding": self.encoding,
            "params": self.params,
            "value_dtype": self.dtype,
        }
        if self.base_dtype:
            entry["base_dtype"] = self.base_dtype
        return entry


@dataclass(frozen=True)
class SFTHeader:
    """Everything in an SFT file except the tensor data."""

    format_version: str
    metadata: SFTMetadata
    entries: dict[str, TableEntry]
    checksum: str
    table_json: str
    """The ``tensors`` string exactly as stored: the checksum covers these bytes."""
    tensors: dict[str, StoredTensor]
    data_start: int
    """Byte offset of the data section in the file (``8 + N``)."""
    writer_version: str | None = None

    @property
    def data_length(self) -> int:
        return max((t.end for t in self.tensors.values()), default=0)

    @property
    def file_size(self) -> int:
        return self.data_start + self.data_length


def header_size(prefix: bytes) -> int:
    """Total bytes (``8 + N``) needed to parse the header, from at least the first 8 bytes of a file."""
    if len(prefix) < 8:
        raise FormatError(f"not a safetensors file: {len(prefix)} bytes is shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length < 2 or length > MAX_HEADER_BYTES:
        raise FormatError(f"not a safetensors file: header length {length} is implausible")
    return 8 + length


def header_from_bytes(data: bytes) -> SFTHeader:
    """Parse and validate an SFT header from the first ``header_size(data)`` bytes of a file."""
    total = header_size(data)
    if len(data) < total:
        raise FormatError(f"header is incomplete: need the first {total} bytes, got {len(data)}")
    try:
        raw = json.loads(data[8:total].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not a safetensors file: header is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise FormatError("not a safetensors file: header is not a JSON object")
    meta = raw.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise FormatError("not a safetensors file: __metadata__ is not an object")
    tensors = {key: _stored_tensor(key, info) for key, info in raw.items()}
    _check_data_layout(tensors)
    return _sft_header(meta, tensors, total)


def read_header(path: str | os.PathLike[str]) -> SFTHeader:
    """Read and validate the header of the SFT file at ``path`` (and that the file is not truncated)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        total = header_size(prefix)
        if size < total:
            raise FormatError(f"file is truncated: header needs {total} bytes but the file has {size}")
        header = header_from_bytes(prefix + handle.read(total - 8))
    if size != header.file_size:
        what = "truncated" if size < header.file_size else "longer than its header says"
        raise FormatError(f"file is {what}: expected {header.file_size} bytes, found {size}")
    return header


def _stored_tensor(key: str, info: Any) -> StoredTensor:
    if not isinstance(info, dict):
        raise FormatError(f"not a safetensors file: entry {key!r} is not an object")
    dtype = ST_DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if dtype is None:
        raise FormatError(f"tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
    if not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:
        raise FormatError(f"not a safetensors file: tensor {key!r} has a malformed shape or data_offsets")
    begin, end = offsets
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if begin < 0 or end - begin != nbytes:
        raise FormatError(f"tensor {key!r}: data_offsets {offsets} do not match {nbytes} bytes for shape {shape}")
    return StoredTensor(dtype, tuple(shape), begin, end)


def _check_data_layout(tensors: dict[str, StoredTensor]) -> None:
    """Tensors must tile the data section without gaps or overlaps, as safetensors requires."""
    position = 0
    for key, tensor in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if tensor.begin != position:
            raise FormatError(f"not a valid safetensors file: tensor {key!r} does not start where the previous ends")
        position = tensor.end


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _sft_header(meta: dict[str, Any], tensors: dict[str, StoredTensor], data_start: int) -> SFTHeader:
    fmt = meta.get("format")
    if fmt != FORMAT_NAME:
        raise FormatError(
            f"not an sftkit SFT file (format={fmt!r}); for a full model use `sftkit extract`, "
            "for a composable-sft pytorch_diff.bin use `sftkit convert`"
        )
    version = meta.get("format_version")
    major = str(version).split(".", 1)[0]
    if not major.isdigit() or int(major) != SUPPORTED_MAJOR:
        raise FormatError(
            f"unsupported SFT format version {version!r}; this sftkit reads {SUPPORTED_MAJOR}.x, upgrade sftkit"
        )
    checksum = meta.get("checksum")
    if not isinstance(checksum, str) or not checksum.startswith(f"{CHECKSUM_ALGORITHM}:"):
        raise FormatError(f"header has no {CHECKSUM_ALGORITHM} checksum (got {checksum!r})")
    metadata = SFTMetadata.from_dict(_json_field(meta, "metadata"))
    table_json = meta.get("tensors")
    table = _json_field(meta, "tensors")
    if not isinstance(table, dict):
        raise FormatError("header field 'tensors' must be a JSON object")
    entries = {name: _table_entry(name, raw, tensors) for name, raw in table.items()}
    referenced = {k for e in entries.values() for k in _keys_of(e)}
    extra = sorted(set(tensors) - referenced)
    if extra:
        raise FormatError(f"tensor {extra[0]!r} is stored but not listed in the header's tensors table")
    return SFTHeader(
        format_version=str(version),
        metadata=metadata,
        entries=entries,
        checksum=checksum,
        table_json=str(table_json),
        tensors=tensors,
        data_start=data_start,
        writer_version=meta.get("sftkit_version"),
    )


def _json_field(meta: dict[str, Any], key: str) -> Any:
    text = meta.get(key)
    if not isinstance(text, str):
        raise FormatError(f"header field {key!r} is missing")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise FormatError(f"header field {key!r} is not valid JSON") from None


def _keys_of(entry: TableEntry) -> tuple[str, ...]:
    if entry.kind == "dense":
        return (dense_key(entry.name),)
    return (index_key(entry.name), values_key(entry.name))


def _table_entry(name: str, raw: Any, tensors: dict[str, StoredTensor]) -> TableEntry:
    if not isinstance(raw, dict):
        raise FormatError(f"tensors table entry {name!r} is not an object")
    kind, shape = raw.get("kind"), raw.get("shape")
    if not _int_list(shape):
        raise FormatError(f"{name}: shape must be a list of non-negative integers, got {shape!r}")
    shape = tuple(shape)
    if kind == "dense":
        dtype_name = str(raw.get("dtype"))
        if dtype_name not in DTYPE_NAMES.values():
            raise FormatError(f"{name}: unknown dense dtype {dtype_name!r}")
        _expect_stored(tensors, dense_key(name), (dtype_from_name(dtype_name),), shape, name)
        return TableEntry(name, "dense", shape, math.prod(shape), dtype=dtype_name)
    if kind != "sparse":
        raise FormatError(f"{name}: kind must be 'sparse' or 'dense', got {kind!r}")
    nnz, encoding, params = raw.get("nnz"), raw.get("encoding"), raw.get("params", {})
    value_dtype, base_dtype = raw.get("value_dtype"), raw.get("base_dtype")
    numel = math.prod(shape)
    if not isinstance(nnz, int) or isinstance(nnz, bool) or not 0 <= nnz <= numel:
        raise FormatError(f"{name}: nnz must be an integer in [0, {numel}], got {nnz!r}")
    if encoding not in ENCODINGS:
        raise FormatError(f"{name}: unknown index encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    if not isinstance(params, dict):
        raise FormatError(f"{name}: params must be a JSON object")
    if value_dtype not in VALUE_DTYPE_NAMES:
        raise FormatError(f"{name}: value_dtype must be one of {', '.join(VALUE_DTYPE_NAMES)}, got {value_dtype!r}")
    try:
        payload_dtypes, payload_len = expected_payload(encoding, numel, nnz, params)
    except FormatError as exc:
        raise FormatError(f"{name}: {exc}") from None
    _expect_stored(tensors, index_key(name), payload_dtypes, (payload_len,), name)
    _expect_stored(tensors, values_key(name), (dtype_from_name(value_dtype),), (nnz,), name)
    return TableEntry(
        name, "sparse", shape, nnz, encoding, params, value_dtype, base_dtype if isinstance(base_dtype, str) else None
    )


def _expect_stored(
    tensors: dict[str, StoredTensor], key: str, dtypes: tuple[torch.dtype, ...], shape: tuple[int, ...], name: str
) -> None:
    stored = tensors.get(key)
    if stored is None:
        raise FormatError(f"{name}: tensor {key!r} is missing from the file")
    if stored.dtype not in dtypes or stored.shape != shape:
        want = "/".join(DTYPE_NAMES[d] for d in dtypes)
        raise FormatError(
            f"{name}: tensor {key!r} is {DTYPE_NAMES[stored.dtype]}{list(stored.shape)}, expected {want}{list(shape)}"
        )


def checksum_of(table_json: str, chunks: Iterable[tuple[str, memoryview | bytes]]) -> str:
    """``sha256:<hex>`` over the ``tensors`` table and every stored tensor, in sorted key order.

    Every field is length-prefixed (u64 little-endian) so no two different files hash the same
    stream: ``len(T) T`` then, per key sorted by UTF-8 bytes, ``len(K) K len(D) D``.
    """
    digest = hashlib.sha256()
    table = table_json.encode("utf-8")
    digest.update(struct.pack("<Q", len(table)) + table)
    for key, data in sorted(chunks, key=lambda kv: kv[0].encode("utf-8")):
        name = key.encode("utf-8")
        digest.update(struct.pack("<Q", len(name)) + name + struct.pack("<Q", len(data)))
        digest.update(data)
    return f"{CHECKSUM_ALGORITHM}:{digest.hexdigest()}"

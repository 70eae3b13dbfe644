"""Reading and writing SFT files: one safetensors file, no pickle, validated at the boundary.

The surface mirrors safetensors' own (``save_file`` / ``load_file`` / ``safe_open``) so it feels
familiar, but every read is checked: the header against the spec, the tensor data against its
checksum, and each decoded index set for order and range. A damaged or foreign file raises
:class:`~sftkit.errors.FormatError` (or :class:`~sftkit.errors.ChecksumError`) with a one-line message
naming the file and tensor, never a stack of numpy errors or a silently wrong model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from sftkit._io import atomic_path
from sftkit._version import __version__
from sftkit.delta import SFT, VALUE_DTYPES, SparseDelta
from sftkit.errors import ChecksumError, ConfigError, FormatError
from sftkit.format.encodings import ENCODINGS, decode_indices, encode_indices
from sftkit.format.header import (
    DTYPE_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    SFTHeader,
    TableEntry,
    checksum_of,
    dense_key,
    index_key,
    read_header,
    values_key,
)
from sftkit.metadata import SFTMetadata

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class TensorInfo:
    """What one parameter costs in a file (from the header alone; no tensor data is read)."""

    name: str
    shape: tuple[int, ...]
    kind: str
    """``sparse`` or ``dense``."""
    encoding: str | None
    """Index encoding of a sparse entry; ``None`` for dense."""
    nnz: int
    """Stored entries: the changed positions of a sparse entry, every element of a dense one."""
    density: float
    index_bytes: int
    value_bytes: int
    value_dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "shape": list(self.shape)}


@contextlib.contextmanager
def _about(path: PathLike) -> Iterator[None]:
    """Prefix format errors with the file they concern, keeping their class."""
    try:
        yield
    except FormatError as exc:
        if str(exc).startswith(f"{os.fspath(path)}: "):
            raise
        raise type(exc)(f"{os.fspath(path)}: {exc}") from None
    except safetensors.SafetensorError as exc:
        raise FormatError(f"{os.fspath(path)}: not a readable safetensors file ({exc})") from None


# --- writing -----------------------------------------------------------------------------------


def save_file(
    sft: SFT, path: PathLike, *, value_dtype: torch.dtype | None = None, encoding: str = "auto"
) -> None:
    """Write ``sft`` to ``path`` atomically (temp file in the same directory, then rename).

    ``value_dtype``: ``None`` keeps each delta's value dtype (float32 deltas round-trip exactly);
    ``torch.bfloat16`` / ``torch.float16`` halve the value bytes at a relative rounding error of
    at most 2**-8 / 2**-11 (see docs/format.md). Dense tensors are always stored as they are.
    ``encoding``: ``"auto"`` picks the smallest index encoding per tensor, or force one of
    ``coo``, ``bitmask``, ``elias-fano``. The parent directory must exist.
    """
    if not isinstance(sft, SFT):
        raise ConfigError(f"save_file expects an sftkit.SFT, got {type(sft).__name__}")
    if value_dtype is not None and value_dtype not in VALUE_DTYPES:
        raise ConfigError(f"value_dtype must be torch.float32, torch.bfloat16 or torch.float16, got {value_dtype}")
    if encoding != "auto" and encoding not in ENCODINGS:
        raise ConfigError(f"encoding must be 'auto' or one of {', '.join(ENCODINGS)}, got {encoding!r}")
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(2, "parent directory does not exist", str(parent))
    with _about(path):
        sft.validate()
        tensors, table = _encode_sft(sft, value_dtype, encoding)
    table_json = json.dumps(table, separators=(",", ":"))
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sftkit_version": __version__,
        "metadata": _metadata_json(sft.metadata, path),
        "tensors": table_json,
        "checksum": checksum_of(table_json, ((k, _raw_bytes(t)) for k, t in tensors.items())),
    }
    _atomic_write(tensors, header, path)


def _encode_sft(
    sft: SFT, value_dtype: torch.dtype | None, encoding: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    table: dict[str, Any] = {}
    base_dtype = sft.metadata.base.dtype
    for name, delta in sft.deltas.items():
        enc, payload, params = encode_indices(delta.indices, delta.numel, encoding)
        values = delta.values.detach().to("cpu", value_dtype or delta.values.dtype)
        if values.dtype != delta.values.dtype and bool(torch.isinf(values).any()):
            if not bool(torch.isinf(delta.values).any()):
                raise ConfigError(
                    f"{name}: values overflow {DTYPE_NAMES[values.dtype]} (|value| > 65504); use torch.bfloat16 or float32"
                )
        tensors[index_key(name)] = payload
        tensors[values_key(name)] = values
        entry = TableEntry(name, "sparse", delta.shape, delta.nnz, enc, params, DTYPE_NAMES[values.dtype], base_dtype)
        table[name] = entry.to_json()
    for name, tensor in sft.dense.items():
        if not torch.is_tensor(tensor) or tensor.dtype not in DTYPE_NAMES:
            raise FormatError(f"dense tensor {name!r} must be a tensor of a safetensors dtype, got {type(tensor).__name__}")
        tensors[dense_key(name)] = tensor.detach().cpu()
        table[name] = TableEntry(name, "dense", tuple(tensor.shape), tensor.numel(), dtype=DTYPE_NAMES[tensor.dtype]).to_json()
    return _own_storage(tensors), table


def _own_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses views and tensors sharing memory; copy exactly those, nothing else."""
    seen: set[int] = set()
    result = {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage()
        whole = (
            tensor.is_contiguous()
            and tensor.storage_offset() == 0
            and storage.nbytes() == tensor.numel() * tensor.element_size()
        )
        if not whole or (tensor.numel() and storage.data_ptr() in seen):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        if tensor.numel():
            seen.add(tensor.untyped_storage().data_ptr())
        result[key] = tensor
    return result


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The little-endian bytes safetensors will write for ``tensor`` (no copy)."""
    if tensor.numel() == 0:
        return memoryview(b"")
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def _metadata_json(metadata: SFTMetadata, path: Path) -> str:
    def default(value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if hasattr(value, "item"):  # numpy / torch scalars
            return value.item()
        if isinstance(value, (set, frozenset, tuple)):
            return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        raise TypeError(type(value).__name__)

    try:
        return json.dumps(metadata.to_dict(), default=default, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{path}: metadata is not JSON-serialisable ({exc}); use plain numbers and strings") from None


def _atomic_write(tensors: dict[str, torch.Tensor], header: dict[str, str], path: Path) -> None:
    with atomic_path(path) as tmp:
        _write_safetensors(tensors, header, tmp)


def _write_safetensors(tensors: dict[str, torch.Tensor], header: dict[str, str], path: str) -> None:
    safetensors.torch.save_file(tensors, path, metadata=header)


# --- reading -----------------------------------------------------------------------------------


def read_metadata(path: PathLike) -> SFTMetadata:
    """The :class:`SFTMetadata` of an SFT file, from its header only (no tensor data is read)."""
    with _about(path):
        return read_header(path).metadata


def load_file(path: PathLike, *, verify: bool = True, device: str | torch.device = "cpu") -> SFT:
    """Load an SFT file, checking the header, the checksum (``verify=True``) and every index set."""
    with safe_open(path, verify=verify) as reader:
        deltas = {name: reader.get_delta(name) for name in reader.keys()}
        dense = {name: reader.get_dense(name) for name in reader.dense_keys()}
    if torch.device(device) != torch.device("cpu"):
        deltas = {n: SparseDelta(d.shape, d.indices.to(device), d.values.to(device)) for n, d in deltas.items()}
        dense = {n: t.to(device) for n, t in dense.items()}
    return SFT(deltas, dense, reader.metadata)


class SFTReader:
    """Lazy access to an SFT file: the header is parsed up front, tensors are read on request.

    Created by :func:`safe_open`; use it as a context manager. Tensor data comes memory-mapped
    through safetensors.
    """

    def __init__(self, path: PathLike, *, verify: bool = False) -> None:
        self.path = Path(path)
        with _about(self.path):
            self.header: SFTHeader = read_header(self.path)
            self._file = safetensors.safe_open(os.fspath(self.path), framework="pt", device="cpu")
        if verify:
            self.verify()

    @property
    def metadata(self) -> SFTMetadata:
        return self.header.metadata

    def keys(self) -> list[str]:
        """Names of the sparse deltas, in file order."""
        return [n for n, e in self.header.entries.items() if e.kind == "sparse"]

    def dense_keys(self) -> list[str]:
        """Names of the dense (replacing) tensors, in file order."""
        return [n for n, e in self.header.entries.items() if e.kind == "dense"]

    def _entry(self, name: str, kind: str) -> TableEntry:
        entry = self.header.entries.get(name)
        if entry is None or entry.kind != kind:
            raise KeyError(f"{self.path}: no {kind} tensor named {name!r}")
        return entry

    def get_delta(self, name: str) -> SparseDelta:
        """Decode and validate the sparse delta of parameter ``name``."""
        entry = self._entry(name, "sparse")
        with _about(self.path):
            payload = self._file.get_tensor(index_key(name))
            values = self._file.get_tensor(values_key(name))
            try:
                indices = decode_indices(entry.encoding or "", payload, entry.params, entry.numel, entry.nnz)
            except FormatError as exc:
                raise FormatError(f"{name}: {exc}") from None
        # decode_indices checked order and range, the header checked dtypes and lengths.
        return SparseDelta(entry.shape, indices, values)

    def get_dense(self, name: str) -> torch.Tensor:
        """The dense tensor stored for parameter ``name``."""
        self._entry(name, "dense")
        with _about(self.path):
            return self._file.get_tensor(dense_key(name))

    def tensor_info(self) -> list[TensorInfo]:
        """Per-parameter storage report (encoding, nnz, density, index and value bytes)."""
        infos = []
        for name, entry in self.header.entries.items():
            if entry.kind == "dense":
                stored = self.header.tensors[dense_key(name)]
                nbytes = stored.end - stored.begin
                infos.append(TensorInfo(name, entry.shape, "dense", None, entry.numel, 1.0, 0, nbytes, entry.dtype))
                continue
            index, values = self.header.tensors[index_key(name)], self.header.tensors[values_key(name)]
            infos.append(
                TensorInfo(
                    name,
                    entry.shape,
                    "sparse",
                    entry.encoding,
                    entry.nnz,
                    entry.nnz / entry.numel if entry.numel else 0.0,
                    index.end - index.begin,
                    values.end - values.begin,
                    entry.dtype,
                )
            )
        return infos

    def verify(self) -> None:
        """Recompute the checksum over the file's tensor data; :class:`ChecksumError` on mismatch."""
        header = self.header
        with _about(self.path), open(self.path, "rb") as handle:
            if header.data_length == 0:
                actual = checksum_of(header.table_json, ((k, b"") for k in header.tensors))
            else:
                with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    actual = _checksum_mapped(header, mapped)
            if actual != header.checksum:
                raise ChecksumError(
                    "tensor data does not match the header checksum (truncated, altered or corrupted); "
                    "download or copy the file again"
                )

    def close(self) -> None:
        self._file = None  # type: ignore[assignment]

    def __enter__(self) -> SFTReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _checksum_mapped(header: SFTHeader, mapped: mmap.mmap) -> str:
    """Checksum straight from the mapped file: hashing needs no tensor objects and no copies."""
    start = header.data_start
    with memoryview(mapped) as view:
        chunks = [(key, view[start + t.begin : start + t.end]) for key, t in header.tensors.items()]
        try:
            return checksum_of(header.table_json, chunks)
        finally:
            for _, chunk in chunks:
                chunk.release()


def safe_open(path: PathLike, *, verify: bool = False) -> SFTReader:
    """Open an SFT file lazily (``with safe_open(p) as f: f.get_delta(name)``).

    ``verify=False`` by default because hashing reads every byte, which a lazy reader wants to
    avoid; call :meth:`SFTReader.verify` (or use :func:`load_file`, which verifies) when needed.
    """
    return SFTReader(path, verify=verify)


__all__ = ["SFTReader", "TensorInfo", "load_file", "read_metadata", "safe_open", "save_file"]

"""The in-memory data model: one sparse tensor difference, and an SFT that holds many.

A :class:`SparseDelta` is the difference φ for one parameter of the base model: the sorted unique
row-major flat indices of the changed entries and their values. An :class:`SFT` maps canonical
parameter names (see :mod:`sftkit.naming`) to sparse deltas, plus *dense* tensors that replace rather
than add (a task head, a freshly initialised MLM head), plus :class:`~sftkit.metadata.SFTMetadata`.

These objects are plain containers; the pure functions over them live in :mod:`sftkit.arithmetic`,
file I/O in :mod:`sftkit.format`, and application to a model in :mod:`sftkit.compose`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from sftkit.errors import FormatError
from sftkit.metadata import SFTMetadata

VALUE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def numel_of(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


@dataclass
class SparseDelta:
    """Sparse difference for one tensor.

    ``indices`` are int64, 1-D, strictly increasing flat positions into the row-major ``shape``;
    ``values`` is a 1-D floating tensor of the same length.
    """

    shape: tuple[int, ...]
    indices: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)

    @property
    def numel(self) -> int:
        return numel_of(self.shape)

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    @classmethod
    def from_dense(cls, delta: torch.Tensor, mask: torch.Tensor | None = None) -> SparseDelta:
        """Keep the entries of ``delta`` where ``mask`` is true (or non-zero entries without a mask)."""
        flat = delta.detach().reshape(-1)
        keep = (flat != 0) if mask is None else mask.reshape(-1).to(torch.bool)
        indices = torch.nonzero(keep, as_tuple=False).reshape(-1).to(torch.int64)
        return cls(tuple(delta.shape), indices, flat[indices].to(torch.float32).clone())

    @classmethod
    def empty(cls, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> SparseDelta:
        return cls(shape, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=dtype))

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = torch.zeros(self.numel, dtype=dtype)
        out[self.indices] = self.values.to(dtype)
        return out.reshape(self.shape)

    def validate(self, name: str = "<tensor>") -> None:
        """Raise :class:`FormatError` unless the invariants hold (sorted, unique, in range, 1-D)."""
        idx, val = self.indices, self.values
        if idx.dtype != torch.int64 or idx.dim() != 1:
            raise FormatError(f"{name}: indices must be a 1-D int64 tensor, got {idx.dtype} with {idx.dim()} dims")
        if val.dim() != 1 or val.dtype not in VALUE_DTYPES:
            raise FormatError(f"{name}: values must be a 1-D float32/bfloat16/float16 tensor, got {val.dtype}")
        if idx.numel() != val.numel():
            raise FormatError(f"{name}: {idx.numel()} indices but {val.numel()} values")
        if idx.numel():
            if int(idx[0]) < 0 or int(idx[-1]) >= self.numel:
                raise FormatError(f"{name}: index out of range for shape {list(self.shape)}")
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise FormatError(f"{name}: indices must be sorted and unique")

    def to(self, dtype: torch.dtype) -> SparseDelta:
        return SparseDelta(self.shape, self.indices, self.values.to(dtype))


@dataclass
class SFT(Mapping[str, SparseDelta]):
    """A sparse fine-tuning: sparse deltas per canonical parameter name, dense replacements, metadata.

    Behaves as a read-only mapping over its sparse deltas. Arithmetic operators delegate to
    :mod:`sftkit.arithmetic`: ``a + b``, ``a - b``, ``2.0 * a``, ``-a``.
    """

    deltas: dict[str, SparseDelta] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: SFTMetadata = field(default_factory=SFTMetadata)

    def __getitem__(self, name: str) -> SparseDelta:
        return self.deltas[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.deltas)

    def __len__(self) -> int:
        return len(self.deltas)

    @property
    def nnz(self) -> int:
        """Number of stored sparse entries (K)."""
        return sum(d.nnz for d in self.deltas.values())

    @property
    def numel(self) -> int:
        """Number of entries in the tensors the sparse part touches (the density denominator)."""
        return sum(d.numel for d in self.deltas.values())

    def validate(self) -> None:
        for name, delta in self.deltas.items():
            delta.validate(name)
        overlap = set(self.deltas) & set(self.dense)
        if overlap:
            raise FormatError(f"parameter {sorted(overlap)[0]!r} is both sparse and dense; keep one")

    def save(self, path: str, **kwargs: object) -> None:
        from sftkit.format import save_file

        save_file(self, path, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str, **kwargs: object) -> SFT:
        from sftkit.format import load_file

        return load_file(path, **kwargs)  # type: ignore[arg-type]

    # Operators: thin delegation so the arithmetic stays in pure functions.
    def __add__(self, other: SFT) -> SFT:
        from sftkit import arithmetic

        return arithmetic.add(self, other)

    def __sub__(self, other: SFT) -> SFT:
        from sftkit import arithmetic

        return arithmetic.subtract(self, other)

    def __mul__(self, factor: float) -> SFT:
        from sftkit import arithmetic

        return arithmetic.scale(self, float(factor))

    __rmul__ = __mul__

    def __neg__(self) -> SFT:
        from sftkit import arithmetic

        return arithmetic.negate(self)

    def __eq__(self, other: object) -> bool:  # structural equality of tensors, not identity
        if not isinstance(other, SFT):
            return NotImplemented
        if self.deltas.keys() != other.deltas.keys() or self.dense.keys() != other.dense.keys():
            return False
        for name, d in self.deltas.items():
            o = other.deltas[name]
            if d.shape != o.shape or not torch.equal(d.indices, o.indices) or not torch.equal(d.values, o.values):
                return False
        return all(torch.equal(t, other.dense[n]) for n, t in self.dense.items())

    __hash__ = None  # type: ignore[assignment]

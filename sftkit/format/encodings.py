"""Index encodings: pure functions between sorted flat indices and compact byte payloads.

An SFT stores, per tensor, the set of changed positions (``nnz`` of ``numel``). How many bytes that
set needs depends on the density, so each tensor gets whichever encoding is smallest:

* ``coo``: the indices themselves, int32 when every index fits (``numel <= 2**31``), else int64.
  Best for tiny sets, where any fixed overhead dominates.
* ``bitmask``: one bit per element. Best above ~25 % density.
* ``elias-fano``: the quasi-succinct gap code (low bits packed, high part unary), within about half
  a bit per element of the entropy bound ``log2 C(numel, nnz)`` at any density. With
  ``complement`` it codes the *unchanged* positions instead, which is what a nearly dense tensor wants.

All coders are vectorised numpy (bit planes, ``packbits``/``unpackbits``/``flatnonzero``); no Python
loop runs per element. There is no I/O here: :mod:`sftkit.format.container` owns files. The exact
bit layouts are specified in ``docs/format.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sftkit.errors import FormatError

ENCODINGS = ("coo", "bitmask", "elias-fano")
"""Encoding names in tie-break order: on equal size the simplest wins."""

INT32_LIMIT = 2**31
"""COO payloads are int32 when ``numel <= INT32_LIMIT`` (every index ``< 2**31``)."""

MAX_LOW_BITS = 62


def entropy_bound_bits(numel: int, nnz: int) -> float:
    """``log2 C(numel, nnz)``: the fewest bits any code can spend on a ``nnz``-subset of ``numel``.

    Computed with ``lgamma`` so it works for XLM-R-sized tensors without big integers.
    """
    if nnz < 0 or nnz > numel:
        raise ValueError(f"nnz={nnz} must lie in [0, numel={numel}]")
    if nnz in (0, numel):
        return 0.0
    nats = math.lgamma(numel + 1) - math.lgamma(nnz + 1) - math.lgamma(numel - nnz + 1)
    return max(0.0, nats / math.log(2))


# --- sizes (pure arithmetic on numel/nnz: the encoder's choice never touches the indices) -------


def _ef_high_bits(numel: int, count: int, low_bits: int) -> int:
    """Length of the unary high bitvector: one 1 per element plus one 0 per bucket boundary."""
    return count + ((numel - 1) >> low_bits) if count else 0


def _ef_nbytes(numel: int, count: int, low_bits: int) -> int:
    if count == 0:
        return 0
    return (count * low_bits + 7) // 8 + (_ef_high_bits(numel, count, low_bits) + 7) // 8


def ef_low_bits(numel: int, count: int) -> int:
    """The low-bit width ``L`` that minimises the Elias–Fano payload (smallest ``L`` on ties).

    Close to ``floor(log2(numel / count))``; evaluated exactly over every width because it is cheap.
    """
    if count == 0 or numel <= 1:
        return 0
    widths = range(0, min(MAX_LOW_BITS, (numel - 1).bit_length()) + 1)
    return min(widths, key=lambda w: (_ef_nbytes(numel, count, w), w))


def _ef_plan(numel: int, nnz: int) -> tuple[bool, int, int]:
    """(complement, low_bits, bytes) of the smaller of the direct and the complement code."""
    direct = (False, ef_low_bits(numel, nnz))
    inverse = (True, ef_low_bits(numel, numel - nnz))
    sized = [(c, w, _ef_nbytes(numel, numel - nnz if c else nnz, w)) for c, w in (direct, inverse)]
    return min(sized, key=lambda s: (s[2], s[0]))


def encoded_nbytes(encoding: str, numel: int, nnz: int) -> int:
    """Payload size in bytes of ``encoding`` for a ``nnz``-subset of ``numel`` positions."""
    if encoding == "coo":
        return nnz * (4 if numel <= INT32_LIMIT else 8)
    if encoding == "bitmask":
        return (numel + 7) // 8
    if encoding == "elias-fano":
        return _ef_plan(numel, nnz)[2]
    raise ValueError(f"unknown index encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


def choose_encoding(numel: int, nnz: int) -> str:
    """The encoding with the fewest payload bytes (the closest to the entropy bound)."""
    return min(ENCODINGS, key=lambda e: (encoded_nbytes(e, numel, nnz), ENCODINGS.index(e)))


# --- coders ------------------------------------------------------------------------------------


def encode_indices(
    indices: torch.Tensor, numel: int, encoding: str = "auto"
) -> tuple[str, torch.Tensor, dict[str, Any]]:
    """Encode sorted unique flat ``indices`` (< ``numel``) as ``(encoding, payload, params)``.

    ``payload`` is a 1-D uint8 tensor (``bitmask``, ``elias-fano``) or int32/int64 (``coo``);
    ``params`` is a small JSON-able dict the decoder needs. The caller guarantees the indices are
    valid (``SparseDelta.validate``); ``encoding="auto"`` picks :func:`choose_encoding`.
    """
    nnz = int(indices.numel())
    if encoding == "auto":
        encoding = choose_encoding(numel, nnz)
    idx = indices.detach().to(device="cpu", dtype=torch.int64).reshape(-1).numpy()
    if encoding == "coo":
        dtype = np.int32 if numel <= INT32_LIMIT else np.int64
        return "coo", torch.from_numpy(idx.astype(dtype)), {}
    if encoding == "bitmask":
        mask = np.zeros(numel, dtype=bool)
        mask[idx] = True
        return "bitmask", torch.from_numpy(np.packbits(mask, bitorder="little")), {}
    if encoding == "elias-fano":
        complement, low_bits, _ = _ef_plan(numel, nnz)
        if complement:
            mask = np.ones(numel, dtype=bool)
            mask[idx] = False
            idx = np.flatnonzero(mask)
        payload = _ef_encode(idx, numel, low_bits)
        return "elias-fano", torch.from_numpy(payload), {"low_bits": low_bits, "complement": complement}
    raise ValueError(f"unknown index encoding {encoding!r}; expected auto or one of {', '.join(ENCODINGS)}")


def _ef_encode(idx: np.ndarray, numel: int, low_bits: int) -> np.ndarray:
    count = idx.size
    if count == 0:
        return np.zeros(0, dtype=np.uint8)
    # Each value's 8 little-endian bytes → its low ``low_bits`` bits, then one flat bit stream.
    value_bytes = idx.astype("<u8").view(np.uint8).reshape(count, 8)
    low_planes = np.unpackbits(value_bytes, axis=1, count=low_bits, bitorder="little")
    low = np.packbits(low_planes.reshape(-1), bitorder="little")
    high_bits = np.zeros(_ef_high_bits(numel, count, low_bits), dtype=bool)
    high_bits[(idx >> low_bits) + np.arange(count, dtype=np.int64)] = True
    high = np.packbits(high_bits, bitorder="little")
    return np.concatenate([low, high])


def expected_payload(encoding: str, numel: int, nnz: int, params: dict[str, Any]) -> tuple[tuple[torch.dtype, ...], int]:
    """(allowed payload dtypes, payload length) of a well-formed payload; :class:`FormatError` if the params are bad."""
    if encoding == "coo":
        return ((torch.int32, torch.int64) if numel <= INT32_LIMIT else (torch.int64,)), nnz
    if encoding == "bitmask":
        return (torch.uint8,), (numel + 7) // 8
    if encoding == "elias-fano":
        low_bits = params.get("low_bits")
        complement = params.get("complement", False)
        if not isinstance(low_bits, int) or isinstance(low_bits, bool) or not 0 <= low_bits <= MAX_LOW_BITS:
            raise FormatError(f"elias-fano low_bits must be an integer in [0, {MAX_LOW_BITS}], got {low_bits!r}")
        if not isinstance(complement, bool):
            raise FormatError(f"elias-fano complement must be true or false, got {complement!r}")
        return (torch.uint8,), _ef_nbytes(numel, numel - nnz if complement else nnz, low_bits)
    raise FormatError(f"unknown index encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


def decode_indices(
    encoding: str, payload: torch.Tensor, params: dict[str, Any], numel: int, nnz: int
) -> torch.Tensor:
    """Decode a payload back to int64 sorted unique flat indices, validating everything.

    Raises :class:`FormatError` (message without file context; the container adds it) when the
    payload has the wrong dtype or length, decodes to the wrong count, or yields indices that are
    out of range, unsorted or duplicated.
    """
    dtypes, length = expected_payload(encoding, numel, nnz, params)
    if payload.dtype not in dtypes or payload.dim() != 1 or payload.numel() != length:
        raise FormatError(
            f"{encoding} index payload must be 1-D {'/'.join(str(d).removeprefix('torch.') for d in dtypes)} "
            f"of length {length}, got {str(payload.dtype).removeprefix('torch.')} of shape {list(payload.shape)}"
        )
    data = payload.detach().cpu().numpy()
    if encoding == "coo":
        idx = data.astype(np.int64)
    elif encoding == "bitmask":
        idx = np.flatnonzero(np.unpackbits(data, bitorder="little"))
        if idx.size != nnz:
            raise FormatError(f"bitmask has {idx.size} set bits but the header says nnz={nnz}")
    else:
        complement = bool(params.get("complement", False))
        count = numel - nnz if complement else nnz
        idx = _ef_decode(data, numel, count, int(params["low_bits"]))
        if complement:
            _check_sorted_in_range(idx, numel)
            mask = np.ones(numel, dtype=bool)
            mask[idx] = False
            idx = np.flatnonzero(mask)
    _check_sorted_in_range(idx, numel)
    return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))


def _ef_decode(data: np.ndarray, numel: int, count: int, low_bits: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    low_nbytes = (count * low_bits + 7) // 8
    planes = np.unpackbits(data[:low_nbytes], bitorder="little", count=count * low_bits).reshape(count, low_bits)
    packed = np.packbits(planes, axis=1, bitorder="little")  # (count, ceil(L/8)) little-endian bytes
    if packed.shape[1] <= 1:
        values = packed.reshape(count, -1)[:, 0].astype(np.int64) if low_bits else np.zeros(count, np.int64)
    else:
        wide = np.zeros((count, 8), dtype=np.uint8)
        wide[:, : packed.shape[1]] = packed
        values = wide.view("<u8").reshape(count).astype(np.int64)
    ones = np.flatnonzero(np.unpackbits(data[low_nbytes:], bitorder="little"))
    if ones.size != count:
        raise FormatError(f"elias-fano high part has {ones.size} set bits, expected {count}")
    if ones[-1] >= _ef_high_bits(numel, count, low_bits):
        raise FormatError("elias-fano high part has a set bit in its padding")
    values |= (ones - np.arange(count, dtype=np.int64)) << low_bits
    return values


def _check_sorted_in_range(idx: np.ndarray, numel: int) -> None:
    if idx.size == 0:
        return
    if idx.size > 1 and not bool(np.all(idx[1:] > idx[:-1])):
        raise FormatError("indices are not sorted and unique")
    if idx[0] < 0 or idx[-1] >= numel:
        bad = int(idx[0]) if idx[0] < 0 else int(idx[-1])
        raise FormatError(f"index {bad} out of range for {numel} elements")

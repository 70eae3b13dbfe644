"""Index encodings: exact round trips, size choice, bounds, and rejection of malformed payloads."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkit.errors import FormatError
from sftkit.format.encodings import (
    ENCODINGS,
    INT32_LIMIT,
    choose_encoding,
    decode_indices,
    encode_indices,
    encoded_nbytes,
    entropy_bound_bits,
)


def random_indices(numel: int, nnz: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=gen)[:nnz].sort().values


def roundtrip(indices: torch.Tensor, numel: int, encoding: str) -> tuple[str, torch.Tensor, dict]:
    name, payload, params = encode_indices(indices, numel, encoding)
    decoded = decode_indices(name, payload, params, numel, indices.numel())
    assert decoded.dtype == torch.int64
    assert torch.equal(decoded, indices)
    return name, payload, params


@pytest.mark.parametrize("encoding", [*ENCODINGS, "auto"])
@pytest.mark.parametrize(
    ("numel", "nnz"),
    [(1, 0), (1, 1), (7, 0), (7, 7), (9, 1), (64, 63), (1000, 1), (1000, 30), (1000, 500), (1000, 990), (4097, 4097)],
)
def test_roundtrip_every_encoding(encoding: str, numel: int, nnz: int) -> None:
    indices = random_indices(numel, nnz, seed=numel + nnz)
    name, payload, _ = roundtrip(indices, numel, encoding)
    assert payload.numel() * payload.element_size() == encoded_nbytes(name, numel, nnz)


@settings(max_examples=40, deadline=None)
@given(numel=st.integers(1, 5000), fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_roundtrip_property(numel: int, fraction: float, seed: int) -> None:
    nnz = int(round(fraction * numel))
    indices = random_indices(numel, nnz, seed)
    for encoding in ENCODINGS:
        roundtrip(indices, numel, encoding)
    name, payload, _ = roundtrip(indices, numel, "auto")
    sizes = {e: encoded_nbytes(e, numel, nnz) for e in ENCODINGS}
    assert payload.numel() * payload.element_size() == min(sizes.values()) == sizes[name]


def test_auto_choice_by_density() -> None:
    assert choose_encoding(10_000, 0) == "coo"  # nothing to store: no bytes at all
    assert choose_encoding(10_000, 10_000) == "elias-fano"  # complement of nothing: no bytes at all
    assert encoded_nbytes("elias-fano", 10_000, 10_000) == 0
    assert choose_encoding(10_000, 5_000) == "bitmask"
    assert choose_encoding(10_000_000, 300_000) == "elias-fano"


def test_elias_fano_complement_for_nearly_dense() -> None:
    numel, nnz = 10_000, 9_900
    name, payload, params = roundtrip(random_indices(numel, nnz), numel, "elias-fano")
    assert params["complement"] is True
    assert payload.numel() * 8 < entropy_bound_bits(numel, nnz) + 0.6 * (numel - nnz) + 16


@pytest.mark.parametrize("density", [0.001, 0.01, 0.0277, 0.05])
def test_elias_fano_within_half_a_bit_of_entropy(density: float) -> None:
    numel = 200_000
    nnz = int(numel * density)
    _, payload, params = roundtrip(random_indices(numel, nnz), numel, "elias-fano")
    bound = entropy_bound_bits(numel, nnz)
    assert payload.numel() * 8 <= bound + 0.6 * nnz + 16
    assert abs(params["low_bits"] - math.log2(numel / nnz)) <= 1.5


def test_coo_width_switches_at_int32_limit_without_allocating() -> None:
    assert encoded_nbytes("coo", INT32_LIMIT, 10) == 40
    assert encoded_nbytes("coo", INT32_LIMIT + 1, 10) == 80
    huge = 2**40
    indices = torch.tensor([0, 5, 2**33, huge - 1])
    name, payload, _ = roundtrip(indices, huge, "coo")
    assert payload.dtype == torch.int64
    _, payload32, _ = encode_indices(torch.tensor([0, INT32_LIMIT - 1]), INT32_LIMIT, "coo")
    assert payload32.dtype == torch.int32
    # Auto never considers the (terabit) bitmask for a sparse huge tensor, and EF stays tiny.
    assert choose_encoding(huge, 4) in ("coo", "elias-fano")
    name, payload, _ = roundtrip(indices, huge, "elias-fano")
    assert payload.numel() <= 32
    assert choose_encoding(huge, 4) == min(("coo", "elias-fano"), key=lambda e: encoded_nbytes(e, huge, 4))


def test_entropy_bound_matches_exact_binomial() -> None:
    for numel, nnz in [(10, 3), (1000, 17), (5000, 2500), (1, 1), (12, 0)]:
        assert entropy_bound_bits(numel, nnz) == pytest.approx(math.log2(math.comb(numel, nnz)), abs=1e-6)
    with pytest.raises(ValueError):
        entropy_bound_bits(3, 4)


def test_decode_rejects_wrong_payload_shape_or_dtype() -> None:
    numel, indices = 1000, random_indices(1000, 40)
    for encoding in ENCODINGS:
        name, payload, params = encode_indices(indices, numel, encoding)
        with pytest.raises(FormatError, match="payload"):
            decode_indices(name, torch.cat([payload, payload[:1]]), params, numel, 40)
        with pytest.raises(FormatError, match="payload"):
            decode_indices(name, payload.to(torch.float32), params, numel, 40)


@pytest.mark.parametrize(
    ("indices", "message"),
    [([3, 2, 5], "sorted"), ([1, 1, 5], "sorted"), ([1, 2, 1000], "out of range"), ([-1, 2, 3], "out of range")],
)
def test_decode_coo_rejects_bad_indices(indices: list[int], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        decode_indices("coo", torch.tensor(indices, dtype=torch.int32), {}, 1000, 3)


def test_decode_bitmask_rejects_count_mismatch_and_padding_bits() -> None:
    _, payload, _ = encode_indices(torch.tensor([0, 3]), 10, "bitmask")
    with pytest.raises(FormatError, match="nnz=3"):
        decode_indices("bitmask", payload, {}, 10, 3)
    padded = payload.clone()
    padded[1] |= 0b1000_0000  # bit 15: beyond numel=10
    with pytest.raises(FormatError, match="out of range"):
        decode_indices("bitmask", padded, {}, 10, 3)


def test_decode_elias_fano_rejects_corruption() -> None:
    numel, indices = 1000, random_indices(1000, 40, seed=3)
    _, payload, params = encode_indices(indices, numel, "elias-fano")
    with pytest.raises(FormatError, match="low_bits"):
        decode_indices("elias-fano", payload, {"low_bits": -1}, numel, 40)
    with pytest.raises(FormatError, match="complement"):
        decode_indices("elias-fano", payload, {**params, "complement": "yes"}, numel, 40)
    flipped = payload.clone()
    flipped[-1] ^= 0b1000_0000  # a high-part bit: wrong number of ones, or one in the padding
    with pytest.raises(FormatError, match="high part"):
        decode_indices("elias-fano", flipped, params, numel, 40)
    # Same bucket, decreasing low bits: decodes, but not to a sorted set.
    low_bits = 2
    bad = _ef_payload(lows=[2, 1], highs=[0, 0], numel=8, low_bits=low_bits)
    with pytest.raises(FormatError, match="sorted"):
        decode_indices("elias-fano", bad, {"low_bits": low_bits, "complement": False}, 8, 2)


def _ef_payload(lows: list[int], highs: list[int], numel: int, low_bits: int) -> torch.Tensor:
    """Hand-built Elias–Fano payload, following docs/format.md bit for bit."""
    low_stream = [(v >> b) & 1 for v in lows for b in range(low_bits)]
    high_len = len(lows) + ((numel - 1) >> low_bits)
    high_stream = [0] * high_len
    for i, h in enumerate(highs):
        high_stream[h + i] = 1
    pack = lambda bits: np.packbits(np.array(bits, dtype=np.uint8), bitorder="little")  # noqa: E731
    return torch.from_numpy(np.concatenate([pack(low_stream), pack(high_stream)]))


def test_elias_fano_layout_matches_the_spec() -> None:
    indices = [1, 2, 6, 7, 9, 30]
    numel = 32
    name, payload, params = encode_indices(torch.tensor(indices), numel, "elias-fano")
    low_bits = params["low_bits"]
    assert params["complement"] is False
    expected = _ef_payload(
        [i & ((1 << low_bits) - 1) for i in indices], [i >> low_bits for i in indices], numel, low_bits
    )
    assert torch.equal(payload, expected)


@pytest.mark.slow
def test_fourteen_million_indices_encode_and_decode_fast() -> None:
    nnz = 14_155_776
    gaps = np.random.default_rng(0).geometric(0.07, size=nnz)  # a Bernoulli(0.07) set, without a slow unique()
    indices = torch.from_numpy(np.cumsum(gaps) - 1)
    numel = int(indices[-1]) + 1000
    start = time.perf_counter()
    name, payload, params = encode_indices(indices, numel, "auto")
    encoded = time.perf_counter()
    decoded = decode_indices(name, payload, params, numel, nnz)
    done = time.perf_counter()
    assert name == "elias-fano" and torch.equal(decoded, indices)
    # Generous for a loaded 2-core CI box; a per-element Python loop would take minutes.
    assert encoded - start < 8.0 and done - encoded < 8.0

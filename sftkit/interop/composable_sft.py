"""Import SFTs saved by composable-sft (``pytorch_diff.bin``), as published on the Hugging Face Hub.

composable-sft (Ansell et al.) saves ``torch.save({'diffs': {name: enc}, 'abs': {name: tensor}})``
where each ``enc`` is ``{'size': torch.Size, 'index_steps': [int, ...], 'values': tensor}``: the flat
indices are **column-major** (multipliers ``cumprod([1] + size[:-1])``) and delta-coded (first entry
absolute, then differences), and ``abs`` holds dense trained tensors (heads) that replace rather
than add. Its earliest release saved ``{name: {'size', 'indices': [[coords of dim 0], ...], 'values'}}``
(per-dimension coordinates, no wrapper dict); both layouts are read.

The file is a pickle, so it is only ever opened with ``torch.load(weights_only=True)``, with the two
numpy globals those files contain (the int64 scalar that starts ``index_steps`` and its dtype) allowed
and nothing else. Names are those of the model it was trained with (``roberta.encoder…``,
``lm_head.…``); they are mapped to sftkit's canonical names and the indices re-coded row-major.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sftkit._io import sha256_file
from sftkit.delta import SFT, VALUE_DTYPES, SparseDelta
from sftkit.errors import FormatError
from sftkit.fingerprints import describe_base
from sftkit.metadata import SFTMetadata
from sftkit.naming import alias_map, canonical_parameters, canonicalize_name

SFT_FILE_NAME = "pytorch_diff.bin"
METHOD = "composable-sft-import"


def _numpy_safe_globals() -> list[Any]:
    """The numpy globals a composable-sft file pickles: an int64 scalar and its dtype, under old and new paths."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list[Any] = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    allowed.append(np.dtype)
    allowed.extend(getattr(np.dtypes, n) for n in ("Int64DType", "Int32DType") if hasattr(np, "dtypes"))
    return allowed


def _load_pickle(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise FormatError(f"{path}: not a loadable composable-sft file ({reason[:200]})") from None


def import_pytorch_diff(
    path: str | os.PathLike[str],
    *,
    base: nn.Module | None = None,
    name_map: Mapping[str, str] | None = None,
    metadata: SFTMetadata | None = None,
) -> SFT:
    """Convert a composable-sft ``pytorch_diff.bin`` (or a directory holding one) to an :class:`SFT`.

    ``base``: the model the SFT applies to (optional). With it, names map through the model's own
    aliases (so a tied ``lm_head.decoder.weight`` lands on ``embeddings.word_embeddings.weight``),
    shapes are checked, and the base fingerprint is recorded. ``name_map`` maps file names to
    canonical names explicitly and wins over everything else. Without either, known base prefixes
    (``roberta.``, ``bert.``, …) are stripped. ``metadata`` seeds the result's metadata (kind,
    language, task); method and provenance are filled in here.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SFT_FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(2, "no such composable-sft file", str(path))
    data = _load_pickle(path)
    diffs, dense_in = _split_layout(data, path)

    resolve = _name_resolver(base, name_map)
    shapes = {n: tuple(p.parameter.shape) for n, p in canonical_parameters(base).items()} if base is not None else {}
    origin: dict[str, str] = {}

    def claim(file_name: str) -> str:
        if not isinstance(file_name, str):
            raise FormatError(f"{path}: parameter name {file_name!r} is not a string")
        name = resolve(file_name)
        if name in origin:
            raise FormatError(f"{path}: {file_name!r} and {origin[name]!r} both map to parameter {name!r}")
        origin[name] = file_name
        return name

    deltas: dict[str, SparseDelta] = {}
    for file_name, enc in diffs.items():
        name = claim(file_name)
        delta = _decode_diff(enc, f"{path}: {file_name}")
        if name in shapes and shapes[name] != delta.shape:
            raise FormatError(
                f"{path}: {file_name} has size {list(delta.shape)} but the base parameter {name} is {list(shapes[name])}; "
                "pass the base model the SFT was trained for"
            )
        deltas[name] = delta
    dense: dict[str, torch.Tensor] = {}
    for file_name, tensor in dense_in.items():
        name = claim(file_name)
        if not torch.is_tensor(tensor):
            raise FormatError(f"{path}: abs[{file_name!r}] is {type(tensor).__name__}, expected a tensor")
        dense[name] = tensor.detach().cpu().contiguous()

    meta = metadata.copy() if metadata is not None else SFTMetadata()
    meta.method = METHOD
    if base is not None:
        source = getattr(getattr(base, "config", None), "_name_or_path", None) or None
        meta.base = describe_base(base, name=meta.base.name or source, revision=meta.base.revision)
    meta.provenance = {
        **meta.provenance,
        "format": "composable-sft pytorch_diff.bin",
        "file": path.name,
        "sha256": sha256_file(path),
    }
    sft = SFT(deltas, dense, meta)
    try:
        sft.validate()
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None
    return sft


def _split_layout(data: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a dict with 'diffs' and/or 'abs', got {type(data).__name__}")
    if "diffs" in data or "abs" in data:
        unknown = sorted(set(data) - {"diffs", "abs"})
        if unknown:
            raise FormatError(f"{path}: unexpected top-level key {unknown[0]!r}; expected only 'diffs' and 'abs'")
        diffs, dense = data.get("diffs") or {}, data.get("abs") or {}
        if not isinstance(diffs, dict) or not isinstance(dense, dict):
            raise FormatError(f"{path}: 'diffs' and 'abs' must be dicts")
        return diffs, dense
    if data and all(isinstance(v, dict) and {"size", "indices", "values"} <= set(v) for v in data.values()):
        return data, {}  # the earliest composable-sft layout: per-dimension coordinates, no 'abs'
    raise FormatError(f"{path}: no 'diffs' or 'abs' key; this is not a composable-sft pytorch_diff.bin")


def _name_resolver(base: nn.Module | None, name_map: Mapping[str, str] | None) -> Any:
    aliases = alias_map(base) if base is not None else {}

    def resolve(file_name: str) -> str:
        if name_map and file_name in name_map:
            return name_map[file_name]
        if file_name in aliases:
            return aliases[file_name]
        stripped = canonicalize_name(file_name)
        return aliases.get(stripped, stripped)

    return resolve


def _decode_diff(enc: Any, where: str) -> SparseDelta:
    """One composable-sft sparse encoding → a row-major :class:`SparseDelta`."""
    if not isinstance(enc, dict) or "size" not in enc or "values" not in enc:
        raise FormatError(f"{where}: expected a dict with 'size', 'index_steps' and 'values'")
    try:
        shape = tuple(int(s) for s in enc["size"])
    except (TypeError, ValueError):
        raise FormatError(f"{where}: 'size' must be a sequence of integers, got {enc['size']!r}") from None
    if any(s < 0 for s in shape):
        raise FormatError(f"{where}: 'size' {list(shape)} has a negative dimension")
    numel = math.prod(shape)
    values = _as_values(enc["values"], where)
    if "index_steps" in enc:
        steps = _as_int_array(enc["index_steps"], where, "index_steps")
        if steps.ndim != 1:
            raise FormatError(f"{where}: 'index_steps' must be 1-D")
        if steps.size and (steps[0] < 0 or (steps.size > 1 and steps[1:].min() <= 0)):
            raise FormatError(f"{where}: index_steps must start non-negative and then increase strictly")
        column_major = np.cumsum(steps, dtype=np.int64)
        coords = None
    elif "indices" in enc:
        coords = _as_int_array(enc["indices"], where, "indices")
        if coords.size == 0:
            coords = np.zeros((len(shape), 0), dtype=np.int64)
        if coords.ndim != 2 or coords.shape[0] != len(shape):
            raise FormatError(f"{where}: 'indices' must hold one coordinate list per dimension of {list(shape)}")
        column_major = None
    else:
        raise FormatError(f"{where}: neither 'index_steps' nor 'indices' is present")
    count = coords.shape[1] if coords is not None else column_major.size  # type: ignore[union-attr]
    if count != values.numel():
        raise FormatError(f"{where}: {count} indices but {values.numel()} values")
    if coords is None:
        if count and column_major[-1] >= numel:  # type: ignore[index]
            raise FormatError(f"{where}: index {int(column_major[-1])} out of range for size {list(shape)}")  # type: ignore[index]
        coords = _unravel_column_major(column_major, shape)  # type: ignore[arg-type]
    elif count and (coords.min() < 0 or bool((coords.max(axis=1) >= np.asarray(shape)).any())):
        raise FormatError(f"{where}: coordinate out of range for size {list(shape)}")
    row_major = _ravel_row_major(coords, shape)
    order = np.argsort(row_major, kind="stable")
    row_major = row_major[order]
    if row_major.size > 1 and not bool(np.all(row_major[1:] > row_major[:-1])):
        raise FormatError(f"{where}: duplicate indices")
    return SparseDelta(shape, torch.from_numpy(row_major), values[torch.from_numpy(order)].contiguous())


def _as_values(values: Any, where: str) -> torch.Tensor:
    if not torch.is_tensor(values):
        try:
            values = torch.as_tensor(values, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise FormatError(f"{where}: 'values' must be a tensor or a list of numbers") from None
    if not values.is_floating_point():
        raise FormatError(f"{where}: 'values' must be floating point, got {values.dtype}")
    values = values.detach().cpu().reshape(-1)
    return values if values.dtype in VALUE_DTYPES else values.to(torch.float32)


def _as_int_array(value: Any, where: str, what: str) -> np.ndarray:
    try:
        array = value.cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise TypeError(array.dtype)
        return array.astype(np.int64)
    except (TypeError, ValueError):
        raise FormatError(f"{where}: '{what}' must hold integers") from None


def _unravel_column_major(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Column-major flat indices → coordinates (dims × count): dim 0 varies fastest."""
    coords = np.empty((len(shape), flat.size), dtype=np.int64)
    if flat.size == 0:
        return coords
    rest = flat.copy()
    for dim, size in enumerate(shape):
        coords[dim] = rest % size
        rest //= size
    return coords


def _ravel_row_major(coords: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    flat = np.zeros(coords.shape[1], dtype=np.int64)
    for dim, size in enumerate(shape):
        flat = flat * size + coords[dim]
    return flat



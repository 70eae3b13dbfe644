"""Pure arithmetic over sparse fine-tunings: sums, scaling, pruning, masks, merging and statistics.

Every function here takes and returns in-memory objects (:class:`~sftkit.delta.SFT`,
:class:`Mask`) and does no I/O. Work is vectorised per tensor (concatenate, ``unique``, ``index_add``,
``searchsorted``); nothing loops over individual entries in Python, so the functions scale to the
hundreds of millions of parameters of an XLM-R embedding matrix.

Conventions shared by all functions:

* Sparse values produced by arithmetic (``add``, ``subtract``, ``scale``, ``merge``) are float32, and
  entries that come out exactly zero (``a - a``, a factor of ``0``) are removed from the support: an
  explicit zero costs storage and composes to nothing, and keeping supports minimal makes ``mask_of``
  and :func:`overlap` describe what actually changes the model. Selections (``prune``, ``restrict``)
  return a subset of the stored entries unchanged, in their stored dtype.
* Dense tensors (replacements such as a task head) are not deltas: they are never scaled, negated or
  summed. ``add``/``merge`` keep the dense tensors of every operand and refuse two *different*
  replacements for the same parameter; ``subtract`` refuses a right operand with dense tensors,
  because a replacement has no inverse.
* Operands must agree on the base model (:func:`sftkit.fingerprints.matches`); a sum of deltas computed
  against different bases is meaningless, so it raises :class:`~sftkit.errors.BaseMismatchError`
  unless ``force=True``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sftkit.delta import SFT, SparseDelta
from sftkit.errors import ConfigError
from sftkit.fingerprints import check_base
from sftkit.metadata import SFTMetadata

__all__ = [
    "Mask",
    "add",
    "subtract",
    "scale",
    "negate",
    "prune",
    "topk_indices",
    "count_from_density",
    "mask_of",
    "restrict",
    "mask_union",
    "mask_intersection",
    "merge",
    "statistics",
    "overlap",
    "layer_group",
    "TensorStatistics",
    "GroupStatistics",
    "SFTStatistics",
    "OverlapCounts",
    "OverlapReport",
]


class Mask(dict[str, torch.Tensor]):
    """Canonical name → int64 sorted unique row-major flat indices of the selected entries.

    A plain ``dict`` (so ``mask[name]`` is the index tensor) that also carries the ``shapes`` of the
    tensors it indexes when known, which a boolean view (:meth:`to_dense`) and overlap reports need.
    Every function accepting a mask also accepts a plain dict of index tensors.
    """

    def __init__(
        self,
        indices: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] = (),
        shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        super().__init__(indices)
        self.shapes: dict[str, tuple[int, ...]] = {k: tuple(int(s) for s in v) for k, v in (shapes or {}).items()}

    @property
    def nnz(self) -> int:
        """Total number of selected entries across tensors."""
        return sum(int(idx.numel()) for idx in self.values())

    def to_dense(self, name: str) -> torch.Tensor:
        """Boolean tensor of ``name``'s shape, true on the selected entries."""
        if name not in self.shapes:
            raise ConfigError(f"mask has no shape recorded for {name!r}; build it with shapes= to get a dense view")
        shape = self.shapes[name]
        idx = self[name]
        out = torch.zeros(math.prod(shape), dtype=torch.bool, device=idx.device)
        out[idx] = True
        return out.reshape(shape)


# --------------------------------------------------------------------------------------------------
# Helpers


def _check_bases(sfts: Sequence[SFT], force: bool) -> None:
    first = sfts[0].metadata.base
    for other in sfts[1:]:
        # One-directional check is enough: matches() is symmetric for fingerprints and dtype samples.
        check_base(first, other.metadata.base, force=force, what="SFT operand")


def _check_shape(name: str, a: tuple[int, ...], b: tuple[int, ...]) -> None:
    if tuple(a) != tuple(b):
        raise ConfigError(f"parameter {name!r} has shape {list(a)} in one operand and {list(b)} in another; "
                          "combine SFTs of the same architecture")


def _weighted_sum(parts: Sequence[tuple[SparseDelta, float]]) -> SparseDelta:
    """Σ wᵢ·δᵢ over the union of supports, float32, exact zeros dropped."""
    shape = parts[0][0].shape
    indices = torch.cat([d.indices for d, _ in parts])
    values = torch.cat([d.values.to(torch.float32) * float(w) for d, w in parts])
    support, inverse = torch.unique(indices, sorted=True, return_inverse=True)
    summed = torch.zeros(support.numel(), dtype=torch.float32, device=values.device)
    summed.index_add_(0, inverse, values)
    keep = summed != 0
    return SparseDelta(shape, support[keep], summed[keep])


def _member(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Boolean tensor: which entries of ``query`` occur in the sorted ``reference``."""
    if reference.numel() == 0 or query.numel() == 0:
        return torch.zeros(query.shape, dtype=torch.bool, device=query.device)
    reference = reference.to(query.device)
    pos = torch.searchsorted(reference, query).clamp_(max=reference.numel() - 1)
    return reference[pos] == query


def _combine_dense(sfts: Sequence[SFT], sparse_names: set[str]) -> dict[str, torch.Tensor]:
    dense: dict[str, torch.Tensor] = {}
    for sft in sfts:
        for name, tensor in sft.dense.items():
            if name in dense:
                if dense[name].shape != tensor.shape or not torch.equal(dense[name], tensor):
                    raise ConfigError(f"two SFTs replace parameter {name!r} with different dense tensors; "
                                      "drop the dense part of one of them before combining")
            else:
                dense[name] = tensor
    clash = sorted(sparse_names & set(dense))
    if clash:
        raise ConfigError(f"parameter {clash[0]!r} is a dense replacement in one SFT and a sparse delta in another; "
                          "drop one of them before combining")
    return dense


def _metadata(sft: SFT, method: str, **hyperparameters: Any) -> SFTMetadata:
    if not hyperparameters:
        return sft.metadata.copy(method=method)
    return sft.metadata.copy(method=method, hyperparameters={**sft.metadata.hyperparameters, **hyperparameters})


def count_from_density(density: float, numel: int, what: str = "density") -> int:
    """K = round(density · numel), after checking ``0 < density <= 1``."""
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 < float(density) <= 1.0:
        raise ConfigError(f"{what} must be in (0, 1], got {density!r}")
    return int(round(float(density) * numel))


# --------------------------------------------------------------------------------------------------
# Exact global top-K by magnitude

_HIGH_BINS = 1 << 15  # |x| as float32 has a zero sign bit, so its int32 bits >> 16 fit in 15 bits
_LOW_BINS = 1 << 16


def _magnitude_bits(name: str, tensor: torch.Tensor, check: bool = False) -> torch.Tensor:
    magnitude = tensor.detach().reshape(-1).to(torch.float32).abs()
    if check and bool(torch.isnan(magnitude).any()):
        raise ConfigError(f"scores of {name!r} contain NaN; check the fine-tuned weights for divergence")
    # For non-negative IEEE floats the int32 bit pattern orders like the value: radix select on bits.
    return magnitude.view(torch.int32)


def _select_bin(histogram: torch.Tensor, k: int) -> tuple[int, int]:
    """Highest bin b whose count of entries >= b reaches ``k``; returns (b, entries strictly above b)."""
    at_or_above = histogram.flip(0).cumsum(0).flip(0)
    b = int(torch.nonzero(at_or_above >= k).max())
    return b, int(at_or_above[b] - histogram[b])


def topk_indices(scores: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Exactly ``k`` entries of largest ``|score|`` across all tensors, as sorted flat indices per name.

    Why not ``torch.topk`` over a concatenation: for 277M parameters that concatenation costs a
    further 1.1 GB, and ``topk`` with K in the millions is slow on CPU and unspecified on ties.
    Instead the K-th largest magnitude is found by a two-pass radix select on the float32 bit
    patterns (a 2¹⁵-bin histogram of the high 16 bits, then a 2¹⁶-bin histogram of the low 16 bits
    inside the chosen bin), one tensor at a time. Entries strictly above that threshold are kept, and
    ties at the threshold are filled in a fixed order (names sorted, then flat index), so the result is
    exactly K and deterministic. Every tensor without a selected entry maps to an empty index tensor.
    """
    names = sorted(scores)
    total = sum(int(scores[n].numel()) for n in names)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k > total:
        raise ConfigError(f"top-K needs 0 <= K <= {total} (the number of scored entries), got {k!r}")
    result: dict[str, torch.Tensor] = {}
    if k == total or k == 0:
        for n in names:
            t = scores[n]
            result[n] = (torch.arange(t.numel(), device=t.device) if k else torch.zeros(0, device=t.device)).to(torch.int64)
        return result

    high = torch.zeros(_HIGH_BINS, dtype=torch.int64)
    for n in names:
        bits = _magnitude_bits(n, scores[n], check=True)
        high += torch.bincount(bits >> 16, minlength=_HIGH_BINS).cpu()
    high_bin, above_high = _select_bin(high, k)

    low = torch.zeros(_LOW_BINS, dtype=torch.int64)
    for n in names:
        bits = _magnitude_bits(n, scores[n])
        low += torch.bincount(bits[(bits >> 16) == high_bin] & 0xFFFF, minlength=_LOW_BINS).cpu()
    low_bin, above_low = _select_bin(low, k - above_high)
    threshold = (high_bin << 16) | low_bin
    ties_left = k - above_high - above_low

    for n in names:
        bits = _magnitude_bits(n, scores[n])
        keep = bits > threshold
        if ties_left > 0:
            ties = torch.nonzero(bits == threshold).reshape(-1)[:ties_left]
            keep[ties] = True
            ties_left -= int(ties.numel())
        result[n] = torch.nonzero(keep).reshape(-1)
    return result


# --------------------------------------------------------------------------------------------------
# Sums and scaling


def add(a: SFT, b: SFT, *, force: bool = False) -> SFT:
    """a + b: values summed over the union of supports (float32; exact zeros dropped).

    Dense tensors of both are kept; the same parameter replaced by two different tensors, or dense in
    one and sparse in the other, raises :class:`ConfigError`.
    """
    _check_bases([a, b], force)
    deltas = _sum_deltas([(a, 1.0), (b, 1.0)])
    dense = _combine_dense([a, b], set(deltas))
    return SFT(deltas, dense, _metadata(a, "add"))


def subtract(a: SFT, b: SFT, *, force: bool = False) -> SFT:
    """a − b over the union of supports (float32; exact zeros such as ``a − a`` dropped).

    Keeps ``a``'s dense tensors. ``b`` must have none: subtracting a replacement is undefined, so it
    raises :class:`ConfigError` rather than silently dropping it.
    """
    _check_bases([a, b], force)
    if b.dense:
        raise ConfigError(f"cannot subtract an SFT with dense tensors (e.g. {sorted(b.dense)[0]!r}); "
                          "a replacement has no inverse, drop b's dense part first")
    deltas = _sum_deltas([(a, 1.0), (b, -1.0)])
    dense = _combine_dense([a], set(deltas))
    return SFT(deltas, dense, _metadata(a, "subtract"))


def _group_by_name(terms: Sequence[tuple[SFT, float]]) -> dict[str, list[tuple[SparseDelta, float]]]:
    parts: dict[str, list[tuple[SparseDelta, float]]] = {}
    for sft, weight in terms:
        for name, delta in sft.deltas.items():
            if name in parts:
                _check_shape(name, parts[name][0][0].shape, delta.shape)
            parts.setdefault(name, []).append((delta, weight))
    return parts


def _sum_deltas(terms: Sequence[tuple[SFT, float]]) -> dict[str, SparseDelta]:
    return {name: _weighted_sum(p) for name, p in _group_by_name(terms).items()}


def scale(sft: SFT, factor: float) -> SFT:
    """factor · sft (float32). Dense replacements are kept unchanged: scaling a delta must not scale a head.

    ``factor == 0`` leaves every sparse tensor empty (exact zeros are dropped).
    """
    factor = float(factor)
    if not math.isfinite(factor):
        raise ConfigError(f"scale factor must be finite, got {factor}")
    deltas = {name: _weighted_sum([(d, factor)]) for name, d in sft.deltas.items()}
    return SFT(deltas, dict(sft.dense), _metadata(sft, "scale", scale=factor))


def negate(sft: SFT) -> SFT:
    """−sft (float32); dense replacements kept unchanged, as in :func:`scale`."""
    deltas = {name: SparseDelta(d.shape, d.indices, -d.values.to(torch.float32)) for name, d in sft.deltas.items()}
    return SFT(deltas, dict(sft.dense), _metadata(sft, "negate"))


# --------------------------------------------------------------------------------------------------
# Pruning and masks


def prune(sft: SFT, num_params: int | None = None, density: float | None = None, scope: str = "global") -> SFT:
    """Keep the top-K entries by ``|value|``; exactly K (or every entry when fewer are stored).

    ``scope="global"`` ranks all tensors together: K is ``num_params`` or ``round(density · numel)``
    where numel counts the tensors the SFT touches. ``scope="tensor"`` keeps ``round(density · numelₜ)``
    in each tensor separately (it needs ``density``). Ties are broken deterministically
    (see :func:`topk_indices`). Dense tensors are kept.
    """
    if (num_params is None) == (density is None):
        raise ConfigError("prune needs exactly one of num_params or density")
    if scope not in ("global", "tensor"):
        raise ConfigError(f"prune scope must be 'global' or 'tensor', got {scope!r}")
    if num_params is not None:
        if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 0:
            raise ConfigError(f"num_params must be a non-negative integer, got {num_params!r}")
        if scope == "tensor":
            raise ConfigError("scope='tensor' keeps a fraction of each tensor; pass density instead of num_params")

    values = {name: d.values for name, d in sft.deltas.items()}
    if scope == "global":
        k = num_params if num_params is not None else count_from_density(density, sft.numel)  # type: ignore[arg-type]
        keep = topk_indices(values, min(k, sft.nnz))
    else:
        keep = {}
        for name, d in sft.deltas.items():
            k_t = count_from_density(density, d.numel)  # type: ignore[arg-type]
            keep.update(topk_indices({name: d.values}, min(k_t, d.nnz)))
    deltas = {name: SparseDelta(d.shape, d.indices[keep[name]], d.values[keep[name]]) for name, d in sft.deltas.items()}
    hyper = {"prune": {"num_params": num_params, "density": density, "scope": scope}}
    return SFT(deltas, dict(sft.dense), _metadata(sft, "prune", **hyper))


def mask_of(sft: SFT) -> Mask:
    """The support of each sparse delta (dense tensors are not part of a mask)."""
    return Mask({n: d.indices for n, d in sft.deltas.items()}, {n: d.shape for n, d in sft.deltas.items()})


def restrict(sft: SFT, mask: Mapping[str, torch.Tensor]) -> SFT:
    """Keep only the stored entries whose position is in ``mask``; tensors absent from it are dropped.

    Dense tensors are kept: a mask selects positions of deltas, a replacement has none.
    """
    deltas: dict[str, SparseDelta] = {}
    for name, d in sft.deltas.items():
        if name not in mask:
            continue
        shapes = getattr(mask, "shapes", {})
        if name in shapes:
            _check_shape(name, d.shape, shapes[name])
        keep = _member(d.indices, mask[name])
        deltas[name] = SparseDelta(d.shape, d.indices[keep], d.values[keep])
    return SFT(deltas, dict(sft.dense), _metadata(sft, "restrict"))


def _merged_shapes(masks: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for m in masks:
        for name, shape in getattr(m, "shapes", {}).items():
            if name in shapes:
                _check_shape(name, shapes[name], shape)
            shapes[name] = tuple(shape)
    return shapes


def mask_union(*masks: Mapping[str, torch.Tensor]) -> Mask:
    """Entries selected by any of ``masks`` (names: union)."""
    shapes = _merged_shapes(masks)
    names = sorted({n for m in masks for n in m})
    out = Mask(shapes={n: s for n, s in shapes.items() if n in names})
    for name in names:
        parts = [m[name] for m in masks if name in m]
        out[name] = torch.unique(torch.cat([p.to(parts[0].device) for p in parts]), sorted=True).to(torch.int64)
    return out


def mask_intersection(*masks: Mapping[str, torch.Tensor]) -> Mask:
    """Entries selected by all of ``masks`` (names: those present in every mask)."""
    if not masks:
        return Mask()
    shapes = _merged_shapes(masks)
    names = sorted(set.intersection(*(set(m) for m in masks)))
    out = Mask(shapes={n: s for n, s in shapes.items() if n in names})
    for name in names:
        current = masks[0][name]
        for m in masks[1:]:
            current = current[_member(current, m[name])]
        out[name] = current
    return out


# --------------------------------------------------------------------------------------------------
# Merging


def merge(
    sfts: Sequence[SFT],
    method: str = "sum",
    weights: Sequence[float] | None = None,
    ties_density: float | None = None,
    *,
    density: float | None = None,
    force: bool = False,
) -> SFT:
    """Merge several SFTs into one.

    * ``sum``: Σ wᵢ·δᵢ (weights default to 1).
    * ``mean``: Σ wᵢ·δᵢ / Σ wᵢ — the average of the fine-tuned models, an SFT missing an entry
      counting as a zero delta there.
    * ``ties``: TIES-Merging (Yadav et al., 2023). Each δᵢ is first trimmed to its top
      ``ties_density`` fraction by magnitude (global over its tensors; skipped when ``None``), the sign
      of every entry is elected as the sign of Σ wᵢ·δ̂ᵢ, and the merged value is the disjoint weighted
      mean Σ wᵢ·δ̂ᵢ / Σ wᵢ over the SFTs whose trimmed value is non-zero and agrees with the elected
      sign. Entries whose elected sign is 0 are dropped. Scale the result with :func:`scale` for the
      paper's λ.

    ``density`` is accepted as a synonym of ``ties_density``. Dense tensors follow :func:`add`.
    """
    if not sfts:
        raise ConfigError("merge needs at least one SFT")
    if method not in ("sum", "mean", "ties"):
        raise ConfigError(f"merge method must be 'sum', 'mean' or 'ties', got {method!r}")
    if density is not None:
        if ties_density is not None:
            raise ConfigError("pass ties_density or density to merge, not both")
        ties_density = density
    if ties_density is not None and method != "ties":
        raise ConfigError(f"ties_density only applies to method='ties', not {method!r}")
    w = [1.0] * len(sfts) if weights is None else [float(x) for x in weights]
    if len(w) != len(sfts):
        raise ConfigError(f"merge got {len(w)} weights for {len(sfts)} SFTs; pass one weight per SFT")
    if not all(math.isfinite(x) for x in w):
        raise ConfigError("merge weights must be finite")
    _check_bases(sfts, force)

    if method == "ties":
        trimmed = [prune(s, density=ties_density) if ties_density is not None else s for s in sfts]
        deltas = _ties(trimmed, w)
    else:
        if method == "mean":
            total = sum(w)
            if total == 0:
                raise ConfigError("merge method 'mean' needs weights with a non-zero sum")
            w = [x / total for x in w]
        deltas = _sum_deltas(list(zip(sfts, w, strict=True)))
    dense = _combine_dense(sfts, set(deltas))
    hyper = {"merge": {"method": method, "weights": weights and list(map(float, weights)), "ties_density": ties_density,
                       "count": len(sfts)}}
    return SFT(deltas, dense, sfts[0].metadata.copy(method="merge", hyperparameters=hyper))


def _ties(sfts: Sequence[SFT], weights: Sequence[float]) -> dict[str, SparseDelta]:
    out: dict[str, SparseDelta] = {}
    for name, plist in _group_by_name(list(zip(sfts, weights, strict=True))).items():
        indices = torch.cat([d.indices for d, _ in plist])
        values = torch.cat([d.values.to(torch.float32) for d, _ in plist])
        w = torch.cat([torch.full((d.nnz,), float(wt), dtype=torch.float32, device=values.device) for d, wt in plist])
        support, inverse = torch.unique(indices, sorted=True, return_inverse=True)
        n = support.numel()
        elected = torch.zeros(n, dtype=torch.float32, device=values.device).index_add_(0, inverse, w * values).sign()
        agree = (values != 0) & (values.sign() == elected[inverse])
        numerator = torch.zeros(n, dtype=torch.float32, device=values.device).index_add_(0, inverse, w * values * agree)
        denominator = torch.zeros(n, dtype=torch.float32, device=values.device).index_add_(0, inverse, w * agree)
        keep = (elected != 0) & (denominator != 0)
        merged = numerator[keep] / denominator[keep]
        nonzero = merged != 0
        out[name] = SparseDelta(plist[0][0].shape, support[keep][nonzero], merged[nonzero])
    return out


# --------------------------------------------------------------------------------------------------
# Statistics and overlap

_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(?:^|\.)embeddings\.")
HEAD_PREFIXES = ("lm_head.", "classifier.", "qa_outputs.", "cls.", "pre_classifier.", "score.", "heads.")


def layer_group(name: str) -> str:
    """Coarse location of a canonical parameter: ``embeddings``, ``layer.<i>``, ``heads`` or ``other``."""
    if name.startswith(HEAD_PREFIXES):
        return "heads"
    match = _LAYER.search(name)
    if match:
        return f"layer.{int(match.group(1))}"
    if _EMBEDDINGS.search(name):
        return "embeddings"
    return "other"


def _group_order(group: str) -> tuple[int, int]:
    if group == "embeddings":
        return (0, 0)
    if group.startswith("layer."):
        return (1, int(group.split(".")[1]))
    return (2, 0) if group == "heads" else (3, 0)


@dataclass
class TensorStatistics:
    nnz: int
    numel: int
    density: float
    l2: float
    max_abs: float


@dataclass
class GroupStatistics:
    tensors: int
    nnz: int
    numel: int
    density: float
    l2: float


@dataclass
class SFTStatistics:
    """Sizes and norms of an SFT's sparse part, in total, per tensor and per layer group.

    ``numel`` counts the tensors the SFT touches; dense replacements are listed separately by size.
    """

    nnz: int
    numel: int
    density: float
    l2: float
    tensors: dict[str, TensorStatistics] = field(default_factory=dict)
    groups: dict[str, GroupStatistics] = field(default_factory=dict)
    dense: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def statistics(sft: SFT) -> SFTStatistics:
    """Per-tensor, per-layer and total nnz, density, L2 norm and largest magnitude of the sparse part."""
    tensors: dict[str, TensorStatistics] = {}
    sq: dict[str, float] = {}
    for name, d in sft.deltas.items():
        values = d.values.to(torch.float32)
        sq[name] = float(values.double().pow(2).sum()) if d.nnz else 0.0
        max_abs = float(values.abs().max()) if d.nnz else 0.0
        tensors[name] = TensorStatistics(d.nnz, d.numel, d.density, math.sqrt(sq[name]), max_abs)
    accum: dict[str, list[float]] = {}
    for name, t in tensors.items():
        acc = accum.setdefault(layer_group(name), [0, 0, 0, 0.0])
        acc[0] += 1
        acc[1] += t.nnz
        acc[2] += t.numel
        acc[3] += sq[name]
    groups = {
        g: GroupStatistics(int(a[0]), int(a[1]), int(a[2]), a[1] / a[2] if a[2] else 0.0, math.sqrt(a[3]))
        for g, a in sorted(accum.items(), key=lambda item: _group_order(item[0]))
    }
    nnz, numel = sft.nnz, sft.numel
    return SFTStatistics(
        nnz=nnz,
        numel=numel,
        density=nnz / numel if numel else 0.0,
        l2=math.sqrt(sum(sq.values())),
        tensors=tensors,
        groups=groups,
        dense={name: int(t.numel()) for name, t in sft.dense.items()},
    )


@dataclass
class OverlapCounts:
    size_a: int
    size_b: int
    intersection: int
    union: int

    @property
    def jaccard(self) -> float:
        """|A∩B| / |A∪B|, defined as 0.0 when both are empty."""
        return self.intersection / self.union if self.union else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "jaccard": self.jaccard}


@dataclass
class OverlapReport:
    """How far two supports coincide: in total, per tensor and per layer group."""

    total: OverlapCounts
    tensors: dict[str, OverlapCounts] = field(default_factory=dict)
    groups: dict[str, OverlapCounts] = field(default_factory=dict)

    @property
    def intersection(self) -> int:
        return self.total.intersection

    @property
    def union(self) -> int:
        return self.total.union

    @property
    def jaccard(self) -> float:
        return self.total.jaccard

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total.to_dict(),
            "tensors": {n: c.to_dict() for n, c in self.tensors.items()},
            "groups": {g: c.to_dict() for g, c in self.groups.items()},
        }


def _as_mask(x: SFT | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return mask_of(x) if isinstance(x, SFT) else x


def overlap(a: SFT | Mapping[str, torch.Tensor], b: SFT | Mapping[str, torch.Tensor]) -> OverlapReport:
    """|A∩B|, |A∪B| and Jaccard of the supports of two SFTs (or masks), per tensor, per layer, in total."""
    ma, mb = _as_mask(a), _as_mask(b)
    _merged_shapes([ma, mb])
    empty = torch.zeros(0, dtype=torch.int64)
    tensors: dict[str, OverlapCounts] = {}
    for name in sorted(set(ma) | set(mb)):
        ia, ib = ma.get(name, empty), mb.get(name, empty)
        inter = int(_member(ia, ib).sum())
        tensors[name] = OverlapCounts(int(ia.numel()), int(ib.numel()), inter, int(ia.numel() + ib.numel()) - inter)

    def total_of(counts: Iterable[OverlapCounts]) -> OverlapCounts:
        out = OverlapCounts(0, 0, 0, 0)
        for c in counts:
            out.size_a += c.size_a
            out.size_b += c.size_b
            out.intersection += c.intersection
            out.union += c.union
        return out

    by_group: dict[str, list[OverlapCounts]] = {}
    for name, c in tensors.items():
        by_group.setdefault(layer_group(name), []).append(c)
    groups = {g: total_of(cs) for g, cs in sorted(by_group.items(), key=lambda item: _group_order(item[0]))}
    return OverlapReport(total_of(tensors.values()), tensors, groups)

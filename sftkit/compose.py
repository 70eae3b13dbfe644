"""The composer: apply sparse fine-tunings to a live model, fused, revertibly.

θ = θ0 + Σᵢ sᵢ·φᵢ. Every delta that touches one parameter is applied in a single fused pass: their
indices and (scaled, float32) values are concatenated once at :func:`prepare` time and land with one
``index_add_`` per parameter, so composing a language SFT and a task SFT costs one scatter, not two.

* **Revertible by restoring, not subtracting.** ``θ + φ − φ`` is not ``θ`` in floating point, so a
  revertible application gathers the original values of the touched entries first and
  :meth:`Composition.revert` writes them back: bit-exact for every dtype.
* **Low precision rounds once.** On a bf16/fp16 parameter the fused deltas are first summed in float32
  (positions touched by several SFTs are coalesced), added to the float32 view of the touched entries,
  and cast back once, so the result does not depend on how the deltas were grouped into SFTs.
* **Canonical names.** Deltas name parameters canonically (:mod:`sftkit.naming`): a language SFT
  trained with a masked-LM head applies to a sequence classifier, and a tied embedding is one
  parameter, updated once, whatever alias it is listed under.
* **Sequential semantics for dense tensors.** The SFTs act as if applied one after another: a sparse
  delta adds, a dense tensor (a task head) *replaces* the parameter, so when several SFTs carry a dense
  value for one parameter the last wins, and sparse deltas listed before it are discarded for that
  parameter. Scales apply to sparse deltas only.
* **Device discipline.** :func:`prepare` moves all indices and values to the model's device in one
  transfer per device and dtype; the apply loop then makes no host round trip (no ``.item()``,
  ``.tolist()`` or ``.cpu()``), so a :class:`PreparedComposition` can be applied and reverted
  repeatedly at the speed of a bare ``index_add_``.

On CUDA, float32 deltas of different SFTs that touch the same entry are added by atomics in an
unspecified order (last-bit differences from the CPU result); enable
``torch.use_deterministic_algorithms(True)`` for run-to-run identical sums.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from sftkit.delta import SFT, SparseDelta
from sftkit.errors import ConfigError, FormatError, MissingParameterError
from sftkit.fingerprints import check_base, describe_base
from sftkit.metadata import BaseModelInfo
from sftkit.naming import alias_map, canonical_parameters, canonicalize_name

__all__ = [
    "Composition",
    "PreparedComposition",
    "PreparedParameter",
    "apply",
    "apply_to_state_dict",
    "composed",
    "forget",
    "prepare",
]

logger = logging.getLogger("sftkit")

LOW_PRECISION = (torch.bfloat16, torch.float16)
_NOTICE_NAMES = 4

# Compositions live on a model in LIFO order (``None`` marks a permanent, revertible=False one); keyed
# weakly so a dropped model takes its records along.
_STACKS: weakref.WeakKeyDictionary[nn.Module, list[Composition | None]] = weakref.WeakKeyDictionary()
# The base description of a model taken before its first composition: once deltas are applied the
# model's own fingerprint no longer matches, yet further SFTs for the same base must still compose.
_BASE_INFO: weakref.WeakKeyDictionary[nn.Module, BaseModelInfo] = weakref.WeakKeyDictionary()

SFTs = SFT | Sequence[SFT]
Scales = float | Sequence[float] | None
Saved = list[tuple["PreparedParameter", torch.Tensor | None, torch.Tensor | None]]
"""Per applied parameter: its work item, the full original (dense replacement) or the touched originals."""


@dataclass
class PreparedParameter:
    """The fused work for one target parameter, resident on the parameter's device."""

    name: str
    tensor: torch.Tensor
    """The target tensor itself (shares storage with the model parameter)."""
    indices: torch.Tensor | None = None
    """Flat int64 positions; may repeat when several SFTs touch one entry of a float32/64 parameter."""
    values: torch.Tensor | None = None
    """Scaled values aligned with ``indices``: the parameter's dtype, or float32 for bf16/fp16."""
    dense: torch.Tensor | None = None
    """Replacement value applied before the sparse part (parameter dtype and device)."""
    flat: torch.Tensor | None = None
    """``tensor.view(-1)``, made once so the hot loop does not."""

    @property
    def low_precision(self) -> bool:
        return self.tensor.dtype in LOW_PRECISION

    @property
    def nnz(self) -> int:
        return 0 if self.indices is None else int(self.indices.numel())


@dataclass
class PreparedComposition:
    """SFTs resolved against one model, fused per parameter and moved to its device.

    Build it once with :func:`prepare` and pass it to :func:`apply` as often as needed: repeated
    apply/revert cycles then skip name resolution, checks, fusion and host-to-device transfers.
    """

    parameters: list[PreparedParameter]
    skipped: list[str] = field(default_factory=list)
    """Names of deltas/dense tensors skipped because the target lacks the parameter."""
    base_info: BaseModelInfo | None = None
    """Description of the target base the SFTs were checked against (``None`` for state dicts)."""
    _model: weakref.ReferenceType[nn.Module] | None = None
    _buffers: list[torch.Tensor | None] | None = None
    _buffers_busy: bool = False

    @property
    def nnz(self) -> int:
        """Number of (index, value) pairs the fused apply scatters."""
        return sum(p.nnz for p in self.parameters)

    def _take_buffers(self) -> list[torch.Tensor | None] | None:
        """Reusable save buffers for revertible applies (fresh large allocations cost page faults)."""
        if self._buffers_busy:
            return None
        if self._buffers is None:
            self._buffers = [
                torch.empty(p.nnz, dtype=p.tensor.dtype, device=p.tensor.device)
                if p.indices is not None and p.dense is None and not p.low_precision
                else None
                for p in self.parameters
            ]
        self._buffers_busy = True
        return self._buffers


class Composition:
    """The record of one application: what was changed and, if revertible, the values it replaced."""

    def __init__(
        self,
        model: nn.Module | None,
        prepared: PreparedComposition,
        saved: Saved | None,
        buffers_taken: bool,
    ) -> None:
        self._model = weakref.ref(model) if model is not None else None
        self.prepared = prepared
        self._saved = saved
        self._buffers_taken = buffers_taken
        self.reverted = False

    @property
    def revertible(self) -> bool:
        return self._saved is not None

    @property
    def skipped(self) -> list[str]:
        return self.prepared.skipped

    @property
    def nnz(self) -> int:
        return self.prepared.nnz

    def revert(self) -> None:
        """Restore the saved original values bit-exactly. Reverting twice is a no-op.

        Compositions on one model must be reverted in reverse order of application (a later one may
        have touched the same entries).
        """
        if self.reverted:
            return
        if self._saved is None:
            raise ConfigError(
                "this composition was applied with revertible=False; reload the base model to undo it"
            )
        model = self._model() if self._model is not None else None
        stack = _STACKS.get(model) if model is not None else None
        if stack and stack[-1] is not self:
            raise ConfigError(
                "a later composition on this model is still applied (or was applied with revertible=False); "
                "revert compositions in reverse order of application"
            )
        _restore(self._saved)
        self._saved = []
        self.reverted = True
        if self._buffers_taken:
            self.prepared._buffers_busy = False
        if stack is not None:
            stack.pop()
            if not stack:
                _STACKS.pop(model, None)
                _BASE_INFO.pop(model, None)

    def __enter__(self) -> Composition:
        return self

    def __exit__(self, *exc: object) -> None:
        self.revert()


# ---------------------------------------------------------------------------------------------
# public entry points


def prepare(
    model: nn.Module, sfts: SFTs, scales: Scales = None, *, strict: bool = False, force: bool = False
) -> PreparedComposition:
    """Check, resolve and fuse ``sfts`` for ``model`` once; the result is reusable with :func:`apply`.

    Raises :class:`BaseMismatchError` when an SFT was made for another base (unless ``force``),
    :class:`MissingParameterError` in ``strict`` mode when the model lacks a parameter an SFT touches
    (otherwise such deltas are skipped with one notice per SFT), and :class:`FormatError` on a shape
    mismatch. The target's base fingerprint is computed once per call.
    """
    sft_list, scale_list = _normalise(sfts, scales)
    base_info = _base_info_of(model)
    for i, sft in enumerate(sft_list):
        check_base(sft.metadata.base, base_info, force=force, what=_label(sft, i))
    params = canonical_parameters(model)
    targets = {name: info.parameter.detach() for name, info in params.items()}
    aliases = alias_map(model)

    def resolve(name: str) -> str | None:
        return aliases.get(name) or aliases.get(canonicalize_name(name))

    prepared = _prepare(
        targets, resolve, sft_list, scale_list, strict=strict, target_label=type(model).__name__
    )
    prepared.base_info = base_info
    prepared._model = weakref.ref(model)
    return prepared


def apply(
    model: nn.Module,
    sfts: SFTs | PreparedComposition,
    scales: Scales = None,
    *,
    strict: bool = False,
    force: bool = False,
    revertible: bool = True,
) -> Composition:
    """Apply one or many SFTs to ``model`` in place and return the :class:`Composition`.

    ``sfts`` is an SFT, a sequence of SFTs, or a :class:`PreparedComposition` for this model (then
    ``scales``/``strict``/``force`` were fixed by :func:`prepare`). ``scales`` is one factor for all
    SFTs or one per SFT (default 1). ``revertible=False`` saves nothing (the CLI's merge-and-save).
    """
    if isinstance(sfts, PreparedComposition):
        if scales is not None:
            raise ConfigError("scales are fixed when a composition is prepared; pass them to prepare()")
        if sfts._model is None or sfts._model() is not model:
            raise ConfigError(
                "this PreparedComposition was prepared for a different model; call prepare(model, sfts) again"
            )
        prepared = sfts
    else:
        prepared = prepare(model, sfts, scales, strict=strict, force=force)
    composition = _run(prepared, revertible=revertible, model=model)
    stack = _STACKS.setdefault(model, [])
    if not stack and prepared.base_info is not None:
        _BASE_INFO[model] = prepared.base_info
    stack.append(composition if revertible else None)
    return composition


@contextmanager
def composed(
    model: nn.Module,
    sfts: SFTs | PreparedComposition,
    scales: Scales = None,
    *,
    strict: bool = False,
    force: bool = False,
) -> Iterator[Composition]:
    """Apply ``sfts`` for the duration of a ``with`` block and revert on exit, even on an exception."""
    composition = apply(model, sfts, scales, strict=strict, force=force, revertible=True)
    try:
        yield composition
    finally:
        composition.revert()


def forget(model: nn.Module) -> None:
    """Drop sftkit's record of the compositions applied to ``model``.

    Call it after restoring the base weights by other means (``load_state_dict``, a copy): the
    model's own fingerprint is then checked again on the next :func:`apply`, and outstanding
    :class:`Composition` objects no longer guard the revert order.
    """
    _STACKS.pop(model, None)
    _BASE_INFO.pop(model, None)


def apply_to_state_dict(
    state: Mapping[str, torch.Tensor],
    sfts: SFTs,
    scales: Scales = None,
    *,
    strict: bool = False,
    force: bool = False,
    inplace: bool = False,
    aliases: Mapping[str, str] | None = None,
    base_info: BaseModelInfo | None = None,
) -> dict[str, torch.Tensor]:
    """Compose ``sfts`` onto a state dict and return the result.

    Keys may be canonical (``encoder.layer.0…``) or full model names (``roberta.encoder.layer.0…``);
    full names are canonicalised with :func:`sftkit.naming.canonicalize_name`, or through
    ``aliases`` (e.g. ``alias_map(model)``, which also knows tied names). Keys that resolve to the
    same canonical parameter receive the same composed tensor.

    By default returns a *new* dict: touched tensors are composed copies, untouched ones are shared
    with ``state``, and ``state`` is left unchanged. ``inplace=True`` modifies the tensors of
    ``state`` itself and returns a dict over them. A state dict carries no base identity, so the
    fingerprint check runs only when ``base_info`` (e.g. ``describe_base(base_model)``) is given.
    """
    sft_list, scale_list = _normalise(sfts, scales)
    if base_info is not None:
        for i, sft in enumerate(sft_list):
            check_base(sft.metadata.base, base_info, force=force, what=_label(sft, i))

    def canonical_of(key: str) -> str:
        return aliases.get(key, canonicalize_name(key)) if aliases is not None else canonicalize_name(key)

    # Group keys that name one parameter: same canonical name, or the same storage (tied weights in a
    # live model's state dict); each group is composed once.
    group_of: dict[str, str] = {}
    keys_of: dict[str, list[str]] = {}
    by_storage: dict[tuple[object, ...], str] = {}
    for key, tensor in state.items():
        canonical = canonical_of(key)
        storage = _storage_id(tensor)
        rep = (
            group_of.get(canonical) or (by_storage.get(storage) if storage is not None else None) or canonical
        )
        group_of.setdefault(canonical, rep)
        if storage is not None:
            by_storage.setdefault(storage, rep)
        keys_of.setdefault(rep, []).append(key)
    targets = {rep: state[keys[0]].detach() for rep, keys in keys_of.items()}

    def resolve(name: str) -> str | None:
        for candidate in (name, canonical_of(name), canonicalize_name(name)):
            if candidate in group_of:
                return group_of[candidate]
        return None

    prepared = _prepare(targets, resolve, sft_list, scale_list, strict=strict, target_label="the state dict")
    if not inplace:
        for item in prepared.parameters:
            item.tensor = item.tensor.clone(memory_format=torch.contiguous_format)
            item.flat = item.tensor.view(-1)
    _run(prepared, revertible=False, model=None)
    result = dict(state)
    with torch.no_grad():
        for item in prepared.parameters:
            for key in keys_of[item.name]:
                if inplace:
                    if state[key].data_ptr() != item.tensor.data_ptr():
                        state[key].copy_(item.tensor)  # an untied copy of the same parameter
                else:
                    result[key] = item.tensor
    return result


# ---------------------------------------------------------------------------------------------
# internals


def _normalise(sfts: SFTs, scales: Scales) -> tuple[list[SFT], list[float]]:
    sft_list = [sfts] if isinstance(sfts, SFT) else list(sfts)
    for i, sft in enumerate(sft_list):
        if not isinstance(sft, SFT):
            raise ConfigError(
                f"item {i + 1} of sfts is a {type(sft).__name__}, not an SFT; load files with sftkit.load_file"
            )
    if scales is None:
        scale_list = [1.0] * len(sft_list)
    elif isinstance(scales, (int, float)):
        scale_list = [float(scales)] * len(sft_list)
    else:
        scale_list = [float(s) for s in scales]
        if len(scale_list) != len(sft_list):
            raise ConfigError(
                f"{len(scale_list)} scales given for {len(sft_list)} SFTs; give one per SFT or none"
            )
    return sft_list, scale_list


def _storage_id(tensor: object) -> tuple[object, ...] | None:
    if not torch.is_tensor(tensor) or tensor.numel() == 0:
        return None
    return (
        tensor.device,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
    )


def _label(sft: SFT, index: int) -> str:
    meta = sft.metadata
    about = meta.language or meta.task
    kind = f"{meta.kind} SFT" if meta.kind != "other" else "SFT"
    return f"{kind} #{index + 1}" + (f" ({about})" if about else "")


def _base_info_of(model: nn.Module) -> BaseModelInfo:
    cached = _BASE_INFO.get(model)
    return cached if cached is not None else describe_base(model)


@dataclass
class _Plan:
    """Contributions gathered for one target before fusion, in SFT order."""

    tensor: torch.Tensor
    sparse: list[tuple[SparseDelta, float]] = field(default_factory=list)
    dense: torch.Tensor | None = None


def _prepare(
    targets: Mapping[str, torch.Tensor],
    resolve: Callable[[str], str | None],
    sfts: list[SFT],
    scales: list[float],
    *,
    strict: bool,
    target_label: str,
) -> PreparedComposition:
    plans: dict[str, _Plan] = {}
    skipped: list[str] = []
    for i, (sft, scale) in enumerate(zip(sfts, scales, strict=True)):
        missing: list[str] = []
        seen: dict[str, str] = {}
        entries: list[tuple[str, SparseDelta | torch.Tensor]] = [*sft.deltas.items(), *sft.dense.items()]
        for name, entry in entries:
            canonical = resolve(name)
            if canonical is None:
                if strict:
                    raise MissingParameterError(
                        f"{name}: {_label(sft, i)} changes a parameter {target_label} does not have; "
                        "drop strict=True / --strict to skip it"
                    )
                missing.append(name)
                continue
            if canonical in seen:
                raise FormatError(
                    f"{_label(sft, i)} lists both {seen[canonical]!r} and {name!r}, which are one (tied) parameter "
                    f"{canonical!r} of {target_label}; keep one"
                )
            seen[canonical] = name
            tensor = targets[canonical]
            shape = entry.shape if isinstance(entry, SparseDelta) else tuple(entry.shape)
            if tuple(shape) != tuple(tensor.shape):
                raise FormatError(
                    f"{name}: {_label(sft, i)} has shape {list(shape)} but the parameter of {target_label} has "
                    f"{list(tensor.shape)}; was the SFT made for another model size?"
                )
            if not tensor.is_floating_point():
                raise ConfigError(
                    f"{name}: {target_label} stores it as {tensor.dtype}; only floating-point tensors compose"
                )
            plan = plans.setdefault(canonical, _Plan(tensor))
            if isinstance(entry, SparseDelta):
                if scale != 0.0 and entry.nnz:
                    plan.sparse.append((entry, scale))
            else:
                plan.sparse.clear()  # a replacement discards what earlier SFTs added
                plan.dense = entry
        if missing:
            shown = ", ".join(missing[:_NOTICE_NAMES]) + (
                f", +{len(missing) - _NOTICE_NAMES} more" if len(missing) > _NOTICE_NAMES else ""
            )
            logger.warning(
                "skipping %d parameters %s does not have (from %s): %s",
                len(missing),
                target_label,
                _label(sft, i),
                shown,
            )
            skipped.extend(missing)
    plans = {n: p for n, p in plans.items() if p.sparse or p.dense is not None}
    for name, plan in plans.items():
        if plan.tensor.device.type == "meta":
            raise ConfigError(
                f"{name}: the parameter is on the meta device (not loaded); load the model fully before composing"
            )
        if not plan.tensor.is_contiguous():
            raise ConfigError(f"{name}: the target tensor is not contiguous; pass a contiguous copy")
    _check_index_bounds(plans)
    moved = _move_once(plans)
    parameters = [_fuse(name, plan, moved) for name, plan in plans.items()]
    return PreparedComposition(parameters=parameters, skipped=skipped)


def _check_index_bounds(plans: Mapping[str, _Plan]) -> None:
    """One host read for all deltas: the first and last index of each (indices are sorted) must be in range."""
    checks = [(name, delta) for name, plan in plans.items() for delta, _ in plan.sparse]
    if not checks:
        return
    by_device: dict[torch.device, list[tuple[str, SparseDelta]]] = {}
    for name, delta in checks:
        by_device.setdefault(delta.indices.device, []).append((name, delta))
    for group in by_device.values():
        ends = torch.stack([torch.stack([d.indices[0], d.indices[-1]]) for _, d in group]).tolist()
        _raise_out_of_range(group, ends)


def _raise_out_of_range(group: list[tuple[str, SparseDelta]], ends: list[list[int]]) -> None:
    for (name, delta), (first, last) in zip(group, ends, strict=True):
        if first < 0 or last >= delta.numel:
            raise FormatError(
                f"{name}: delta index out of range for shape {list(delta.shape)}; the SFT is corrupt"
            )


def _move_once(plans: Mapping[str, _Plan]) -> dict[int, torch.Tensor]:
    """Move every delta's indices and values (and dense tensors) to its target's device in one copy per
    (device, dtype): concatenate on the host, transfer, split into views. Keyed by ``id`` of the source."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for plan in plans.values():
        device = plan.tensor.device
        sources = [t for delta, _ in plan.sparse for t in (delta.indices, delta.values)]
        if plan.dense is not None:
            sources.append(plan.dense)
        for tensor in sources:
            if tensor.device != device:
                groups.setdefault((device, tensor.dtype), []).append(tensor)
    moved: dict[int, torch.Tensor] = {}
    for (device, _), tensors in groups.items():
        unique = list({id(t): t for t in tensors}.values())
        # non_blocking only towards an accelerator: a device-to-host copy must be complete before use
        flat = torch.cat([t.reshape(-1) for t in unique]).to(device, non_blocking=device.type != "cpu")
        for src, piece in zip(unique, torch.split(flat, [t.numel() for t in unique]), strict=True):
            moved[id(src)] = piece.view(src.shape)
    return moved


def _fuse(name: str, plan: _Plan, moved: Mapping[int, torch.Tensor]) -> PreparedParameter:
    """Concatenate the contributions to one parameter; coalesce repeated positions for bf16/fp16."""

    def here(t: torch.Tensor) -> torch.Tensor:
        return moved.get(id(t), t)

    tensor = plan.tensor
    item = PreparedParameter(name=name, tensor=tensor, flat=tensor.view(-1))
    if plan.dense is not None:
        item.dense = here(plan.dense).to(dtype=tensor.dtype)
    if not plan.sparse:
        return item
    value_dtype = torch.float32 if tensor.dtype in LOW_PRECISION else tensor.dtype
    indices, values = [], []
    for delta, scale in plan.sparse:
        v = here(delta.values).to(value_dtype)
        indices.append(here(delta.indices))
        values.append(v if scale == 1.0 else v * scale)
    if len(indices) == 1:
        item.indices, item.values = indices[0], values[0]
        return item
    idx, val = torch.cat(indices), torch.cat(values)
    if tensor.dtype in LOW_PRECISION:
        # gather/add/scatter needs each position once: sum the float32 contributions per position first
        idx, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        val = torch.zeros(idx.numel(), dtype=torch.float32, device=val.device).index_add_(0, inverse, val)
    item.indices, item.values = idx, val
    return item


def _run(prepared: PreparedComposition, *, revertible: bool, model: nn.Module | None) -> Composition:
    """The hot loop: per parameter one replacement and/or one fused scatter; no host round trips.

    If it fails midway (e.g. out of device memory) a revertible application undoes what it did.
    """
    buffers = prepared._take_buffers() if revertible else None
    saved: Saved | None = [] if revertible else None
    try:
        with torch.no_grad():
            for position, item in enumerate(prepared.parameters):
                saved_dense = saved_sparse = None
                if item.dense is not None:
                    if revertible:
                        saved_dense = item.tensor.clone()
                    item.tensor.copy_(item.dense)
                flat = item.flat
                if item.indices is not None and item.values is not None and flat is not None:
                    if item.low_precision:
                        old = flat.index_select(0, item.indices)
                        flat.index_copy_(
                            0, item.indices, (old.to(torch.float32) + item.values).to(flat.dtype)
                        )
                        if revertible and saved_dense is None:
                            saved_sparse = old
                    else:
                        if revertible and saved_dense is None:
                            buffer = buffers[position] if buffers is not None else None
                            if buffer is not None:
                                saved_sparse = torch.index_select(flat, 0, item.indices, out=buffer)
                            else:
                                saved_sparse = flat.index_select(0, item.indices)
                        flat.index_add_(0, item.indices, item.values)
                if saved is not None:
                    saved.append((item, saved_dense, saved_sparse))
    except BaseException:
        if saved:
            _restore(saved)
        if buffers is not None:
            prepared._buffers_busy = False
        raise
    return Composition(model, prepared, saved, buffers_taken=buffers is not None)


def _restore(saved: Saved) -> None:
    """Write the saved original values back, last application first."""
    with torch.no_grad():
        for item, saved_dense, saved_sparse in reversed(saved):
            if saved_dense is not None:
                item.tensor.copy_(saved_dense)
            elif saved_sparse is not None and item.indices is not None and item.flat is not None:
                item.flat.index_copy_(0, item.indices, saved_sparse)

"""Mask selection and extraction of an SFT from a base and a fine-tuned model.

Both LT-SFT (Ansell et al., 2022) and DeFT-X choose the K parameters a sparse fine-tuning may
change from a full fine-tuning's difference δ = θ1 − θ0: LT-SFT by the global top-K of |δ|, DeFT-X by
the global top-K of |denoise(δ)| (see :mod:`sftkit.denoising`). :func:`select_mask` is that choice, used
by the trainer between its two phases; :func:`extract` applies it to two models and stores the
result as an :class:`~sftkit.delta.SFT`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from sftkit.arithmetic import Mask, count_from_density, topk_indices
from sftkit.delta import SFT, SparseDelta
from sftkit.denoising import DenoiseConfig
from sftkit.denoising import denoise as denoise_deltas
from sftkit.errors import ConfigError
from sftkit.fingerprints import describe_base
from sftkit.metadata import SFTMetadata
from sftkit.naming import canonical_parameters

__all__ = ["topk_mask", "select_mask", "extract"]

_VALUES = ("original", "denoised")


def topk_mask(scores: Mapping[str, torch.Tensor], num_params: int) -> Mask:
    """Global top-K of |score| across all tensors: exactly K entries, ties broken by name then position.

    Memory stays near one tensor's worth beyond the scores themselves (no concatenation); see
    :func:`sftkit.arithmetic.topk_indices`. Raises :class:`ConfigError` unless 0 ≤ K ≤ total entries.
    """
    total = sum(int(t.numel()) for t in scores.values())
    if isinstance(num_params, bool) or not isinstance(num_params, int) or not 0 <= num_params <= total:
        raise ConfigError(f"num_params must be an integer between 0 and the {total} eligible parameters, got {num_params!r}")
    indices = topk_indices(scores, num_params)
    return Mask({name: indices[name] for name in scores}, {name: tuple(t.shape) for name, t in scores.items()})


def select_mask(deltas: Mapping[str, torch.Tensor], num_params: int, denoise: DenoiseConfig | None = None) -> Mask:
    """The LT-SFT mask (global top-K of |δ|) or, given a :class:`DenoiseConfig`, the DeFT-X mask.

    ``deltas`` maps canonical names to θ1 − θ0 of every parameter eligible for the sparse fine-tuning.
    """
    if denoise is None:
        return topk_mask(deltas, num_params)
    return topk_mask(denoise_deltas(dict(deltas), denoise), num_params)


def _canonical_state(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(model, nn.Module):
        return {name: info.parameter.detach() for name, info in canonical_parameters(model).items()}
    return {name: t.detach() for name, t in model.items() if torch.is_tensor(t)}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _patterns(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def extract(
    base: nn.Module | Mapping[str, torch.Tensor],
    finetuned: nn.Module | Mapping[str, torch.Tensor],
    *,
    num_params: int | None = None,
    density: float | None = None,
    denoise: DenoiseConfig | None = None,
    values: str = "original",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    dense: str | Sequence[str] = (),
    metadata: SFTMetadata | None = None,
    progress: bool = False,
) -> SFT:
    """Extract the K-parameter SFT that moves ``base`` towards ``finetuned``.

    ``base`` and ``finetuned`` are models (parameters by canonical name, tied weights once) or
    canonical state dicts. A floating-point parameter present in both is *eligible* unless filtered
    by ``include``/``exclude`` (fnmatch patterns over canonical names; a filtered-out name is left out
    of the SFT entirely). K is ``num_params`` or ``round(density · eligible numel)``; the mask is the
    global top-K of |δ|, or of the DeFT-X denoised δ when ``denoise`` is given.

    ``values="original"`` (default) stores the original δ on the mask even when denoising chose it:
    the denoised matrix is only a better *ranking* of which entries matter. On the mask, the original
    δ reproduces θ1 exactly, and LT-SFT's second phase retrains the values on the mask anyway, so the
    low-rank approximation's values would only add error. ``values="denoised"`` stores the denoised
    values instead (a one-shot, training-free DeFT-X SFT).

    Parameters of ``finetuned`` absent from ``base`` (a classification head on an MLM base) and those
    matching ``dense`` are stored dense: they replace the target's tensor on composition. Exactly K
    sparse entries are stored (an entry whose δ is zero is kept if the top-K reaches it); tensors with
    no selected entry are omitted. Results live on the CPU.

    Metadata: ``metadata`` (if given) is copied with ``method`` set to ``extract`` or
    ``deft-x-extract``, the extraction settings merged into ``hyperparameters``, and ``base`` set from
    :func:`sftkit.fingerprints.describe_base` (keeping a given base name/revision). When ``base`` is a
    state dict, pass only base-model parameters so its fingerprint matches the model's.
    """
    if (num_params is None) == (density is None):
        raise ConfigError("extract needs exactly one of num_params (K) or density")
    if values not in _VALUES:
        raise ConfigError(f"extract values must be 'original' or 'denoised', got {values!r}")
    if values == "denoised" and denoise is None:
        raise ConfigError("values='denoised' needs a denoise=DenoiseConfig(...); without one the values are the original δ")
    include_p, exclude_p, dense_p = _patterns(include), _patterns(exclude), _patterns(dense)

    base_state = _canonical_state(base)
    fine_state = _canonical_state(finetuned)
    deltas: dict[str, torch.Tensor] = {}
    dense_out: dict[str, torch.Tensor] = {}
    for name, tuned in fine_state.items():
        if (include_p and not _matches(name, include_p)) or _matches(name, exclude_p):
            continue
        if name not in base_state or _matches(name, dense_p):
            dense_out[name] = tuned.cpu().clone()
            continue
        original = base_state[name]
        if not (tuned.is_floating_point() and original.is_floating_point()):
            continue
        if tuple(tuned.shape) != tuple(original.shape):
            raise ConfigError(f"parameter {name!r} has shape {list(original.shape)} in the base but "
                              f"{list(tuned.shape)} in the fine-tuned model; extract between models of the same architecture")
        deltas[name] = tuned.to(torch.float32) - original.to(device=tuned.device, dtype=torch.float32)

    eligible = sum(int(d.numel()) for d in deltas.values())
    if num_params is not None:
        if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 0:
            raise ConfigError(f"num_params must be a non-negative integer, got {num_params!r}")
        k = num_params
    else:
        k = count_from_density(density, eligible)  # type: ignore[arg-type]
    if k > eligible:
        raise ConfigError(f"num_params={k} exceeds the {eligible} eligible parameters; lower K or widen include/exclude")

    scores = denoise_deltas(deltas, denoise, progress=progress) if denoise is not None else deltas
    mask = topk_mask(scores, k)
    source = scores if values == "denoised" else deltas
    sparse: dict[str, SparseDelta] = {}
    for name, idx in mask.items():
        if idx.numel():
            picked = source[name].reshape(-1)[idx]
            sparse[name] = SparseDelta(tuple(deltas[name].shape), idx.cpu(), picked.to(torch.float32).cpu())

    given = metadata or SFTMetadata()
    hyper = {
        **given.hyperparameters,
        "num_params": k,
        "density": k / eligible if eligible else 0.0,
        "eligible_params": eligible,
        "values": values,
        "denoise": denoise.to_dict() if denoise is not None else None,
    }
    for key, patterns in (("include", include_p), ("exclude", exclude_p), ("dense", dense_p)):
        if patterns:
            hyper[key] = list(patterns)
    meta = given.copy(
        method="deft-x-extract" if denoise is not None else "extract",
        hyperparameters=hyper,
        base=describe_base(base, name=given.base.name, revision=given.base.revision),
    )
    return SFT(sparse, dense_out, meta)

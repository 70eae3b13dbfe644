"""Base-model fingerprints: refuse to compose an SFT onto a base it was not computed against.

A fingerprint hashes the canonical names and shapes of the base model's parameters (structure) and
float32 values at deterministic positions of every tensor (values). Applying a delta to the wrong base
revision silently produces garbage, so :func:`check_base` refuses it unless forced.

A cast copy of the right base (bf16/fp16) has the same structure but different value bytes; the
metadata keeps a small float sample so such a copy is recognised within the precision of its dtype.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import torch
from torch import nn

from sftkit.errors import BaseMismatchError
from sftkit.metadata import BaseModelInfo
from sftkit.naming import canonical_state_dict

logger = logging.getLogger("sftkit")

FINGERPRINT_VERSION = "sfp1"
SAMPLE_SIZE = 64
_POSITIONS_PER_TENSOR = 4
_RTOL = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 0.0, torch.float64: 0.0}


# Optional parts of a base model that some heads build and others do not (BertForMaskedLM has no
# pooler, BertForSequenceClassification has one); they are left out so both fingerprint alike.
_OPTIONAL_PREFIXES = ("pooler.",)


def _as_state(base: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = canonical_state_dict(base, base_only=True) if isinstance(base, nn.Module) else dict(base)
    return {k: v for k, v in state.items() if torch.is_tensor(v) and not k.startswith(_OPTIONAL_PREFIXES)}


def _positions(numel: int) -> list[int]:
    if numel == 0:
        return []
    return sorted({0, numel // 3, (2 * numel) // 3, numel - 1})


def describe_base(
    base: nn.Module | Mapping[str, torch.Tensor], *, name: str | None = None, revision: str | None = None
) -> BaseModelInfo:
    """Compute the :class:`BaseModelInfo` (with fingerprint and value sample) of a base model.

    ``base`` is a model (its base-model parameters are used, heads excluded) or a mapping of
    canonical base-parameter names to tensors.
    """
    state = _as_state(base)
    structure = hashlib.sha256()
    values = hashlib.sha256()
    sample_pool: list[float] = []
    dtypes = set()
    for key in sorted(state):
        tensor = state[key]
        structure.update(f"{key}:{list(tensor.shape)};".encode())
        if not tensor.is_floating_point():
            continue
        dtypes.add(tensor.dtype)
        flat = tensor.detach().reshape(-1)
        picked = flat[torch.tensor(_positions(flat.numel()), dtype=torch.long, device=flat.device)]
        picked = picked.to(device="cpu", dtype=torch.float32)
        values.update(picked.numpy().tobytes())
        sample_pool.extend(picked.tolist())
    step = max(1, len(sample_pool) // SAMPLE_SIZE)
    architecture = None
    if isinstance(base, nn.Module):
        architecture = getattr(getattr(base, "config", None), "model_type", None)
    return BaseModelInfo(
        name=name,
        revision=revision,
        fingerprint=f"{FINGERPRINT_VERSION}-{structure.hexdigest()[:16]}-{values.hexdigest()[:16]}",
        architecture=architecture,
        dtype=str(next(iter(dtypes))).replace("torch.", "") if len(dtypes) == 1 else None,
        sample=sample_pool[::step][:SAMPLE_SIZE],
    )


def fingerprint(base: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """The fingerprint string of a base model (see :func:`describe_base`)."""
    return describe_base(base).fingerprint or ""


def matches(expected: BaseModelInfo, actual: BaseModelInfo) -> bool:
    """True if ``actual`` is the base ``expected`` describes, or a lower-precision cast of it."""
    if not expected.fingerprint or not actual.fingerprint:
        return True
    if expected.fingerprint == actual.fingerprint:
        return True
    exp_parts, act_parts = expected.fingerprint.split("-"), actual.fingerprint.split("-")
    if len(exp_parts) != 3 or len(act_parts) != 3 or exp_parts[:2] != act_parts[:2]:
        return False
    if expected.dtype == actual.dtype or not expected.sample or not actual.sample:
        return False
    rtol = max(_RTOL.get(getattr(torch, d or "float32", torch.float32), 0.0) for d in (expected.dtype, actual.dtype))
    a = torch.tensor(expected.sample, dtype=torch.float64)
    b = torch.tensor(actual.sample, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=1e-8))


def check_base(expected: BaseModelInfo, actual: BaseModelInfo, *, force: bool = False, what: str = "SFT") -> None:
    """Raise :class:`BaseMismatchError` if ``expected`` (from an SFT) does not describe ``actual``."""
    if matches(expected, actual):
        if not expected.fingerprint:
            logger.info("%s records no base fingerprint; cannot verify the base model", what)
        return
    message = (
        f"{what} was made for base {expected.name or '?'} ({expected.fingerprint}) but the target model is "
        f"{actual.name or '?'} ({actual.fingerprint}); use the matching base model, or force=True / --force to apply anyway"
    )
    if force:
        logger.warning("ignoring base mismatch: %s", message)
        return
    raise BaseMismatchError(message)

"""Typed metadata carried by every SFT (stored as JSON in the safetensors header).

Metadata is what makes an SFT safe to share: it names the base model the delta was computed against
(with a fingerprint, so composing onto the wrong base revision is refused), what kind of SFT it is,
how it was made, and the label names of a task head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sftkit._version import __version__
from sftkit.errors import FormatError

KINDS = ("language", "task", "other")


@dataclass
class BaseModelInfo:
    """Identity of the base model θ0 an SFT was computed against."""

    name: str | None = None
    """Hub id or local path the base was loaded from (informational)."""
    revision: str | None = None
    """Hub commit sha or tag when known."""
    fingerprint: str | None = None
    """``sftkit.fingerprints.fingerprint`` of the base: structure hash + value-sample hash."""
    architecture: str | None = None
    """``config.model_type`` of the base, e.g. ``xlm-roberta``."""
    dtype: str | None = None
    """dtype of the base's floating-point parameters when the fingerprint was taken."""
    sample: list[float] | None = None
    """A few base values at deterministic positions; lets a cast copy of the base (bf16) be recognised."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseModelInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class SFTMetadata:
    """Everything about an SFT that is not a tensor."""

    kind: str = "other"
    """``language``, ``task`` or ``other``."""
    language: str | None = None
    """ISO 639-3 code of a language SFT (or the source language of a task SFT)."""
    task: str | None = None
    """Task name of a task SFT, e.g. ``sentiment`` or ``nli``."""
    method: str | None = None
    """``lt-sft``, ``deft-x``, ``extract``, ``merge``, ``composable-sft-import`` …"""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """K, density, denoise settings, steps, learning rate, seed, data files and hashes …"""
    base: BaseModelInfo = field(default_factory=BaseModelInfo)
    label_names: list[str] | None = None
    """Class names of a task head, in label-id order."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Where an imported SFT came from (repo, file, revision, original format)."""
    extra: dict[str, Any] = field(default_factory=dict)
    sftkit_version: str = __version__

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FormatError(f"metadata kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["base"] = self.base.to_dict()
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFTMetadata:
        if not isinstance(data, dict):
            raise FormatError("SFT metadata must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["base"] = BaseModelInfo.from_dict(data.get("base") or {})
        return cls(**kwargs)

    def copy(self, **changes: Any) -> SFTMetadata:
        """A deep copy with ``changes`` applied (metadata of a derived SFT)."""
        clone = SFTMetadata.from_dict(self.to_dict())
        for key, value in changes.items():
            setattr(clone, key, value)
        return clone

"""The typed object both registry backends return: one SFT at one revision of one repository."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.metadata import SFTMetadata

SFT_FILENAME = "sft.safetensors"
"""The SFT file inside a registry entry / Hub repo."""
CARD_FILENAME = "README.md"
META_FILENAME = "sftkit.json"
"""Registry-side metadata of an entry (the fields of :class:`RegistryEntry`, plus the SFT metadata)."""
COMMUNITY_FILENAME = "pytorch_diff.bin"
"""composable-sft's SFT file (the ``cambridgeltl/*-sft-*`` series)."""


@dataclass
class RegistryEntry:
    """What the registry knows about one SFT revision, without loading its tensors."""

    repo_id: str
    revision: str | None = None
    """Commit sha on the Hub; content hash for SFTs pushed to a local registry."""
    kind: str = "other"
    language: str | None = None
    task: str | None = None
    base_name: str | None = None
    base_fingerprint: str | None = None
    method: str | None = None
    nnz: int | None = None
    """K, the number of stored sparse entries."""
    density: float | None = None
    size: int | None = None
    """Bytes of the SFT file."""
    sha256: str | None = None
    """sha256 of the SFT file bytes (the local registry checks it on read)."""
    file: Path | None = None
    """Local path of the SFT file (None for Hub search results not yet pulled)."""
    tags: list[str] = field(default_factory=list)
    license: str | None = None
    source: str = "local"
    """``local`` (pushed to the local registry) or ``hub`` (pulled from / found on the Hub)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    card_data: dict[str, Any] = field(default_factory=dict)
    created: float | None = None

    @property
    def ref(self) -> str:
        """``repo@rev`` with the revision shortened, for tables and messages."""
        return f"{self.repo_id}@{self.revision[:10]}" if self.revision else self.repo_id

    @property
    def code(self) -> str | None:
        """The language code of a language SFT, the task name of a task SFT."""
        return self.language if self.kind == "language" else self.task or self.language

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["file"] = str(self.file) if self.file else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegistryEntry:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if kwargs.get("file"):
            kwargs["file"] = Path(kwargs["file"])
        return cls(**kwargs)

    @classmethod
    def from_metadata(cls, repo_id: str, metadata: SFTMetadata, **fields: Any) -> RegistryEntry:
        """An entry describing an SFT whose metadata is known (from its file header)."""
        hyper = metadata.hyperparameters or {}
        fields.setdefault("nnz", hyper.get("num_params") if isinstance(hyper.get("num_params"), int) else None)
        fields.setdefault("density", hyper.get("density") if isinstance(hyper.get("density"), float) else None)
        return cls(
            repo_id=repo_id,
            kind=metadata.kind,
            language=metadata.language,
            task=metadata.task,
            base_name=metadata.base.name,
            base_fingerprint=metadata.base.fingerprint,
            method=metadata.method,
            provenance=dict(metadata.provenance or {}),
            **fields,
        )


def matches_query(
    entry: RegistryEntry,
    *,
    language: str | None = None,
    task: str | None = None,
    base: str | None = None,
    kind: str | None = None,
) -> bool:
    """The search filter shared by both backends (case-insensitive; ``base`` matches name or fingerprint)."""
    from sftkit.registry.naming import base_name_matches

    def same(a: str | None, b: str) -> bool:
        return a is not None and a.lower() == b.lower()

    if kind and entry.kind != kind:
        return False
    if language and not same(entry.language, language):
        return False
    if task and not same(entry.task, task):
        return False
    if base and not (
        same(entry.base_fingerprint, base) or same(entry.base_name, base) or base_name_matches(entry.base_name, base)
    ):
        return False
    return True

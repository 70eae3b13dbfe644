"""The Python API mirroring the CLI: ``push``, ``pull``, ``search``, ``list_entries`` (and ``resolve``).

Each function picks a backend: the local registry (the default, no network) or the Hub.
"""

from __future__ import annotations

import os
from typing import Any

from sftkit.metadata import SFTMetadata
from sftkit.registry.entry import RegistryEntry
from sftkit.registry.hub import HubRegistry
from sftkit.registry.local import LocalRegistry
from sftkit.registry.naming import parse_ref, suggest_repo_id

RegistryArg = str | os.PathLike[str] | LocalRegistry | None


def _local(registry: RegistryArg) -> LocalRegistry:
    return registry if isinstance(registry, LocalRegistry) else LocalRegistry(registry)


def repo_id_for(file: str | os.PathLike[str], repo_id: str, template: str | None = None) -> str:
    """``repo_id`` as given, or — when it is only an org (``myorg`` / ``myorg/``) — the conventional name."""
    org = repo_id.rstrip("/")
    if "/" in org:
        return repo_id
    from sftkit.format import read_metadata

    metadata: SFTMetadata = read_metadata(str(file))
    return suggest_repo_id(metadata, org, template)


def push(
    file: str | os.PathLike[str],
    repo_id: str,
    *,
    hub: bool = False,
    registry: RegistryArg = None,
    private: bool = False,
    revision: str | None = None,
    license: str | None = None,
    token: str | None = None,
    template: str | None = None,
) -> RegistryEntry:
    """Publish an SFT file: to the local registry (default) or, with ``hub=True``, to the Hub.

    ``revision`` is the branch to push to (``main`` by default). ``repo_id`` may be just an org,
    then the name follows the naming template (``myorg/xlmr-lang-sft-quy``).
    """
    target = repo_id_for(file, repo_id, template)
    if hub:
        return HubRegistry(token=token).push(file, target, private=private, branch=revision, license=license)
    return _local(registry).push(file, target, branch=revision, license=license)


def pull(
    ref: str,
    *,
    registry: RegistryArg = None,
    base: Any = None,
    token: str | None = None,
    force_download: bool = False,
) -> RegistryEntry:
    """Fetch ``REPO[@REV]`` from the Hub into the local registry (verified; composable-sft converted)."""
    return HubRegistry(token=token).pull(parse_ref(ref), local=_local(registry), base=base, force_download=force_download)


def search(
    *,
    language: str | None = None,
    task: str | None = None,
    base: str | None = None,
    kind: str | None = None,
    hub: bool = False,
    registry: RegistryArg = None,
    token: str | None = None,
) -> list[RegistryEntry]:
    """SFTs matching every given filter, in the local registry or (``hub=True``) on the Hub."""
    if hub:
        return HubRegistry(token=token).search(language=language, task=task, base=base, kind=kind)
    return _local(registry).search(language=language, task=task, base=base, kind=kind)


def list_entries(registry: RegistryArg = None) -> list[RegistryEntry]:
    """Every repository in the local registry (its ``main`` revision)."""
    return _local(registry).list_entries()

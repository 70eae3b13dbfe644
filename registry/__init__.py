"""The SFT registry: a local registry by default, the Hugging Face Hub when asked.

Both backends store an SFT as a repository (``<org>/<name>``) holding ``sft.safetensors``, a
``README.md`` model card and ``sftkit.json``, with revisions. See ``docs/registry.md``.

    from sftkit.registry import push, pull, search, resolve
    push("quy.safetensors", "myorg/xlmr-lang-sft-quy")               # local registry
    push("quy.safetensors", "myorg/xlmr-lang-sft-quy", hub=True)     # Hugging Face Hub
    entry = pull("cambridgeltl/xlmr-lang-sft-quy-small")            # Hub → local (converted)
    paths = resolve("xlm-roberta-base", language="quy", task="nli")  # files to compose
"""

from __future__ import annotations

from sftkit.registry.api import list_entries, pull, push, search
from sftkit.registry.entry import (
    CARD_FILENAME,
    COMMUNITY_FILENAME,
    META_FILENAME,
    SFT_FILENAME,
    RegistryEntry,
)
from sftkit.registry.errors import (
    EntryNotFoundError,
    HubAuthError,
    HubOfflineError,
    HubServerError,
    RegistryError,
    ResolveError,
)
from sftkit.registry.hub import HubRegistry
from sftkit.registry.local import LocalRegistry, default_root
from sftkit.registry.naming import DEFAULT_TEMPLATE, RepoRef, parse_ref, suggest_repo_id
from sftkit.registry.resolve import resolve

__all__ = [
    "CARD_FILENAME",
    "COMMUNITY_FILENAME",
    "DEFAULT_TEMPLATE",
    "META_FILENAME",
    "SFT_FILENAME",
    "EntryNotFoundError",
    "HubAuthError",
    "HubOfflineError",
    "HubRegistry",
    "HubServerError",
    "LocalRegistry",
    "RegistryEntry",
    "RegistryError",
    "RepoRef",
    "ResolveError",
    "default_root",
    "list_entries",
    "parse_ref",
    "pull",
    "push",
    "resolve",
    "search",
    "suggest_repo_id",
]

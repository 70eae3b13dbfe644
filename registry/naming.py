"""Repository ids: ``REPO@REV`` parsing and the community naming convention.

The community's SFTs are named ``<org>/<base>-lang-sft-<lang>[-<size>]`` and
``<org>/<base>-task-sft-<task>`` (``cambridgeltl/xlmr-lang-sft-quy-small``); sftkit suggests names that
fit, from a template that can be changed (``SFTKIT_REPO_TEMPLATE`` or the ``template`` argument), and
reads language/task codes back out of such names when a repo carries no metadata of its own.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from sftkit.errors import ConfigError
from sftkit.metadata import SFTMetadata

DEFAULT_TEMPLATE = "{org}/{base}-{kind}-sft-{code}"
"""Placeholders: ``org``, ``base`` (short base name), ``kind`` (``lang``/``task``/``other``), ``code``."""

# Short names the community uses for common bases.
BASE_SHORT_NAMES = {
    "xlm-roberta-base": "xlmr",
    "xlm-roberta-large": "xlmr-large",
    "bert-base-multilingual-cased": "mbert",
    "bert-base-multilingual-uncased": "mbert-uncased",
    "mdeberta-v3-base": "mdeberta",
}

_KIND_SHORT = {"language": "lang", "task": "task", "other": "other"}
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_RE = re.compile(rf"^{_PART}/{_PART}$")
_REV_RE = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")
_LANG_IN_NAME = re.compile(r"(?:^|[-_])lang-sft-([a-z]{2,3})(?:$|[-_])")
_TASK_IN_NAME = re.compile(r"(?:^|[-_])task-sft-([a-z0-9]+)(?:$|[-_])")


@dataclass(frozen=True)
class RepoRef:
    """A repository id with an optional revision (branch, tag or commit sha)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def parse_ref(text: str) -> RepoRef:
    """Parse ``org/name`` or ``org/name@rev``; raise :class:`ConfigError` naming the expected form."""
    repo_id, _, revision = text.strip().partition("@")
    validate_repo_id(repo_id)
    if _ and not _REV_RE.match(revision):
        raise ConfigError(f"{text!r}: the revision after '@' must be a branch, tag or commit sha")
    return RepoRef(repo_id, revision or None)


def validate_repo_id(repo_id: str) -> str:
    if not _REPO_RE.match(repo_id) or ".." in repo_id or "--" in repo_id:
        raise ConfigError(
            f"{repo_id!r} is not a repository id; use ORG/NAME (letters, digits, '-', '_', '.'), e.g. myorg/xlmr-lang-sft-quy"
        )
    return repo_id


def base_short_name(base_name: str | None) -> str:
    """``FacebookAI/xlm-roberta-base`` → ``xlmr``; unknown names keep their last path component."""
    if not base_name:
        return "base"
    last = base_name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()
    return BASE_SHORT_NAMES.get(last, re.sub(r"[^a-z0-9._-]+", "-", last).strip("-._") or "base")


def suggest_repo_id(metadata: SFTMetadata, org: str, template: str | None = None) -> str:
    """The conventional repo id for an SFT under ``org``, e.g. ``myorg/xlmr-lang-sft-quy``."""
    template = template or os.environ.get("SFTKIT_REPO_TEMPLATE") or DEFAULT_TEMPLATE
    code = metadata.language if metadata.kind == "language" else metadata.task
    if metadata.kind == "other" or not code:
        code = metadata.task or metadata.language or metadata.method or "sft"
    try:
        repo_id = template.format(
            org=org, base=base_short_name(metadata.base.name), kind=_KIND_SHORT[metadata.kind], code=code.lower()
        )
    except (KeyError, IndexError) as exc:
        raise ConfigError(f"repo name template {template!r} uses unknown placeholder {exc}; use org, base, kind, code") from None
    return validate_repo_id(repo_id)


def codes_from_name(repo_id: str) -> tuple[str | None, str | None]:
    """(language, task) read from a conventional repo name, e.g. ``…-lang-sft-quy-small`` → ``("quy", None)``."""
    name = repo_id.rsplit("/", 1)[-1].lower()
    lang = _LANG_IN_NAME.search(name)
    task = _TASK_IN_NAME.search(name)
    return (lang.group(1) if lang else None, task.group(1) if task else None)


def base_name_matches(candidate: str | None, base: str | None) -> bool:
    """Loose name match between an SFT's recorded base and the requested base (path or Hub id)."""
    if not candidate or not base:
        return False
    a, b = base_short_name(candidate), base_short_name(base)
    return a == b

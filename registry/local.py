"""The local registry: the embedded default, a directory laid out like Hub repositories.

Layout (``ROOT`` is ``$SFTKIT_HOME/registry``, else ``~/.cache/sftkit/registry``, or ``--registry PATH``)::

    ROOT/index.json                         # the truth: repos, refs, revisions (entries without paths)
    ROOT/.lock                              # filelock serialising writers
    ROOT/.staging/<host>-<pid>-<uuid>/      # entries being written (invisible to readers)
    ROOT/<org>/<name>/refs/main             # mirror of index refs (the sha), for humans and shell tools
    ROOT/<org>/<name>/revisions/<sha>/      # sft.safetensors, README.md, sftkit.json

Why it is crash- and concurrency-safe: an entry is written completely into a private staging
directory *outside* the lock, then, under the lock, renamed into place in one ``os.rename`` and only
then added to the index (itself replaced atomically). Readers only ever look at the index, so a
writer killed at any point leaves nothing visible: at worst a staging directory (removed once its
process is gone) or a renamed revision the index does not know (removed by the next writer).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from hashlib import sha1
from pathlib import Path
from typing import Any

from filelock import FileLock

from sftkit._io import atomic_write_text
from sftkit.registry.card import render_card, tags_for
from sftkit.registry.entry import (
    CARD_FILENAME,
    META_FILENAME,
    SFT_FILENAME,
    RegistryEntry,
    matches_query,
)
from sftkit.registry.errors import EntryNotFoundError, RegistryError
from sftkit.registry.naming import RepoRef, parse_ref, validate_repo_id
from sftkit.registry.sftfile import FileFacts, inspect_file

logger = logging.getLogger("sftkit")

INDEX_VERSION = 1
STALE_STAGING_SECONDS = 24 * 3600
"""Staging dirs of another host (whose pid cannot be checked) are removed after this long."""
_LOCK_TIMEOUT = 120.0


def default_root() -> Path:
    """``$SFTKIT_HOME/registry`` if set, else ``$XDG_CACHE_HOME/sftkit/registry`` (``~/.cache/…``)."""
    home = os.environ.get("SFTKIT_HOME")
    if home:
        return Path(home).expanduser() / "registry"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "sftkit" / "registry"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalRegistry:
    """SFTs stored on disk in Hub repo layout, with revisions and a JSON index for search."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = (Path(root).expanduser() if root else default_root()).absolute()

    def __repr__(self) -> str:
        return f"LocalRegistry({str(self.root)!r})"

    # ----------------------------------------------------------------------------------------- paths
    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    @property
    def staging_dir(self) -> Path:
        return self.root / ".staging"

    def _lock(self) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".lock"), timeout=_LOCK_TIMEOUT)

    def revision_dir(self, repo_id: str, revision: str) -> Path:
        return self.root / validate_repo_id(repo_id) / "revisions" / revision

    # ----------------------------------------------------------------------------------------- index
    def _read_index(self) -> dict[str, Any]:
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": INDEX_VERSION, "repos": {}}
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{self.index_path}: unreadable registry index ({exc}); move it away to rebuild") from None
        if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
            raise RegistryError(f"{self.index_path}: unknown index version; upgrade sftkit or use another --registry")
        return data

    def _write_index(self, index: dict[str, Any]) -> None:
        _atomic_write_text(self.index_path, json.dumps(index, indent=1, sort_keys=True))

    def _entry(self, repo_id: str, revision: str, record: dict[str, Any]) -> RegistryEntry:
        entry = RegistryEntry.from_dict({**record, "repo_id": repo_id, "revision": revision})
        entry.file = self.revision_dir(repo_id, revision) / SFT_FILENAME
        return entry

    # ----------------------------------------------------------------------------------------- reads
    def list_entries(self) -> list[RegistryEntry]:
        """The ``main`` revision of every repository, sorted by repo id."""
        index = self._read_index()
        out = []
        for repo_id in sorted(index["repos"]):
            repo = index["repos"][repo_id]
            revision = repo["refs"].get("main") or _latest(repo["revisions"])
            if revision in repo["revisions"]:
                out.append(self._entry(repo_id, revision, repo["revisions"][revision]))
        return out

    def revisions(self, repo_id: str) -> list[RegistryEntry]:
        """All stored revisions of ``repo_id``, oldest first."""
        repo = self._read_index()["repos"].get(repo_id)
        if not repo:
            return []
        records = sorted(repo["revisions"].items(), key=lambda kv: kv[1].get("created") or 0)
        return [self._entry(repo_id, rev, rec) for rev, rec in records]

    def find(self, repo_id: str, revision: str | None = None) -> RegistryEntry | None:
        """The entry at ``revision`` (branch, full or ≥7-char sha; default ``main``), or None."""
        repo = self._read_index()["repos"].get(repo_id)
        if not repo:
            return None
        wanted = revision or "main"
        sha = repo["refs"].get(wanted)
        if sha is None:
            if wanted in repo["revisions"]:
                sha = wanted
            elif len(wanted) >= 7:
                hits = [rev for rev in repo["revisions"] if rev.startswith(wanted)]
                sha = hits[0] if len(hits) == 1 else None
        if sha is None and revision is None:
            sha = _latest(repo["revisions"])
        if sha is None or sha not in repo["revisions"]:
            return None
        return self._entry(repo_id, sha, repo["revisions"][sha])

    def get(self, ref: str | RepoRef) -> RegistryEntry:
        """Like :meth:`find` for ``REPO[@REV]``, raising a one-line error when absent."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        entry = self.find(ref.repo_id, ref.revision)
        if entry is None:
            raise EntryNotFoundError(
                f"{ref}: not in the local registry {self.root}; `sftkit list` shows what is there, "
                f"`sftkit pull {ref.repo_id}` fetches it from the Hub"
            )
        return entry

    def search(
        self,
        *,
        language: str | None = None,
        task: str | None = None,
        base: str | None = None,
        kind: str | None = None,
    ) -> list[RegistryEntry]:
        return [
            e for e in self.list_entries() if matches_query(e, language=language, task=task, base=base, kind=kind)
        ]

    # ---------------------------------------------------------------------------------------- writes
    def push(
        self,
        file: str | os.PathLike[str],
        repo_id: str,
        *,
        branch: str | None = None,
        license: str | None = None,
    ) -> RegistryEntry:
        """Add an SFT file as a new revision of ``repo_id`` (a no-op revision if the content is unchanged)."""
        return self.add(file, repo_id, branch=branch or "main", license=license)

    def add(
        self,
        file: str | os.PathLike[str],
        repo_id: str,
        *,
        revision: str | None = None,
        branch: str | None = "main",
        source: str = "local",
        card_text: str | None = None,
        license: str | None = None,
        provenance: dict[str, Any] | None = None,
        facts: FileFacts | None = None,
    ) -> RegistryEntry:
        """Store ``file`` (verified first) as ``repo_id@revision`` and point ``branch`` at it.

        ``branch=None`` (a pinned pull) moves no ref, except that a repo's first revision becomes ``main``.

        ``revision`` is the Hub commit sha for pulled entries; for local pushes it is derived from the
        content, so pushing identical content twice yields the same revision. ``facts``: the
        result of :func:`inspect_file` when the caller has just verified the file.
        """
        validate_repo_id(repo_id)
        file = Path(file)
        facts = facts or inspect_file(file, deep=source == "local")
        entry = RegistryEntry.from_metadata(
            repo_id,
            facts.metadata,
            nnz=facts.nnz,
            density=facts.density,
            size=facts.size,
            sha256=facts.sha256,
            source=source,
            license=license,
        )
        if provenance:
            entry.provenance = {**entry.provenance, **provenance}
        entry.tags = tags_for(entry)
        card = card_text if card_text is not None else render_card(entry, license=license)
        entry.revision = revision or sha1(f"{facts.sha256}\n{card}".encode()).hexdigest()
        entry.created = time.time()

        with self._staging() as stage:
            shutil.copyfile(file, stage / SFT_FILENAME)
            (stage / CARD_FILENAME).write_text(card, encoding="utf-8")
            record = _record(entry)
            meta = {"entry": record, "metadata": facts.metadata.to_dict()}
            (stage / META_FILENAME).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
            self._commit(entry, stage, branch)
        return self.get(RepoRef(repo_id, entry.revision))

    def set_ref(self, repo_id: str, branch: str, revision: str) -> None:
        """Point ``branch`` of ``repo_id`` at an existing revision."""
        with self._lock():
            index = self._read_index()
            repo = index["repos"].get(repo_id)
            if not repo or revision not in repo["revisions"]:
                raise EntryNotFoundError(f"{repo_id}@{revision}: not in the local registry {self.root}")
            repo["refs"][branch] = revision
            self._write_index(index)
            _atomic_write_text(self.root / repo_id / "refs" / branch, revision + "\n")

    def _commit(self, entry: RegistryEntry, stage: Path, branch: str | None) -> None:
        """Under the lock: rename the staged entry into place, then record it in the index (last)."""
        with self._lock():
            self._collect_garbage()
            index = self._read_index()
            repo = index["repos"].setdefault(entry.repo_id, {"refs": {}, "revisions": {}})
            target = self.revision_dir(entry.repo_id, entry.revision or "")
            if entry.revision not in repo["revisions"]:
                if target.exists():  # left by a writer that died before updating the index
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(stage, target)
                repo["revisions"][entry.revision] = _record(entry)
            if branch is None and "main" not in repo["refs"]:
                branch = "main"
            if branch:
                repo["refs"][branch] = entry.revision
            self._write_index(index)
            if branch:
                _atomic_write_text(self.root / entry.repo_id / "refs" / branch, f"{entry.revision}\n")

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        stage = self.staging_dir / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
        stage.mkdir()
        try:
            yield stage
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def _collect_garbage(self) -> None:
        """Remove dead writers' staging dirs and revision dirs the index does not know (lock held)."""
        host = socket.gethostname()
        if self.staging_dir.is_dir():
            for stage in self.staging_dir.iterdir():
                owner_host, _, rest = stage.name.rpartition("-")[0].rpartition("-")
                pid = int(rest) if rest.isdigit() else -1
                try:
                    age = time.time() - stage.stat().st_mtime
                except OSError:
                    continue
                dead = (owner_host == host and not _pid_alive(pid)) or age > STALE_STAGING_SECONDS
                if dead:
                    logger.info("removing an unfinished registry write: %s", stage)
                    shutil.rmtree(stage, ignore_errors=True)
        known = self._read_index()["repos"]
        for revisions_dir in self.root.glob("*/*/revisions"):
            repo_id = f"{revisions_dir.parent.parent.name}/{revisions_dir.parent.name}"
            recorded = known.get(repo_id, {}).get("revisions", {})
            for rev_dir in revisions_dir.iterdir():
                if rev_dir.name not in recorded:
                    logger.info("removing an unregistered revision: %s", rev_dir)
                    shutil.rmtree(rev_dir, ignore_errors=True)


def _record(entry: RegistryEntry) -> dict[str, Any]:
    """An index record: the entry without fields implied by its position (repo, revision, path)."""
    data = entry.to_dict()
    for key in ("repo_id", "revision", "file"):
        data.pop(key, None)
    return data


def _latest(revisions: dict[str, dict[str, Any]]) -> str | None:
    if not revisions:
        return None
    return max(revisions, key=lambda rev: revisions[rev].get("created") or 0)

"""The Hugging Face Hub backend: push, search and pull SFTs with the real ``huggingface_hub`` client.

Nothing here reimplements the client: tokens come from wherever ``huggingface_hub`` finds them
(``HF_TOKEN``, ``hf auth login``), downloads go through its cache (so a pulled revision works offline
with ``HF_HUB_OFFLINE=1``), and ``HF_ENDPOINT`` points it at another server. This module adds what
the client does not know: which files make an SFT repo, how to read an SFT's metadata from card data
or the safetensors header without downloading the file, checksum verification before anything is
registered, and one-line errors that say what to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError as HfEntryNotFoundError,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from sftkit.errors import ChecksumError, FormatError
from sftkit.format.header import FORMAT_NAME
from sftkit.metadata import SFTMetadata
from sftkit.registry.card import KIND_TAGS, LIBRARY_TAG, entry_from_card, render_card
from sftkit.registry.entry import (
    CARD_FILENAME,
    COMMUNITY_FILENAME,
    META_FILENAME,
    SFT_FILENAME,
    RegistryEntry,
    matches_query,
)
from sftkit.registry.errors import (
    EntryNotFoundError,
    HubAuthError,
    HubOfflineError,
    HubServerError,
    RegistryError,
)
from sftkit.registry.local import LocalRegistry
from sftkit.registry.naming import RepoRef, parse_ref
from sftkit.registry.sftfile import inspect_file

logger = logging.getLogger("sftkit")

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def is_offline() -> bool:
    """Offline mode as ``huggingface_hub`` defines it, also honouring a later ``HF_HUB_OFFLINE=1``."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}
    return bool(hf_constants.HF_HUB_OFFLINE) or env


@contextlib.contextmanager
def hub_errors(what: str, endpoint: str | None = None) -> Iterator[None]:
    """Translate ``huggingface_hub`` / HTTP failures into one-line :class:`RegistryError` subclasses."""
    import httpx2 as httpx_like  # the HTTP library huggingface_hub >= 1 is built on

    try:
        yield
    except RegistryError:
        raise
    except RevisionNotFoundError:
        raise EntryNotFoundError(f"{what}: no such revision on the Hub; check the branch, tag or commit after '@'") from None
    except GatedRepoError:
        raise HubAuthError(f"{what}: the repository is gated; accept its terms on the Hub, then log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise EntryNotFoundError(
            f"{what}: no such repository on the Hub (or it is private); check the repo id, or log in with `hf auth login`"
        ) from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError):
        if is_offline():
            raise HubOfflineError(
                f"{what}: not in the local Hub cache and HF_HUB_OFFLINE is set; pull it once while online"
            ) from None
        raise HubServerError(f"{what}: cannot reach the Hub; check your connection and retry") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise HubAuthError(f"{what}: the Hub needs you to log in (401); run `hf auth login` or set HF_TOKEN") from None
        if status == 403:
            raise HubAuthError(
                f"{what}: the Hub refused access (403); log in with a token that has write access to this namespace"
            ) from None
        if status is not None and status >= 500:
            raise HubServerError(
                f"{what}: the Hub failed with HTTP {status}; nothing was registered, retry in a moment"
            ) from None
        raise RegistryError(f"{what}: the Hub answered HTTP {status}: {_first_line(exc)}") from None
    except LocalTokenNotFoundError:
        raise HubAuthError(f"{what}: no Hugging Face token found; run `hf auth login` or set HF_TOKEN") from None
    except HfEntryNotFoundError:
        raise EntryNotFoundError(f"{what}: the file is not in this repository revision") from None
    except (httpx_like.HTTPError, ConnectionError, TimeoutError) as exc:
        where = endpoint or hf_constants.ENDPOINT
        raise HubServerError(
            f"{what}: cannot reach the Hub at {where} ({_first_line(exc)}); check your connection, or set HF_HUB_OFFLINE=1 to use the cache"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class HubRegistry:
    """SFT repositories on the Hugging Face Hub (or any server speaking its API, via ``endpoint``)."""

    def __init__(
        self, *, endpoint: str | None = None, token: str | bool | None = None, cache_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.endpoint = (endpoint or hf_constants.ENDPOINT).rstrip("/")
        self.token = token
        self.cache_dir = cache_dir
        self.api = HfApi(endpoint=self.endpoint, token=token, library_name="sftkit")

    def __repr__(self) -> str:
        return f"HubRegistry({self.endpoint!r})"

    def reachable(self, timeout: float = 3.0) -> bool:
        """One quick request without retries: lets automatic Hub look-ups skip an unreachable Hub at once
        instead of waiting out the client's back-off (about 20 s)."""
        from huggingface_hub.utils import get_session

        if is_offline():
            return False
        try:
            get_session().head(self.endpoint, timeout=timeout)
        except Exception:  # noqa: BLE001 - any transport failure means "not now"
            return False
        return True

    # ------------------------------------------------------------------------------------------ push
    def push(
        self,
        file: str | os.PathLike[str],
        repo_id: str,
        *,
        private: bool = False,
        branch: str | None = None,
        license: str | None = None,
        commit_message: str | None = None,
    ) -> RegistryEntry:
        """Upload an SFT file with a generated model card; returns the entry at the new commit."""
        ref = parse_ref(repo_id)
        file = Path(file)
        facts = inspect_file(file, deep=True)
        entry = RegistryEntry.from_metadata(
            ref.repo_id,
            facts.metadata,
            nnz=facts.nnz,
            density=facts.density,
            size=facts.size,
            sha256=facts.sha256,
            source="hub",
            license=license,
        )
        card = render_card(entry, license=license)
        with tempfile.TemporaryDirectory(prefix="sftkit-push-") as tmp:
            folder = Path(tmp)
            _link_or_copy(file, folder / SFT_FILENAME)
            (folder / CARD_FILENAME).write_text(card, encoding="utf-8")
            meta = {"entry": _public_record(entry), "metadata": facts.metadata.to_dict()}
            (folder / META_FILENAME).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
            with hub_errors(f"push {ref.repo_id}", self.endpoint):
                self.api.create_repo(ref.repo_id, private=private, exist_ok=True)
                if branch and branch != "main":
                    self.api.create_branch(ref.repo_id, branch=branch, exist_ok=True)
                commit = self.api.upload_folder(
                    repo_id=ref.repo_id,
                    folder_path=folder,
                    revision=branch,
                    commit_message=commit_message or f"Upload {entry.kind} SFT with sftkit",
                )
        entry.revision = getattr(commit, "oid", None)
        entry.file = None
        entry.card_data = {}
        return entry

    # ---------------------------------------------------------------------------------------- search
    def search(
        self,
        *,
        language: str | None = None,
        task: str | None = None,
        base: str | None = None,
        kind: str | None = None,
        community: bool = True,
        limit: int = 500,
    ) -> list[RegistryEntry]:
        """SFTs on the Hub matching the query, read from card data (and safetensors headers), not files.

        sftkit repos are found by their tags; with ``community`` and a language/task, repos named by
        the community convention (``…-lang-sft-quy…``) are found by name too.
        """
        tags = [LIBRARY_TAG] + ([KIND_TAGS[kind]] if kind in KIND_TAGS else [])
        found: dict[str, RegistryEntry] = {}
        with hub_errors("search the Hub", self.endpoint):
            for model in self.api.list_models(filter=tags, cardData=True, full=True, limit=limit):
                found[model.id] = self._entry_from_model(model)
            wanted = language or task
            if community and wanted and kind in (None, "language" if language else "task"):
                pattern = f"lang-sft-{language}" if language else f"task-sft-{task}"
                for model in self.api.list_models(search=pattern, cardData=True, full=True, limit=limit):
                    if model.id not in found:
                        found[model.id] = self._entry_from_model(model)
        hits = [e for e in found.values() if matches_query(e, language=language, task=task, base=base, kind=kind)]
        return sorted(hits, key=lambda e: e.repo_id)

    def info(self, ref: str | RepoRef) -> RegistryEntry:
        """The entry for ``REPO[@REV]`` from the Hub's model info (card data, no file download)."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        with hub_errors(str(ref), self.endpoint):
            model = self.api.model_info(ref.repo_id, revision=ref.revision)
        return self._entry_from_model(model)

    def _entry_from_model(self, model: Any) -> RegistryEntry:
        card = model.card_data.to_dict() if getattr(model, "card_data", None) is not None else {}
        tags = list(getattr(model, "tags", None) or [])
        entry = entry_from_card(model.id, card, revision=getattr(model, "sha", None), source="hub")
        entry.tags = sorted(set(entry.tags) | set(tags))
        if LIBRARY_TAG in entry.tags and not isinstance(card.get("sftkit"), dict):
            self._fill_from_header(entry)
        if not entry.method and LIBRARY_TAG not in entry.tags:
            entry.method = "composable-sft"
        return entry

    def _fill_from_header(self, entry: RegistryEntry) -> None:
        """Read the SFT metadata from the safetensors header (HTTP range requests, not the file)."""
        try:
            header = self.api.parse_safetensors_file_metadata(entry.repo_id, SFT_FILENAME, revision=entry.revision)
            parsed = _metadata_from_header(header.metadata or {})
        except Exception as exc:  # noqa: BLE001 - a repo without a readable header is still listed
            logger.info("%s: no readable SFT header (%s)", entry.repo_id, _first_line(exc))
            return
        if parsed is None:
            return
        metadata, nnz, numel = parsed
        filled = RegistryEntry.from_metadata(entry.repo_id, metadata)
        for name in ("kind", "language", "task", "base_name", "base_fingerprint", "method"):
            if getattr(filled, name) is not None and getattr(entry, name) in (None, "other"):
                setattr(entry, name, getattr(filled, name))
        entry.nnz = nnz
        entry.density = nnz / numel if numel else 0.0

    # ------------------------------------------------------------------------------------------ pull
    def pull(
        self,
        ref: str | RepoRef,
        *,
        local: LocalRegistry | None = None,
        base: Any = None,
        force_download: bool = False,
    ) -> RegistryEntry:
        """Download ``REPO[@REV]``, verify it, and register it in ``local``; returns the local entry.

        An sftkit repo's ``sft.safetensors`` is checksum-verified before registration; a
        composable-sft repo's ``pytorch_diff.bin`` is converted (``base``, a model, maps tied names and
        records the fingerprint). Pinned commits already in ``local`` need no network at all.
        """
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        local = local or LocalRegistry()
        if ref.revision and _SHA_RE.match(ref.revision) and not force_download:
            hit = local.find(ref.repo_id, ref.revision)
            if hit is not None:
                return hit
        if is_offline():
            sha, files = self._cached_snapshot(ref)
        else:
            with hub_errors(str(ref), self.endpoint):
                model = self.api.model_info(ref.repo_id, revision=ref.revision)
            sha = model.sha or ref.revision or "main"
            files = [s.rfilename for s in (model.siblings or [])]
        hit = local.find(ref.repo_id, sha)
        if hit is not None and not force_download:
            branch = _branch_of(ref, sha)
            if branch:
                local.set_ref(ref.repo_id, branch, sha)
            return hit
        main_file = SFT_FILENAME if SFT_FILENAME in files else COMMUNITY_FILENAME if COMMUNITY_FILENAME in files else None
        if main_file is None:
            raise EntryNotFoundError(
                f"{ref.repo_id}@{sha[:10]}: holds neither {SFT_FILENAME} (sftkit) nor {COMMUNITY_FILENAME} "
                "(composable-sft); check the repo id"
            )
        # Download by the name asked for (a branch), so the Hub cache records the ref for offline use;
        # the snapshot the file lands in names the commit actually served.
        path = self.download(ref.repo_id, main_file, ref.revision or "main", force_download=force_download)
        sha = _snapshot_sha(path) or sha
        if main_file == SFT_FILENAME:
            return self._pull_sftkit(ref, sha, files, local, path)
        from sftkit.registry.community import pull_community

        return pull_community(self, ref, sha, files, local, path, base=base)

    def download(self, repo_id: str, filename: str, revision: str, *, force_download: bool = False) -> Path:
        """One file of a repo through the Hub cache (cache only when offline)."""
        with hub_errors(f"{repo_id}@{revision[:10]}: {filename}", self.endpoint):
            path = hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=self.cache_dir,
                endpoint=self.endpoint,
                token=self.token,
                force_download=force_download,
                local_files_only=is_offline(),
                library_name="sftkit",
            )
        return Path(path)

    def download_optional(self, repo_id: str, filename: str, revision: str, files: list[str]) -> Path | None:
        if filename not in files:
            return None
        try:
            return self.download(repo_id, filename, revision)
        except EntryNotFoundError:
            return None

    def _pull_sftkit(self, ref: RepoRef, sha: str, files: list[str], local: LocalRegistry, path: Path) -> RegistryEntry:
        card_path = self.download_optional(ref.repo_id, CARD_FILENAME, sha, files)
        try:
            facts = inspect_file(path)
        except (ChecksumError, FormatError) as exc:
            evict(path)
            raise ChecksumError(
                f"{ref.repo_id}@{sha[:10]}: {SFT_FILENAME} failed verification ({_first_line(exc)}); it was not "
                "registered and was removed from the Hub cache; pull again to re-download"
            ) from None
        card = card_path.read_text(encoding="utf-8") if card_path else None
        return local.add(
            path,
            ref.repo_id,
            revision=sha,
            branch=_branch_of(ref, sha),
            source="hub",
            card_text=card,
            provenance={"repo": ref.repo_id, "revision": sha, "file": SFT_FILENAME, "endpoint": self.endpoint},
            facts=facts,
        )

    def _cached_snapshot(self, ref: RepoRef) -> tuple[str, list[str]]:
        """(commit sha, files present) of a cached revision, for offline pulls."""
        found: dict[str, Path] = {}
        for filename in (SFT_FILENAME, COMMUNITY_FILENAME, CARD_FILENAME, "config.json"):
            try:
                found[filename] = Path(
                    hf_hub_download(
                        ref.repo_id,
                        filename,
                        revision=ref.revision or "main",
                        cache_dir=self.cache_dir,
                        local_files_only=True,
                    )
                )
            except (LocalEntryNotFoundError, HfEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
                continue
        if SFT_FILENAME not in found and COMMUNITY_FILENAME not in found:
            raise HubOfflineError(
                f"{ref}: not in the local Hub cache and HF_HUB_OFFLINE is set; pull it once while online"
            )
        snapshot = next(iter(found.values())).parent
        return snapshot.name, list(found)


def evict(path: Path) -> None:
    """Drop a downloaded file (and its cached blob) so the next pull downloads it afresh."""
    with contextlib.suppress(OSError):
        blob = path.resolve()
        path.unlink()
        if blob != path:
            blob.unlink()


def _snapshot_sha(path: Path) -> str | None:
    """The commit sha of a file in the Hub cache (``…/snapshots/<sha>/<file>``), if it is one."""
    parent = path.parent
    if parent.parent.name == "snapshots" and _SHA_RE.match(parent.name):
        return parent.name
    return None


def _branch_of(ref: RepoRef, sha: str | None = None) -> str | None:
    """The local ref a pull moves: the branch/tag asked for, ``main`` by default, none for a pinned commit."""
    if ref.revision and (_SHA_RE.match(ref.revision) or (sha and sha.startswith(ref.revision))):
        return None
    return ref.revision or "main"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _public_record(entry: RegistryEntry) -> dict[str, Any]:
    data = entry.to_dict()
    for key in ("file", "card_data", "revision"):
        data.pop(key, None)
    return data


def _metadata_from_header(header_metadata: dict[str, str]) -> tuple[SFTMetadata, int, int] | None:
    """(metadata, K, numel) from an SFT file's safetensors ``__metadata__``; None for other files.

    The field layout is the format's (``docs/format.md``): JSON strings ``metadata`` and ``tensors``.
    """
    if header_metadata.get("format") != FORMAT_NAME:
        return None
    metadata = SFTMetadata.from_dict(json.loads(header_metadata.get("metadata") or "{}"))
    table = json.loads(header_metadata.get("tensors") or "{}")
    sparse = [e for e in table.values() if isinstance(e, dict) and e.get("kind") == "sparse"]
    nnz = sum(int(e.get("nnz") or 0) for e in sparse)
    numel = sum(math.prod(int(d) for d in e.get("shape") or []) for e in sparse)
    return metadata, nnz, numel

"""A loopback fake of the Hugging Face Hub HTTP API, so registry tests never touch the network.

`FakeHub` is a stdlib `ThreadingHTTPServer` bound to 127.0.0.1 on an ephemeral port. It speaks the subset of
the Hub protocol that `huggingface_hub` 2.x uses for push / pull / search, with the response headers and error
shapes the real client parses, so the code under test runs the *real* client end to end:

- repos: ``POST /api/repos/create``, ``DELETE /api/repos/delete``, ``PUT /api/{type}s/{id}/settings``
  (private flag), ``GET /api/whoami-v2``, ``POST /api/validate-yaml``;
- uploads: ``POST /api/{type}s/{id}/preupload/{rev}`` answers ``regular`` below ``lfs_threshold`` bytes and
  ``lfs`` from it on (or for paths matching ``lfs_patterns``); the git-LFS batch API
  ``POST /{id}.git/info/lfs/objects/batch`` hands out signed upload URLs on this server (basic single PUT, or
  multipart when ``lfs_multipart_chunk_size`` is set) plus a ``verify`` action; ``POST .../commit/{rev}`` takes
  the NDJSON payload (``header``, ``file`` base64, ``lfsFile``, ``deletedFile``, ``deletedFolder``), honours
  ``parentCommit`` (412 on a stale parent) and ``create_pr=1`` (``refs/pr/N``);
- reads: ``GET /api/{type}s/{id}[/revision/{rev}]`` (sha, siblings, tags, cardData parsed from the README YAML
  front matter, library_name, private, lastModified, ``blobs=1`` sizes/LFS info, ``expand``),
  ``GET .../tree/{rev}[/{path}]`` (``recursive``, ``expand`` with lastCommit), ``POST .../paths-info/{rev}``,
  ``GET .../refs``, ``GET .../commits/{rev}``, branch and tag create/delete;
- files: ``GET``/``HEAD /{id}/resolve/{rev}/{path}`` with ``ETag``, ``X-Repo-Commit``, ``Content-Length``,
  ``X-Linked-Etag``/``X-Linked-Size`` for LFS files, single ``Range`` requests (206/416); no redirects;
- listing: ``GET /api/models?search=&author=&filter=&library=&language=&pipeline_tag=&sort=&direction=&limit=
  &full=&cardData=&expand=`` with ``Link: rel="next"`` pagination past ``page_size`` results;
- revisions: branch names, ``refs/heads/*``, tags, ``refs/tags/*``, ``refs/pr/N``, full or (unique, >= 7 hex)
  abbreviated commit shas.

Auth follows the Hub: ``token`` may write, ``read_token`` may only read. A write without a token gets 401
"Invalid username or password.", a wrong token gets 401 with ``X-Error-Message: Invalid credentials in
Authorization header`` (both become a plain `HfHubHTTPError`), a read-only token gets 403. Reading a private repo
without a valid token gets 401 ``X-Error-Code: RepoNotFound`` (-> `RepositoryNotFoundError`) exactly like the Hub,
which never confirms that a private repo exists. Unknown repo -> 404 ``RepoNotFound``, unknown revision -> 404
``RevisionNotFound``, unknown file -> 404 ``EntryNotFound`` carrying ``X-Repo-Commit`` (the client caches the
miss under ``.no_exist``).

Test hooks: `FakeHub.fail_next` (answer the next matching requests with a status, or drop the connection),
`FakeHub.tamper` (corrupt the stored bytes of a file while its recorded sha256/size/ETag stay, like a bad CDN
object), `FakeHub.requests` / `FakeHub.stats` / `FakeHub.reset_stats` (per-request log with body bytes in/out),
`FakeHub.seed` (create a repo with files without HTTP, for benchmarks) and `FakeHub.file_bytes`.

Pointing the real client at the server -- what `FakeHub.client_patches` does and why each step is needed in
huggingface_hub 2.4 (it reads its configuration into module globals at import time, so environment variables
alone are not enough once it has been imported, which conftest / transformers imports always do):

1. ``huggingface_hub.constants.ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE``: `HfApi()` copies ``ENDPOINT`` at
   construction and `hf_hub_url` (used by `hf_hub_download`) formats ``HUGGINGFACE_CO_URL_TEMPLATE``; the env var
   ``HF_ENDPOINT`` is only read at import. ``HF_URL_HOSTS`` gets 127.0.0.1 so web URLs on the fake parse.
2. ``huggingface_hub.hf_api.api.endpoint``: the module-level functions (``huggingface_hub.list_models``,
   ``model_info``, ``create_repo``, ``upload_file``, ...) are bound methods of one `HfApi` built at import, so
   they keep the old endpoint unless that instance is patched. ``HfApi(endpoint=hub.endpoint)`` also works.
3. ``constants.HF_HUB_DISABLE_XET = True`` (plus env ``HF_HUB_DISABLE_XET=1`` for subprocesses): with hf_xet
   installed, uploads and downloads would otherwise go through the Xet CAS protocol, which this fake does not
   speak; with Xet off the client uses preupload + LFS batch + resolve, the path implemented here.
4. Cache and token locations: ``constants.HF_HOME``, ``HF_HUB_CACHE`` (and its ``HUGGINGFACE_HUB_CACHE`` alias),
   ``HF_ASSETS_CACHE``, ``HF_XET_CACHE``, ``HF_TOKEN_PATH``, ``HF_STORED_TOKENS_PATH`` and the copy of
   ``HF_HUB_CACHE`` imported by ``huggingface_hub.utils._cache_manager`` (`scan_cache_dir`) all move to a per-test
   directory. ``HF_TOKEN`` is set to the fake's write token (read at every call, so the environment suffices);
   ``HUGGING_FACE_HUB_TOKEN``, ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` are removed, and
   ``constants.HF_HUB_OFFLINE`` / ``HF_HUB_DISABLE_IMPLICIT_TOKEN`` are forced off.
5. Offline mode is ``constants.HF_HUB_OFFLINE`` (read through ``constants.is_offline_mode()`` on every request);
   `set_offline` flips it together with the env var.
6. Teardown calls ``huggingface_hub.utils.close_session()`` (the shared httpx client keeps keep-alive sockets to the
   dead port otherwise) and ``HfFileSystem.clear_instance_cache()`` (fsspec caches filesystem instances).

Not supported: Xet storage, gated repos, discussions beyond the PR ref created by ``create_pr``, repo
move/duplicate, cross-repo copies (``/lfs-files/duplicate``), spaces runtime, canonical single-segment repo ids
(``gpt2``; use ``namespace/name``), multi-range requests (answered with the full body, as RFC 9110 allows).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

try:
    import pytest
except ImportError:  # the server itself is usable from benchmark scripts without pytest
    pytest = None  # type: ignore[assignment]

try:
    import yaml
except ImportError:  # pyyaml ships with huggingface_hub; without it cardData is simply absent
    yaml = None  # type: ignore[assignment]

DEFAULT_USER = "fake-user"
DEFAULT_LFS_THRESHOLD = 1024 * 1024
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_ABBREV_SHA_RE = re.compile(r"[0-9a-f]{7,39}")


def _git_blob_oid(content: bytes) -> str:
    """Git's object id of a blob: what the Hub reports as `oid`/`blobId` and as the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _iso(moment: datetime) -> str:
    """The Hub's timestamp format, the only one `huggingface_hub.utils.parse_datetime` accepts."""
    return (
        moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class _Entry:
    """One file in one commit; shared by later commits until it is overwritten."""

    size: int
    sha256: str  # content hash, also the key into the blob store
    git_oid: str  # sha1 of the git blob: the content for regular files, the pointer for LFS files
    lfs: bool
    last_commit: str

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256, self.size))

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class _Commit:
    sha: str
    parents: list[str]
    title: str
    message: str
    date: datetime
    author: str
    files: dict[str, _Entry]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it; body sizes exclude HTTP headers."""

    method: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    seconds: float
    injected: bool


@dataclass(frozen=True)
class HubStats:
    """Traffic totals since start or the last `FakeHub.reset_stats`."""

    requests: int
    bytes_in: int
    bytes_out: int
    by_route: dict[str, int]


@dataclass
class _Fault:
    pattern: re.Pattern[str]
    method: str | None
    status: int
    remaining: int
    disconnect: bool
    message: str


class HubError(Exception):
    """An error answer: JSON ``{"error": message}`` plus the X-Error-* headers huggingface_hub maps to exceptions."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    body = json.dumps(data, default=str).encode()
    return _Response(status, body, {"Content-Type": "application/json", **(headers or {})})


class FakeHub:
    """In-memory Hub on 127.0.0.1; a context manager that starts the server on enter and stops it on exit.

    Use `client_patches`/`patched_client` (or the `fake_hub` pytest fixture) so that the installed
    huggingface_hub client talks to it.
    """

    def __init__(
        self,
        *,
        token: str = "hf_fake_write_token",
        read_token: str = "hf_fake_read_token",
        user: str = DEFAULT_USER,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        lfs_patterns: tuple[str, ...] = (),
        lfs_multipart_chunk_size: int | None = None,
        page_size: int = 1000,
    ) -> None:
        self.token = token
        self.read_token = read_token
        self.user = user
        self.lfs_threshold = lfs_threshold
        self.lfs_patterns = lfs_patterns
        self.lfs_multipart_chunk_size = lfs_multipart_chunk_size
        self.page_size = page_size
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._blobs: dict[str, bytes] = {}
        self._parts: dict[str, dict[int, bytes]] = {}
        self._faults: list[_Fault] = []
        self._records: list[RequestRecord] = []
        self._secret = secrets.token_bytes(16)
        self._counter = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running: use it as a context manager or call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        if self._server is not None:
            return self
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fakehub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ client wiring

    def client_patches(self, home: str | Path) -> tuple[dict[str, str | None], list[tuple[Any, str, Any]]]:
        """Environment (None = unset) and module attributes that make huggingface_hub use this server.

        See the module docstring for why each one is needed. Attributes missing in the installed version are
        skipped, so older clients get what applies to them.
        """
        import huggingface_hub.constants as constants
        import huggingface_hub.hf_api as hf_api
        import huggingface_hub.utils._cache_manager as cache_manager

        home = Path(home)
        hub_cache = str(home / "hub")
        endpoint = self.endpoint
        env: dict[str, str | None] = {
            "HF_ENDPOINT": endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": hub_cache,
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN": self.token,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HUGGING_FACE_HUB_TOKEN": None,
            "HUGGINGFACE_HUB_CACHE": None,
            "HF_TOKEN_PATH": None,
            "HF_HUB_OFFLINE": None,
            "TRANSFORMERS_OFFLINE": None,
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": None,
        }
        constant_values: dict[str, Any] = {
            "ENDPOINT": endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
            "HF_HUB_DISABLE_TELEMETRY": True,
            "HF_HOME": str(home),
            "HF_HUB_CACHE": hub_cache,
            "HUGGINGFACE_HUB_CACHE": hub_cache,
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        }
        if hasattr(constants, "HF_URL_HOSTS"):
            constant_values["HF_URL_HOSTS"] = frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"})
        attrs: list[tuple[Any, str, Any]] = [
            (constants, name, value) for name, value in constant_values.items() if hasattr(constants, name)
        ]
        attrs.append((hf_api.api, "endpoint", endpoint))
        if hasattr(cache_manager, "HF_HUB_CACHE"):
            attrs.append((cache_manager, "HF_HUB_CACHE", hub_cache))
        return env, attrs

    @contextmanager
    def patched_client(self, home: str | Path) -> Iterator[FakeHub]:
        """`client_patches` applied for the duration of a ``with`` block, for use outside pytest."""
        env, attrs = self.client_patches(home)
        saved_env = {name: os.environ.get(name) for name in env}
        saved_attrs = [(obj, name, getattr(obj, name)) for obj, name, _ in attrs]
        try:
            for name, value in env.items():
                _set_env(name, value)
            for obj, name, value in attrs:
                setattr(obj, name, value)
            _reset_client_state()
            yield self
        finally:
            _reset_client_state()
            for obj, name, value in reversed(saved_attrs):
                setattr(obj, name, value)
            for name, value in saved_env.items():
                _set_env(name, value)

    # ------------------------------------------------------------------ test hooks

    def fail_next(
        self,
        path_regex: str,
        *,
        status: int = 500,
        count: int = 1,
        method: str | None = None,
        disconnect: bool = False,
        message: str = "Injected failure",
    ) -> None:
        """Answer the next `count` requests whose path (with query) matches `path_regex` with `status`.

        `disconnect=True` closes the socket without any answer instead (a network failure for the client). The
        request body is read first, so the failure happens after the upload reached the server. Note the client
        retries 5xx on some endpoints by itself (preupload, LFS batch/PUT, listings: up to 5 retries with 1, 2, 4,
        8, 8 s back-off) but not on the commit POST or resolve downloads.
        """
        with self._lock:
            self._faults.append(
                _Fault(
                    re.compile(path_regex),
                    method.upper() if method else None,
                    status,
                    count,
                    disconnect,
                    message,
                )
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def tamper(
        self,
        repo_id: str,
        path: str,
        data: bytes | None = None,
        *,
        revision: str = "main",
        repo_type: str = "model",
    ) -> None:
        """Corrupt the stored object behind `path`: flip its last byte, or replace it with `data`.

        The recorded sha256, size and ETag stay as committed, so the client downloads wrong bytes under the right
        name; only a checksum the caller verifies itself can notice. The blob store is content-addressed, so every
        file with the same content (in any repo or revision) is corrupted too, like a damaged storage object.
        With `data` of a different length, the client's own size check fails first for LFS files.
        """
        with self._lock:
            entry = self._entry(repo_type, repo_id, revision, path)
            stored = self._blobs[entry.sha256]
            if data is None:
                if not stored:
                    raise ValueError(f"cannot flip a byte of empty file {path!r}; pass data=")
                data = stored[:-1] + bytes([stored[-1] ^ 0xFF])
            self._blobs[entry.sha256] = data

    def file_bytes(
        self, repo_id: str, path: str, *, revision: str = "main", repo_type: str = "model"
    ) -> bytes:
        with self._lock:
            return self._blobs[self._entry(repo_type, repo_id, revision, path).sha256]

    def seed(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        repo_type: str = "model",
        private: bool = False,
        revision: str = "main",
        commit_message: str = "Seed files",
    ) -> str:
        """Create the repo if needed and commit `files` without HTTP; returns the commit sha."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id)) or self._create_repo(repo_type, repo_id, private)
            ops: list[tuple[str, str, Any]] = []
            for path, content in files.items():
                if self._upload_mode(path, len(content)) == "lfs" and content:
                    digest = hashlib.sha256(content).hexdigest()
                    self._blobs.setdefault(digest, content)
                    ops.append(("lfs", path, (digest, len(content))))
                else:
                    ops.append(("add", path, content))
            return self._commit(repo, revision, commit_message, "", ops, parent=None, create_pr=False)[0]

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    @property
    def stats(self) -> HubStats:
        with self._lock:
            by_route: dict[str, int] = {}
            for record in self._records:
                route = _route_name(record.method, record.path)
                by_route[route] = by_route.get(route, 0) + 1
            return HubStats(
                requests=len(self._records),
                bytes_in=sum(r.bytes_in for r in self._records),
                bytes_out=sum(r.bytes_out for r in self._records),
                by_route=by_route,
            )

    def reset_stats(self) -> None:
        with self._lock:
            self._records.clear()

    # ------------------------------------------------------------------ state helpers

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.method in (None, method)) and fault.pattern.search(path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _new_sha(self, *parts: str) -> str:
        self._counter += 1
        seed = "\0".join((*parts, str(time.time_ns()), str(self._counter)))
        return hashlib.sha1(seed.encode()).hexdigest()

    def _create_repo(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        now = _now()
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=now)
        self._repos[(repo_type, repo_id)] = repo
        sha = self._new_sha(repo_type, repo_id, "initial")
        self._blobs.setdefault(hashlib.sha256(_GITATTRIBUTES).hexdigest(), _GITATTRIBUTES)
        entry = _Entry(
            size=len(_GITATTRIBUTES),
            sha256=hashlib.sha256(_GITATTRIBUTES).hexdigest(),
            git_oid=_git_blob_oid(_GITATTRIBUTES),
            lfs=False,
            last_commit=sha,
        )
        repo.commits[sha] = _Commit(sha, [], "initial commit", "", now, self.user, {".gitattributes": entry})
        repo.branches["main"] = sha
        return repo

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> _Commit:
        sha = self._ref_target(repo, revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]

    @staticmethod
    def _ref_target(repo: _Repo, revision: str) -> str | None:
        name = revision.removeprefix("refs/heads/")
        if name in repo.branches:
            return repo.branches[name]
        name = revision.removeprefix("refs/tags/")
        if name in repo.tags:
            return repo.tags[name]
        pr = re.fullmatch(r"refs/pr/(\d+)", revision)
        if pr and int(pr.group(1)) in repo.pull_requests:
            return repo.pull_requests[int(pr.group(1))]
        if _SHA_RE.fullmatch(revision) and revision in repo.commits:
            return revision
        if _ABBREV_SHA_RE.fullmatch(revision):
            matches = [sha for sha in repo.commits if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None

    def _entry(self, repo_type: str, repo_id: str, revision: str, path: str) -> _Entry:
        commit = self._resolve(self._repo(repo_type, repo_id), revision)
        if path not in commit.files:
            raise KeyError(f"{path!r} is not in {repo_id}@{revision}")
        return commit.files[path]

    def _upload_mode(self, path: str, size: int) -> str:
        if size >= self.lfs_threshold or any(fnmatch.fnmatch(path, pattern) for pattern in self.lfs_patterns):
            return "lfs"
        return "regular"

    def _commit(
        self,
        repo: _Repo,
        revision: str,
        title: str,
        message: str,
        ops: list[tuple[str, str, Any]],
        *,
        parent: str | None,
        create_pr: bool,
    ) -> tuple[str, int | None]:
        """Apply ops (``add`` bytes, ``lfs`` (sha256, size), ``delete``, ``delete_folder``) on a branch."""
        branch = revision.removeprefix("refs/heads/")
        pr_match = re.fullmatch(r"refs/pr/(\d+)", revision)
        if pr_match and int(pr_match.group(1)) in repo.pull_requests:
            head = repo.pull_requests[int(pr_match.group(1))]
        elif branch in repo.branches:
            head = repo.branches[branch]
        elif self._ref_target(repo, revision) is not None:
            raise HubError(400, f"Invalid rev id: {revision} is not a branch")
        else:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if parent is not None and not head.startswith(parent):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        sha = self._new_sha(repo.repo_id, head, title)
        files = dict(repo.commits[head].files)
        for kind, path, payload in ops:
            if kind == "add":
                digest = hashlib.sha256(payload).hexdigest()
                self._blobs.setdefault(digest, payload)
                files[path] = _Entry(len(payload), digest, _git_blob_oid(payload), False, sha)
            elif kind == "lfs":
                digest, size = payload
                if digest not in self._blobs:
                    raise HubError(400, f"LFS object {digest} for {path} was not uploaded")
                actual = len(self._blobs[digest])
                if size is not None and size != actual:
                    raise HubError(400, f"LFS object {digest} has size {actual}, commit says {size}")
                files[path] = _Entry(actual, digest, _git_blob_oid(_lfs_pointer(digest, actual)), True, sha)
            elif kind == "delete":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            else:
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
        repo.commits[sha] = _Commit(sha, [head], title, message, _now(), self.user, files)
        pr_num: int | None = None
        if create_pr:
            pr_num = max(repo.pull_requests, default=0) + 1
            repo.pull_requests[pr_num] = sha
        elif pr_match:
            repo.pull_requests[int(pr_match.group(1))] = sha
        else:
            repo.branches[branch] = sha
        return sha, pr_num

    # ------------------------------------------------------------------ views

    def _card_data(self, commit: _Commit) -> dict[str, Any] | None:
        entry = commit.files.get("README.md")
        if entry is None:
            return None
        return _front_matter(self._blobs[entry.sha256].decode("utf-8", errors="replace"))

    def _tags(self, card: dict[str, Any] | None) -> list[str]:
        """Card tags plus the tags the Hub derives from card fields (library, languages, license, ...)."""
        if not card:
            return []
        tags: list[str] = []

        def add(value: Any, prefix: str = "") -> None:
            values = value if isinstance(value, list) else [value]
            for item in values:
                if isinstance(item, (str, int, float)) and f"{prefix}{item}" not in tags:
                    tags.append(f"{prefix}{item}")

        add(card.get("tags") or [])
        add(card.get("library_name") or [])
        add(card.get("pipeline_tag") or [])
        add(card.get("language") or [])
        add(card.get("license") or [], "license:")
        add(card.get("base_model") or [], "base_model:")
        add(card.get("datasets") or [], "dataset:")
        return tags

    def _info(self, repo: _Repo, commit: _Commit, *, blobs: bool, card: bool) -> dict[str, Any]:
        card_data = self._card_data(commit)
        namespace = repo.repo_id.split("/")[0]
        siblings: list[dict[str, Any]] = []
        for path in sorted(commit.files):
            entry = commit.files[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:
                    sibling["lfs"] = {
                        "size": entry.size,
                        "sha256": entry.sha256,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": namespace,
            "sha": commit.sha,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "trendingScore": 0,
            "tags": self._tags(card_data),
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            info["library_name"] = (card_data or {}).get("library_name")
            info["pipeline_tag"] = (card_data or {}).get("pipeline_tag")
        if card and card_data is not None:
            info["cardData"] = card_data
        return info

    def _tree_entry(self, repo: _Repo, commit: _Commit, path: str, *, expand: bool) -> dict[str, Any] | None:
        entry = commit.files.get(path)
        if entry is not None:
            item: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
            if entry.lfs:
                item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            if expand:
                item["lastCommit"] = self._last_commit(repo, [entry.last_commit])
            return item
        prefix = path.rstrip("/") + "/"
        children = [e for p, e in commit.files.items() if p.startswith(prefix)]
        if not children:
            return None
        tree_oid = hashlib.sha1(("".join(sorted(e.git_oid for e in children)) + path).encode()).hexdigest()
        item = {"type": "directory", "oid": tree_oid, "size": 0, "path": path.rstrip("/")}
        if expand:
            item["lastCommit"] = self._last_commit(repo, [e.last_commit for e in children])
        return item

    @staticmethod
    def _last_commit(repo: _Repo, shas: list[str]) -> dict[str, str]:
        latest = max((repo.commits[s] for s in shas), key=lambda c: c.date)
        return {"id": latest.sha, "title": latest.title, "date": _iso(latest.date)}


def _set_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _reset_client_state() -> None:
    """Drop client state tied to a previous endpoint: pooled connections and cached fsspec filesystems."""
    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import close_session

    close_session()
    HfFileSystem.clear_instance_cache()


def set_offline(monkeypatch: Any, offline: bool = True) -> None:
    """Switch huggingface_hub's offline mode (env for subprocesses, the constant for this process)."""
    import huggingface_hub.constants as constants

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


def _front_matter(text: str) -> dict[str, Any] | None:
    """YAML metadata between leading ``---`` lines of a model card, or None when absent/invalid."""
    match = re.match(r"\A---\s*\n(.*?\n)?---\s*(\n|\Z)", text, flags=re.DOTALL)
    if match is None or yaml is None:
        return None
    try:
        data = yaml.safe_load(match.group(1) or "")
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _route_name(method: str, path: str) -> str:
    """A coarse route label for `HubStats.by_route`, e.g. ``GET resolve`` or ``POST commit``."""
    plain = urlsplit(path).path
    for label, pattern in (
        ("lfs-upload", r"^/__fakehub/lfs/"),
        ("lfs-batch", r"\.git/info/lfs/objects/batch$"),
        ("lfs-verify", r"\.git/info/lfs/objects/verify$"),
        ("resolve", r"/resolve/"),
        ("preupload", r"^/api/\w+/[^/]+/[^/]+/preupload/"),
        ("commit", r"^/api/\w+/[^/]+/[^/]+/commit/"),
        ("tree", r"^/api/\w+/[^/]+/[^/]+/tree/"),
        ("paths-info", r"^/api/\w+/[^/]+/[^/]+/paths-info/"),
        ("refs", r"^/api/\w+/[^/]+/[^/]+/refs$"),
        ("commits", r"^/api/\w+/[^/]+/[^/]+/commits/"),
        ("repo-create", r"^/api/repos/create$"),
        ("validate-yaml", r"^/api/validate-yaml$"),
        ("list", r"^/api/(models|datasets|spaces)$"),
        ("info", r"^/api/(models|datasets|spaces)/[^/]+/[^/]+(/revision/.*)?$"),
    ):
        if re.search(pattern, plain):
            return f"{method} {label}"
    return f"{method} other"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], hub: FakeHub) -> None:
        self.hub = hub
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def close_connections(self) -> None:
        """Unblock handler threads waiting on keep-alive sockets so nothing outlives the server."""
        with self.connections_lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the request log lives in FakeHub.requests

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        started = time.perf_counter()
        body = self._read_body()
        fault = hub._take_fault(method, self.path)
        if fault is not None and fault.disconnect:
            hub._record(
                RequestRecord(method, self.path, 0, len(body), 0, time.perf_counter() - started, True)
            )
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault is not None:
            response = _error_response(HubError(fault.status, fault.message))
        else:
            try:
                response = _Router(self, hub, method, body).route()
            except HubError as error:
                response = _error_response(error)
            except Exception as error:  # a bug in the fake must reach the test as a 500, not a hung socket
                response = _error_response(HubError(500, f"fakehub internal error: {error!r}"))
        self._send(method, response)
        hub._record(
            RequestRecord(
                method,
                self.path,
                response.status,
                len(body),
                0 if method == "HEAD" else len(response.body),
                time.perf_counter() - started,
                fault is not None,
            )
        )

    def _send(self, method: str, response: _Response) -> None:
        self.send_response(response.status)
        headers = {"Content-Length": str(len(response.body)), **response.headers}
        request_id = self.headers.get("X-Amzn-Trace-Id") or self.headers.get("X-Request-Id")
        if request_id:
            headers.setdefault("X-Request-Id", request_id)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD" and response.body:
            self.wfile.write(response.body)


def _error_response(error: HubError) -> _Response:
    headers = {
        "X-Error-Message": error.message.encode("latin-1", "replace").decode("latin-1"),
        **error.headers,
    }
    if error.code:
        headers["X-Error-Code"] = error.code
    return _json({"error": error.message}, error.status, headers)


_REPO = r"(?P<rt>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_GIT_REPO = r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+?)\.git/info/lfs/objects"


class _Router:
    """Maps one request to a handler method; handlers return a `_Response` or raise `HubError`."""

    ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        (m, re.compile(p), h)
        for m, p, h in [
            ("GET", r"/api/whoami-v2", "whoami"),
            ("POST", r"/api/repos/create", "create_repo"),
            ("DELETE", r"/api/repos/delete", "delete_repo"),
            ("POST", r"/api/validate-yaml", "validate_yaml"),
            ("GET", r"/api/(?P<rt>models|datasets|spaces)", "list_repos"),
            ("GET", rf"/api/{_REPO}", "repo_info"),
            ("GET", rf"/api/{_REPO}/revision/(?P<rev>[^/]+)", "repo_info"),
            ("PUT", rf"/api/{_REPO}/settings", "settings"),
            ("GET", rf"/api/{_REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?", "tree"),
            ("POST", rf"/api/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
            ("GET", rf"/api/{_REPO}/refs", "refs"),
            ("GET", rf"/api/{_REPO}/commits/(?P<rev>[^/]+)", "commits"),
            ("POST", rf"/api/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
            ("POST", rf"/api/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
            ("POST", rf"/api/{_REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
            ("DELETE", rf"/api/{_REPO}/branch/(?P<branch>[^/]+)", "delete_branch"),
            ("POST", rf"/api/{_REPO}/tag/(?P<rev>[^/]+)", "create_tag"),
            ("DELETE", rf"/api/{_REPO}/tag/(?P<tag>[^/]+)", "delete_tag"),
            ("POST", rf"{_GIT_REPO}/batch", "lfs_batch"),
            ("POST", rf"{_GIT_REPO}/verify", "lfs_verify"),
            ("PUT", r"/__fakehub/lfs/(?P<oid>[0-9a-f]{64})", "lfs_put"),
            ("PUT", r"/__fakehub/lfs/(?P<oid>[0-9a-f]{64})/part/(?P<part>\d+)", "lfs_put_part"),
            ("POST", r"/__fakehub/lfs/(?P<oid>[0-9a-f]{64})/complete", "lfs_complete"),
            (
                "GET",
                r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
                "resolve",
            ),
            (
                "HEAD",
                r"/(?P<prefix>datasets/|spaces/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
                "resolve",
            ),
        ]
    ]

    def __init__(self, handler: _Handler, hub: FakeHub, method: str, body: bytes) -> None:
        self.handler = handler
        self.hub = hub
        self.method = method
        self.body = body
        split = urlsplit(handler.path)
        self.raw_path = split.path
        self.query = parse_qs(split.query, keep_blank_values=True)

    def route(self) -> _Response:
        for method, pattern, name in self.ROUTES:
            if method != self.method:
                continue
            match = pattern.fullmatch(self.raw_path)
            if match is None:
                continue
            # datasets/ and spaces/ prefixes must not be taken for a model namespace
            if (
                name == "resolve"
                and match.group("prefix") is None
                and self.raw_path.startswith(("/datasets/", "/spaces/"))
            ):
                continue
            params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            with self.hub._lock:
                return getattr(self, name)(**params)
        raise HubError(404, f"fakehub: no route for {self.method} {self.raw_path}")

    # ------------------------------------------------------------------ request helpers

    def _param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def _flag(self, name: str) -> bool:
        return (self._param(name) or "").lower() in ("1", "true")

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"Invalid JSON body: {error}") from error

    def _auth(self) -> str | None:
        """``write``, ``read`` or None (anonymous); a token that is neither is refused outright, like the Hub."""
        header = self.handler.headers.get("Authorization")
        if not header:
            return None
        token = header.removeprefix("Bearer ").strip()
        if hmac.compare_digest(token, self.hub.token):
            return "write"
        if hmac.compare_digest(token, self.hub.read_token):
            return "read"
        raise HubError(401, "Invalid credentials in Authorization header")

    def _require_write(self) -> None:
        level = self._auth()
        if level is None:
            raise HubError(401, "Invalid username or password.")
        if level != "write":
            raise HubError(403, "You don't have the rights to write to this namespace (read-only token)")

    def _readable_repo(self, repo_type: str, repo_id: str) -> _Repo:
        level = self._auth()
        repo = self.hub._repo(repo_type, repo_id)
        if repo.private and level is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _writable_repo(self, repo_type: str, repo_id: str) -> _Repo:
        self._require_write()
        return self.hub._repo(repo_type, repo_id)

    def _url(self, path: str) -> str:
        return self.hub.endpoint + path

    def _sign(self, oid: str) -> str:
        return hmac.new(self.hub._secret, oid.encode(), hashlib.sha256).hexdigest()

    def _check_signature(self, oid: str) -> None:
        if not hmac.compare_digest(self._param("sig") or "", self._sign(oid)):
            raise HubError(403, "Bad or missing upload signature")

    # ------------------------------------------------------------------ account and repos

    def whoami(self) -> _Response:
        level = self._auth()
        if level is None:
            raise HubError(401, "Invalid username or password.")
        role = "write" if level == "write" else "read"
        return _json(
            {
                "type": "user",
                "name": self.hub.user,
                "fullname": self.hub.user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "fakehub", "role": role}},
            }
        )

    def create_repo(self) -> _Response:
        self._require_write()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        url = self._url("/" + _URL_PREFIX[repo_type] + repo_id)
        if (repo_type, repo_id) in self.hub._repos:
            return _json({"error": "You already created this model repo", "url": url}, 409)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.hub._create_repo(repo_type, repo_id, private)
        return _json({"url": url, "name": repo_id, "id": self.hub._repos[(repo_type, repo_id)].repo_id})

    def delete_repo(self) -> _Response:
        self._require_write()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        self.hub._repo(repo_type, repo_id)
        del self.hub._repos[(repo_type, repo_id)]
        return _Response(200)

    def settings(self, rt: str, repo: str) -> _Response:
        hub_repo = self._writable_repo(_REPO_TYPES[rt], repo)
        payload = self._json_body()
        if "private" in payload:
            hub_repo.private = bool(payload["private"])
        if "visibility" in payload:
            hub_repo.private = payload["visibility"] == "private"
        return _json({})

    def validate_yaml(self) -> _Response:
        content = self._json_body().get("content", "")
        if re.match(r"\A---\s*\n", content) and _front_matter(content) is None:
            return _json({"errors": [{"message": "Invalid YAML metadata in README.md"}], "warnings": []}, 400)
        return _json({"errors": [], "warnings": []})

    # ------------------------------------------------------------------ reads

    def list_repos(self, rt: str) -> _Response:
        level = self._auth()
        repo_type = _REPO_TYPES[rt]
        search = (self._param("search") or "").lower()
        author = self._param("author")
        wanted = list(self.query.get("filter", []))
        for key in ("library", "language", "pipeline_tag", "tags"):
            wanted.extend(self.query.get(key, []))
        expand = self.query.get("expand", []) + self.query.get("expand[]", [])
        full, with_card = self._flag("full"), self._flag("cardData")

        found: list[dict[str, Any]] = []
        for repo in self.hub._repos.values():
            if repo.repo_type != repo_type or (repo.private and level is None):
                continue
            if search and search not in repo.repo_id.lower():
                continue
            if author and repo.repo_id.split("/")[0] != author:
                continue
            info = self.hub._info(repo, repo.commits[repo.branches["main"]], blobs=False, card=True)
            if not all(tag in info["tags"] for tag in wanted):
                continue
            found.append(info)

        sort = self._param("sort")
        if sort in ("lastModified", "createdAt", "downloads", "likes", "trendingScore", "id"):
            descending = self._param("direction", "-1") == "-1"
            found.sort(key=lambda info: info[sort], reverse=descending)

        start = int(self._param("cursor") or 0)
        limit = self._param("limit")
        page = min(int(limit), self.hub.page_size) if limit else self.hub.page_size
        selected = found[start : start + page]
        headers = {}
        if start + page < len(found):
            query = [(k, v) for k, values in self.query.items() if k != "cursor" for v in values]
            query.append(("cursor", str(start + page)))
            headers["Link"] = f'<{self._url(self.raw_path)}?{urlencode(query)}>; rel="next"'
        return _json([self._list_fields(info, full, with_card, expand) for info in selected], headers=headers)

    @staticmethod
    def _list_fields(info: dict[str, Any], full: bool, with_card: bool, expand: list[str]) -> dict[str, Any]:
        """The Hub returns a short record per repo unless asked for more (full / cardData / expand)."""
        if expand:
            keys = {"_id", "id", *expand}
        else:
            keys = {"_id", "id", "modelId", "private", "downloads", "likes", "trendingScore", "tags"}
            keys |= {"pipeline_tag", "library_name", "createdAt"}
            if full:
                keys |= {"author", "sha", "lastModified", "gated", "disabled", "siblings"}
            if with_card or full:
                keys.add("cardData")
        item = {k: v for k, v in info.items() if k in keys}
        if "siblings" in item:
            item["siblings"] = [{"rfilename": s["rfilename"]} for s in item["siblings"]]
        return item

    def repo_info(self, rt: str, repo: str, rev: str = "main") -> _Response:
        hub_repo = self._readable_repo(_REPO_TYPES[rt], repo)
        commit = self.hub._resolve(hub_repo, rev)
        info = self.hub._info(hub_repo, commit, blobs=self._flag("blobs"), card=True)
        expand = self.query.get("expand", []) + self.query.get("expand[]", [])
        if expand:
            info = {k: v for k, v in info.items() if k in {"_id", "id", *expand}}
        return _json(info)

    def tree(self, rt: str, repo: str, rev: str, path: str = "") -> _Response:
        hub_repo = self._readable_repo(_REPO_TYPES[rt], repo)
        commit = self.hub._resolve(hub_repo, rev)
        root = path.strip("/")
        expand, recursive = self._flag("expand"), self._flag("recursive")
        prefix = root + "/" if root else ""
        if root and root in commit.files:
            raise HubError(400, f"{root} is a file, not a directory")
        below = sorted(p for p in commit.files if p.startswith(prefix))
        if root and not below:
            raise HubError(404, f"Entry not found: {root}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        names: set[str] = set()
        for p in below:
            parts = p[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts)) + 1):
                names.add(prefix + "/".join(parts[:i]))
        items = [self.hub._tree_entry(hub_repo, commit, name, expand=expand) for name in sorted(names)]
        items.sort(key=lambda item: (item["type"] != "directory", item["path"]))
        return _json(items)

    def paths_info(self, rt: str, repo: str, rev: str) -> _Response:
        hub_repo = self._readable_repo(_REPO_TYPES[rt], repo)
        commit = self.hub._resolve(hub_repo, rev)
        content_type = self.handler.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            payload = self._json_body()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(self.body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = (form.get("expand", ["false"])[-1]).lower() in ("1", "true")
        items = [self.hub._tree_entry(hub_repo, commit, p.strip("/"), expand=expand) for p in paths]
        return _json([item for item in items if item is not None])

    def refs(self, rt: str, repo: str) -> _Response:
        hub_repo = self._readable_repo(_REPO_TYPES[rt], repo)
        data: dict[str, Any] = {
            "branches": [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in hub_repo.branches.items()
            ],
            "converts": [],
            "tags": [
                {"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in hub_repo.tags.items()
            ],
        }
        if self._flag("include_prs"):
            data["pullRequests"] = [
                {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": s}
                for n, s in hub_repo.pull_requests.items()
            ]
        return _json(data)

    def commits(self, rt: str, repo: str, rev: str) -> _Response:
        hub_repo = self._readable_repo(_REPO_TYPES[rt], repo)
        commit: _Commit | None = self.hub._resolve(hub_repo, rev)
        history = []
        while commit is not None:
            history.append(
                {
                    "id": commit.sha,
                    "authors": [{"user": commit.author}],
                    "date": _iso(commit.date),
                    "title": commit.title,
                    "message": commit.message,
                }
            )
            commit = hub_repo.commits[commit.parents[0]] if commit.parents else None
        return _json(history)

    def resolve(self, repo: str, rev: str, path: str, prefix: str = "") -> _Response:
        repo_type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix]
        hub_repo = self._readable_repo(repo_type, repo)
        commit = self.hub._resolve(hub_repo, rev)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        content = self.hub._blobs[entry.sha256]
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{entry.etag}"',
            "X-Repo-Commit": commit.sha,
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        span = _parse_range(self.handler.headers.get("Range"), len(content))
        if span is None:
            return _Response(200, content, headers)
        if span == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{len(content)}"
            return _Response(416, b"", headers)
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return _Response(206, content[start : end + 1], headers)

    # ------------------------------------------------------------------ writes

    def preupload(self, rt: str, repo: str, rev: str) -> _Response:
        hub_repo = self._writable_repo(_REPO_TYPES[rt], repo)
        files = self._json_body().get("files", [])
        current = {}
        target = self.hub._ref_target(hub_repo, rev)
        if target is not None:
            current = hub_repo.commits[target].files
        elif not self._flag("create_pr"):
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        answer = []
        for item in files:
            existing = current.get(item["path"])
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.git_oid)
            mode = self.hub._upload_mode(item["path"], int(item.get("size", 0)))
            answer.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return _json({"files": answer, "commitOid": target})

    def commit(self, rt: str, repo: str, rev: str) -> _Response:
        hub_repo = self._writable_repo(_REPO_TYPES[rt], repo)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        ops: list[tuple[str, str, Any]] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                content = base64.b64decode(value["content"])
                if self.hub._upload_mode(path, len(content)) == "lfs" and content:
                    raise HubError(400, f"Your push was rejected because {path} must be stored with LFS")
                ops.append(("add", path, content))
            elif key == "lfsFile":
                ops.append(("lfs", path, (value["oid"], value.get("size"))))
            elif key == "deletedFile":
                ops.append(("delete", path, None))
            elif key == "deletedFolder":
                ops.append(("delete_folder", path, None))
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        sha, pr_num = self.hub._commit(
            hub_repo,
            rev,
            header.get("summary", ""),
            header.get("description", ""),
            ops,
            parent=header.get("parentCommit"),
            create_pr=self._flag("create_pr"),
        )
        url_prefix = "/" + _URL_PREFIX[hub_repo.repo_type] + hub_repo.repo_id
        return _json(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": self._url(f"{url_prefix}/commit/{sha}"),
                "hookOutput": "",
                "pullRequestUrl": self._url(f"{url_prefix}/discussions/{pr_num}") if pr_num else None,
            }
        )

    def create_branch(self, rt: str, repo: str, branch: str) -> _Response:
        hub_repo = self._writable_repo(_REPO_TYPES[rt], repo)
        if branch in hub_repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._json_body().get("startingPoint") or "main"
        hub_repo.branches[branch] = self.hub._resolve(hub_repo, start).sha
        return _json({})

    def delete_branch(self, rt: str, repo: str, branch: str) -> _Response:
        hub_repo = self._writable_repo(_REPO_TYPES[rt], repo)
        if branch == "main":
            raise HubError(403, "Cannot delete the default branch main")
        if branch not in hub_repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        del hub_repo.branches[branch]
        return _json({})

    def create_tag(self, rt: str, repo: str, rev: str) -> _Response:
        hub_repo = self._writable_repo(_REPO_TYPES[rt], repo)
        tag = self._json_body()["tag"]
        if tag in hub_repo.tags:
            raise HubError(409, f"Tag already exists: {tag}")
        hub_repo.tags[tag] = self.hub._resolve(hub_repo, rev).sha
        return _json({})

    def delete_tag(self, rt: str, repo: str, tag: str) -> _Response:
        hub_repo = self._writable_repo(_REPO_TYPES[rt], repo)
        if tag not in hub_repo.tags:
            raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
        del hub_repo.tags[tag]
        return _json({})

    # ------------------------------------------------------------------ git LFS

    def lfs_batch(self, repo: str, prefix: str = "") -> _Response:
        repo_type = {"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix]
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "fakehub only implements LFS uploads (downloads use /resolve)")
        self._writable_repo(repo_type, repo)
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub._blobs:
                answer["actions"] = {
                    "upload": self._upload_action(oid, size),
                    "verify": {
                        "href": self._url(f"/{prefix}{repo}.git/info/lfs/objects/verify"),
                        "header": {},
                    },
                }
            objects.append(answer)
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        return _Response(200, body, {"Content-Type": "application/vnd.git-lfs+json"})

    def _upload_action(self, oid: str, size: int) -> dict[str, Any]:
        sig = self._sign(oid)
        chunk = self.hub.lfs_multipart_chunk_size
        if chunk is None or size <= chunk:
            return {"href": self._url(f"/__fakehub/lfs/{oid}?sig={sig}"), "header": {}}
        parts = -(-size // chunk)
        header: dict[str, str] = {"chunk_size": str(chunk)}
        for number in range(1, parts + 1):
            header[str(number)] = self._url(f"/__fakehub/lfs/{oid}/part/{number}?sig={sig}")
        return {"href": self._url(f"/__fakehub/lfs/{oid}/complete?sig={sig}"), "header": header}

    def lfs_verify(self, repo: str, prefix: str = "") -> _Response:
        self._writable_repo({"": "model", "datasets/": "dataset", "spaces/": "space"}[prefix], repo)
        payload = self._json_body()
        stored = self.hub._blobs.get(payload.get("oid", ""))
        if stored is None or len(stored) != int(payload.get("size", -1)):
            raise HubError(404, f"LFS object {payload.get('oid')} not found or size mismatch")
        return _json({"success": True})

    def lfs_put(self, oid: str) -> _Response:
        self._check_signature(oid)
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not hash to {oid}")
        self.hub._blobs.setdefault(oid, self.body)
        return _Response(200, b"", {"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def lfs_put_part(self, oid: str, part: str) -> _Response:
        self._check_signature(oid)
        self.hub._parts.setdefault(oid, {})[int(part)] = self.body
        return _Response(200, b"", {"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def lfs_complete(self, oid: str) -> _Response:
        self._check_signature(oid)
        parts = self.hub._parts.pop(oid, {})
        listed = [int(p["partNumber"]) for p in self._json_body().get("parts", [])]
        if not parts or sorted(listed) != sorted(parts):
            raise HubError(
                400, f"Multipart completion for {oid} lists parts {listed}, uploaded {sorted(parts)}"
            )
        content = b"".join(parts[n] for n in sorted(parts))
        if hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, f"Assembled content does not hash to {oid}")
        self.hub._blobs.setdefault(oid, content)
        return _json({"success": True})


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range as inclusive (start, end); None to serve the whole body; "unsatisfiable" for 416."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if match is None or (not match.group(1) and not match.group(2)):
        return None  # multi-range or malformed: serving the full body is allowed
    first, last = match.groups()
    if not first:
        length = int(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


def _apply(hub: FakeHub, home: Path, monkeypatch: Any) -> None:
    env, attrs = hub.client_patches(home)
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    for obj, name, value in attrs:
        monkeypatch.setattr(obj, name, value)
    _reset_client_state()


if pytest is not None:

    @pytest.fixture
    def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
        """A running `FakeHub` with huggingface_hub pointed at it and a fresh HF_HOME under `tmp_path`."""
        with FakeHub() as hub:
            _apply(hub, tmp_path / "hf_home", monkeypatch)
            try:
                yield hub
            finally:
                _reset_client_state()


__all__ = ["FakeHub", "HubError", "HubStats", "RequestRecord", "fake_hub", "set_offline"]

"""The fake Hub must satisfy the real huggingface_hub client, or registry tests prove nothing.

Every test drives the installed client (HfApi, hf_hub_download, list_models, HfFileSystem, ...) against the
loopback server from `fakehub`, and checks the server side through its request log where the wire behaviour
(regular vs LFS upload, Range requests, retries) is the point.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import httpx2
import huggingface_hub
import huggingface_hub.constants as constants
import pytest
from fakehub import FakeHub, set_offline
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session
from hypothesis import given, settings
from hypothesis import strategies as st

CARD = """---
library_name: sftkit
language: [de, sw]
license: apache-2.0
base_model: xlm-roberta-base
tags: [sft, lt-sft]
---
# A sparse fine-tuning
"""


def _routes(hub: FakeHub, method: str, needle: str) -> list[str]:
    return [r.path for r in hub.requests if r.method == method and needle in r.path]


def _safetensors_bytes(n_values: int) -> bytes:
    """A valid single-tensor safetensors file, built by hand so the header size is known."""
    header = json.dumps({"delta": {"dtype": "F32", "shape": [n_values], "data_offsets": [0, 4 * n_values]}})
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + os.urandom(4 * n_values)


@pytest.fixture
def api(fake_hub: FakeHub) -> HfApi:
    fake_hub.lfs_threshold = 64 * 1024  # keep "large" files small so the suite stays fast
    return HfApi()


def test_client_points_at_fake(fake_hub: FakeHub, tmp_path: Path) -> None:
    assert constants.ENDPOINT == fake_hub.endpoint
    assert huggingface_hub.hf_api.api.endpoint == fake_hub.endpoint
    assert HfApi().endpoint == fake_hub.endpoint
    assert constants.HF_HUB_DISABLE_XET is True
    assert Path(constants.HF_HUB_CACHE).is_relative_to(tmp_path)
    assert huggingface_hub.whoami()["name"] == fake_hub.user


def test_small_file_is_regular_and_large_file_takes_lfs(fake_hub: FakeHub, api: HfApi) -> None:
    api.create_repo("alice/sft")
    small, large = b'{"density": 0.1}', os.urandom(fake_hub.lfs_threshold + 1)
    api.upload_file(path_or_fileobj=small, path_in_repo="config.json", repo_id="alice/sft")
    assert _routes(fake_hub, "PUT", "/__fakehub/lfs/") == []
    commit_body = [r for r in fake_hub.requests if r.method == "POST" and "/commit/" in r.path][-1]
    assert commit_body.bytes_in > len(small)  # content travelled inline (base64) in the NDJSON commit

    fake_hub.reset_stats()
    api.upload_file(path_or_fileobj=large, path_in_repo="delta.safetensors", repo_id="alice/sft")
    assert len(_routes(fake_hub, "POST", ".git/info/lfs/objects/batch")) == 1
    puts = [r for r in fake_hub.requests if r.method == "PUT"]
    assert len(puts) == 1 and puts[0].bytes_in == len(large)
    commit = [r for r in fake_hub.requests if r.method == "POST" and "/commit/" in r.path][-1]
    assert commit.bytes_in < 1024  # only the lfsFile pointer, not the content

    assert fake_hub.file_bytes("alice/sft", "config.json") == small
    assert fake_hub.file_bytes("alice/sft", "delta.safetensors") == large
    siblings = {s.rfilename: s for s in api.model_info("alice/sft", files_metadata=True).siblings}
    assert siblings["config.json"].lfs is None and siblings["config.json"].size == len(small)
    assert siblings["delta.safetensors"].lfs.sha256 == hashlib.sha256(large).hexdigest()
    assert siblings["delta.safetensors"].size == len(large)


def test_lfs_object_already_on_server_is_not_uploaded_twice(fake_hub: FakeHub, api: HfApi) -> None:
    api.create_repo("alice/a")
    api.create_repo("alice/b")
    payload = os.urandom(fake_hub.lfs_threshold * 2)
    api.upload_file(path_or_fileobj=payload, path_in_repo="x.bin", repo_id="alice/a")
    fake_hub.reset_stats()
    api.upload_file(path_or_fileobj=payload, path_in_repo="x.bin", repo_id="alice/b")
    assert _routes(fake_hub, "PUT", "/__fakehub/lfs/") == []
    assert fake_hub.file_bytes("alice/b", "x.bin") == payload


def test_multipart_lfs_upload(fake_hub: FakeHub, api: HfApi) -> None:
    fake_hub.lfs_multipart_chunk_size = 50_000
    api.create_repo("alice/big")
    payload = os.urandom(120_000)
    api.upload_file(path_or_fileobj=payload, path_in_repo="big.bin", repo_id="alice/big")
    assert len(_routes(fake_hub, "PUT", "/part/")) == 3
    assert len(_routes(fake_hub, "POST", "/complete")) == 1
    assert Path(hf_hub_download("alice/big", "big.bin")).read_bytes() == payload


def test_repo_info_siblings_card_data_and_tags(fake_hub: FakeHub, api: HfApi) -> None:
    api.create_repo("alice/card")
    api.create_commit(
        "alice/card",
        [
            CommitOperationAdd("README.md", CARD.encode()),
            CommitOperationAdd("sft/delta.safetensors", _safetensors_bytes(10)),
        ],
        commit_message="add card",
    )
    assert sorted(api.list_repo_files("alice/card")) == [
        ".gitattributes",
        "README.md",
        "sft/delta.safetensors",
    ]
    info = api.model_info("alice/card")
    assert info.sha == api.list_repo_commits("alice/card")[0].commit_id
    assert info.library_name == "sftkit"
    assert info.card_data.language == ["de", "sw"]
    assert info.card_data.tags == ["sft", "lt-sft"]
    assert {
        "sft",
        "lt-sft",
        "sftkit",
        "de",
        "sw",
        "license:apache-2.0",
        "base_model:xlm-roberta-base",
    } <= set(info.tags)
    assert info.private is False and info.last_modified is not None
    assert [s.rfilename for s in info.siblings] == [".gitattributes", "README.md", "sft/delta.safetensors"]
    tree = {e.path: e for e in api.list_repo_tree("alice/card", recursive=True)}
    assert type(tree["sft"]).__name__ == "RepoFolder"
    assert tree["sft/delta.safetensors"].size == len(
        fake_hub.file_bytes("alice/card", "sft/delta.safetensors")
    )
    (entry,) = api.get_paths_info("alice/card", ["README.md"], expand=True)
    assert entry.last_commit.title == "add card"


def test_download_round_trip_and_snapshot(fake_hub: FakeHub, api: HfApi, tmp_path: Path) -> None:
    api.create_repo("alice/dl")
    small, large = b"hello", os.urandom(fake_hub.lfs_threshold + 10)
    api.upload_file(path_or_fileobj=small, path_in_repo="a.txt", repo_id="alice/dl")
    api.upload_file(path_or_fileobj=large, path_in_repo="w/b.bin", repo_id="alice/dl")
    path = hf_hub_download("alice/dl", "w/b.bin")
    assert Path(path).read_bytes() == large
    assert Path(path).resolve().is_relative_to(tmp_path)
    folder = Path(snapshot_download("alice/dl", allow_patterns=["*.txt", "w/*"]))
    assert (folder / "a.txt").read_bytes() == small and (folder / "w/b.bin").read_bytes() == large


def test_revision_pinning(fake_hub: FakeHub, api: HfApi) -> None:
    api.create_repo("alice/rev")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="delta.txt", repo_id="alice/rev").oid
    api.create_tag("alice/rev", tag="v1")
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="delta.txt", repo_id="alice/rev").oid
    assert first != second and len(first) == 40
    assert Path(hf_hub_download("alice/rev", "delta.txt", revision=first)).read_bytes() == b"v1"
    assert Path(hf_hub_download("alice/rev", "delta.txt", revision=second)).read_bytes() == b"v2"
    assert Path(hf_hub_download("alice/rev", "delta.txt", revision="v1")).read_bytes() == b"v1"
    assert Path(hf_hub_download("alice/rev", "delta.txt", revision=first[:7])).read_bytes() == b"v1"
    assert Path(hf_hub_download("alice/rev", "delta.txt")).read_bytes() == b"v2"
    assert api.model_info("alice/rev", revision="v1").sha == first
    api.create_branch("alice/rev", branch="dev", revision=first)
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="delta.txt", repo_id="alice/rev", revision="dev")
    assert Path(hf_hub_download("alice/rev", "delta.txt", revision="dev")).read_bytes() == b"dev"
    refs = api.list_repo_refs("alice/rev")
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first)]
    titles = [c.title for c in api.list_repo_commits("alice/rev")]
    assert titles == ["Upload delta.txt with huggingface_hub"] * 2 + ["initial commit"]


def test_list_models_filters(fake_hub: FakeHub, api: HfApi) -> None:
    for repo_id, lang in [("alice/sft-de", "de"), ("alice/sft-sw", "sw"), ("bob/sft-de", "de")]:
        card = f"---\nlibrary_name: sftkit\nlanguage: {lang}\ntags: [sft]\n---\n"
        fake_hub.seed(repo_id, {"README.md": card.encode()})
    fake_hub.seed("bob/other", {"README.md": b"---\ntags: [unrelated]\n---\n"})
    fake_hub.seed("alice/secret-sft", {"README.md": b"---\ntags: [sft]\n---\n"}, private=True)

    ids = lambda models: sorted(m.id for m in models)  # noqa: E731
    assert ids(huggingface_hub.list_models(filter="sft", token=False)) == [
        "alice/sft-de",
        "alice/sft-sw",
        "bob/sft-de",
    ]
    assert ids(api.list_models(filter="sft")) == [
        "alice/secret-sft",
        "alice/sft-de",
        "alice/sft-sw",
        "bob/sft-de",
    ]
    assert ids(api.list_models(filter=["sftkit", "de"], author="alice")) == ["alice/sft-de"]
    assert ids(api.list_models(search="SW")) == ["alice/sft-sw"]
    with_card = list(api.list_models(author="bob", filter="sft", cardData=True))
    assert [m.card_data.language for m in with_card] == ["de"]
    assert all(m.card_data is None for m in api.list_models(author="bob"))
    fake_hub.page_size = 2  # forces Link-header pagination
    assert len(list(api.list_models(filter="sft"))) == 4
    assert len(list(api.list_models(filter="sft", limit=3))) == 3


def test_byte_ranges_and_safetensors_header(fake_hub: FakeHub, api: HfApi) -> None:
    content = _safetensors_bytes(200_000)  # ~800 kB, the header is a few dozen bytes
    fake_hub.seed("alice/st", {"model.safetensors": content})
    fake_hub.reset_stats()
    meta = api.get_safetensors_metadata("alice/st")
    assert meta.files_metadata["model.safetensors"].tensors["delta"].shape == [200_000]
    assert fake_hub.stats.bytes_out <= 100_001  # the client asked for bytes=0-100000 and got no more

    url = huggingface_hub.hf_hub_url("alice/st", "model.safetensors")
    response = get_session().get(url, headers={"Range": "bytes=10-19"})
    assert response.status_code == 206 and response.content == content[10:20]
    assert response.headers["Content-Range"] == f"bytes 10-19/{len(content)}"
    assert get_session().get(url, headers={"Range": "bytes=-5"}).content == content[-5:]
    assert get_session().get(url, headers={"Range": f"bytes={len(content)}-"}).status_code == 416

    fs = HfFileSystem()
    with fs.open("alice/st/model.safetensors", "rb", block_size=1024) as f:
        f.seek(1000)
        assert f.read(16) == content[1000:1016]


def test_range_semantics_match_slicing() -> None:
    with FakeHub() as hub, httpx2.Client() as client:

        @settings(max_examples=40, deadline=None)
        @given(data=st.binary(min_size=1, max_size=64), start=st.integers(0, 80), length=st.integers(1, 80))
        def check(data: bytes, start: int, length: int) -> None:
            hub.seed("alice/r", {"f.bin": data})
            url = f"{hub.endpoint}/alice/r/resolve/main/f.bin"
            response = client.get(url, headers={"Range": f"bytes={start}-{start + length - 1}"})
            if start >= len(data):
                assert response.status_code == 416
                assert response.headers["Content-Range"] == f"bytes */{len(data)}"
            else:
                assert response.status_code == 206 and response.content == data[start : start + length]
                assert int(response.headers["Content-Length"]) == len(response.content)

        check()


def test_not_found_errors(fake_hub: FakeHub, api: HfApi) -> None:
    fake_hub.seed("alice/here", {"a.txt": b"a"})
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/missing", "a.txt")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/here", "nope.txt")
    assert api.file_exists("alice/here", "a.txt") and not api.file_exists("alice/here", "nope.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("alice/here", "a.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/here", revision="0" * 40)
    assert not api.repo_exists("alice/missing") and api.repo_exists("alice/here")


def test_auth_on_writes_and_private_repos(fake_hub: FakeHub, api: HfApi) -> None:
    api.create_repo("alice/priv", private=True)
    upload = dict(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/priv")
    with pytest.raises(HfHubHTTPError) as anonymous:
        api.upload_file(**upload, token=False)
    assert anonymous.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as wrong:
        api.upload_file(**upload, token="hf_wrong")
    assert wrong.value.response.status_code == 401
    assert "Invalid credentials" in wrong.value.response.headers["X-Error-Message"]
    with pytest.raises(HfHubHTTPError) as read_only:
        api.upload_file(**upload, token=fake_hub.read_token)
    assert read_only.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as no_create:
        api.create_repo("alice/other", token=False)
    assert no_create.value.response.status_code == 401

    api.upload_file(**upload)  # HF_TOKEN from the fixture is the write token
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/priv", token=False)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/priv", "x.txt", token=False)
    assert api.model_info("alice/priv", token=fake_hub.read_token).private is True


def test_injected_500_on_commit_surfaces_and_retry_succeeds(fake_hub: FakeHub, api: HfApi) -> None:
    api.create_repo("alice/flaky")
    before = api.model_info("alice/flaky").sha
    fake_hub.fail_next(r"/commit/main", status=500)
    with pytest.raises(HfHubHTTPError) as failure:
        api.upload_file(path_or_fileobj=b"data", path_in_repo="d.txt", repo_id="alice/flaky")
    assert failure.value.response.status_code == 500
    assert api.model_info("alice/flaky").sha == before
    api.upload_file(path_or_fileobj=b"data", path_in_repo="d.txt", repo_id="alice/flaky")
    assert fake_hub.file_bytes("alice/flaky", "d.txt") == b"data"
    assert [r.injected for r in fake_hub.requests if "/commit/" in r.path] == [True, False]


def test_transient_500_on_lfs_put_is_retried_by_client(fake_hub: FakeHub, api: HfApi) -> None:
    api.create_repo("alice/flaky-lfs")
    payload = os.urandom(fake_hub.lfs_threshold + 1)
    fake_hub.fail_next(r"^/__fakehub/lfs/", method="PUT", status=503)
    api.upload_file(path_or_fileobj=payload, path_in_repo="w.bin", repo_id="alice/flaky-lfs")
    puts = [r for r in fake_hub.requests if r.method == "PUT"]
    assert [(r.status, r.injected) for r in puts] == [(503, True), (200, False)]
    assert all(r.bytes_in == len(payload) for r in puts)  # the client re-sent the whole body
    assert fake_hub.file_bytes("alice/flaky-lfs", "w.bin") == payload


def test_dropped_connection_on_commit(fake_hub: FakeHub, api: HfApi) -> None:
    api.create_repo("alice/drop")
    fake_hub.fail_next(r"/commit/", disconnect=True)
    with pytest.raises(httpx2.TransportError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/drop")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/drop")
    assert fake_hub.file_bytes("alice/drop", "x.txt") == b"x"


def test_commit_operations_parent_check_and_pull_request(fake_hub: FakeHub, api: HfApi) -> None:
    api.create_repo("alice/ops")
    stale = api.model_info("alice/ops").sha
    api.upload_file(path_or_fileobj=b"1", path_in_repo="dir/a.txt", repo_id="alice/ops")
    with pytest.raises(HfHubHTTPError) as conflict:
        api.upload_file(path_or_fileobj=b"2", path_in_repo="b.txt", repo_id="alice/ops", parent_commit=stale)
    assert conflict.value.response.status_code == 412
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="dir/a.txt", repo_id="alice/ops", create_pr=True)
    assert pr.pr_revision == "refs/pr/1"
    assert Path(hf_hub_download("alice/ops", "dir/a.txt", revision=pr.pr_revision)).read_bytes() == b"pr"
    assert fake_hub.file_bytes("alice/ops", "dir/a.txt") == b"1"
    api.delete_folder("dir", repo_id="alice/ops")
    assert api.list_repo_files("alice/ops") == [".gitattributes"]


def test_tampered_blob_is_served_under_the_original_checksum(fake_hub: FakeHub, api: HfApi) -> None:
    payload = os.urandom(fake_hub.lfs_threshold + 3)
    fake_hub.seed("alice/t", {"delta.safetensors": payload})
    fake_hub.tamper("alice/t", "delta.safetensors")
    (sibling,) = [s for s in api.model_info("alice/t", files_metadata=True).siblings if s.lfs]
    downloaded = Path(hf_hub_download("alice/t", "delta.safetensors")).read_bytes()
    assert len(downloaded) == len(payload) and downloaded != payload
    assert sibling.lfs.sha256 == hashlib.sha256(payload).hexdigest() != hashlib.sha256(downloaded).hexdigest()


def test_offline_mode_serves_cached_file(
    fake_hub: FakeHub, api: HfApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.seed("alice/off", {"delta.bin": b"cached bytes", "other.bin": b"never fetched"})
    online = hf_hub_download("alice/off", "delta.bin")
    set_offline(monkeypatch)
    fake_hub.reset_stats()
    assert hf_hub_download("alice/off", "delta.bin") == online
    assert Path(online).read_bytes() == b"cached bytes"
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("alice/off", "other.bin")
    assert fake_hub.stats.requests == 0


def test_stats_count_traffic(fake_hub: FakeHub, api: HfApi) -> None:
    payload = os.urandom(50_000)
    fake_hub.seed("alice/s", {"p.bin": payload})
    fake_hub.reset_stats()
    hf_hub_download("alice/s", "p.bin")
    stats = fake_hub.stats
    assert stats.bytes_out == len(payload) and stats.bytes_in == 0
    assert stats.by_route == {"HEAD resolve": 1, "GET resolve": 1}


def test_usable_outside_pytest_fixture(tmp_path: Path) -> None:
    original = constants.ENDPOINT
    with FakeHub() as hub, hub.patched_client(tmp_path):
        endpoint = hub.endpoint
        huggingface_hub.create_repo("fake-user/bench")
        huggingface_hub.upload_file(path_or_fileobj=b"b", path_in_repo="b.txt", repo_id="fake-user/bench")
        assert Path(hf_hub_download("fake-user/bench", "b.txt")).read_bytes() == b"b"
    assert constants.ENDPOINT == original and huggingface_hub.hf_api.api.endpoint == original
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{endpoint}/api/models")

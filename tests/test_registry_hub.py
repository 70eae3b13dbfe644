"""The Hub backend over a real HTTP round trip: the real huggingface_hub client against the loopback FakeHub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fakehub import FakeHub, set_offline
from huggingface_hub import HfApi

from sftkit.compose import apply
from sftkit.delta import SFT, SparseDelta
from sftkit.errors import ChecksumError
from sftkit.extraction import extract
from sftkit.format import load_file, save_file
from sftkit.metadata import SFTMetadata
from sftkit.registry import (
    SFT_FILENAME,
    EntryNotFoundError,
    HubAuthError,
    HubOfflineError,
    HubRegistry,
    HubServerError,
    LocalRegistry,
    pull,
    push,
    resolve,
    search,
)
from sftkit.registry.community import write_pytorch_diff
from sftkit.testing import perturbed_copy, tiny_masked_lm

REPO = "alice/xlmr-lang-sft-quy"


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    return tiny_masked_lm(seed=0)


def make_sft(base: torch.nn.Module, seed: int, language: str = "quy") -> SFT:
    sft = extract(base, perturbed_copy(base, density=0.1, seed=seed), density=0.03,
                  metadata=SFTMetadata(kind="language", language=language))
    sft.metadata.base.name = "xlm-roberta-base"
    return sft


@pytest.fixture(scope="module")
def sft_files(tmp_path_factory: pytest.TempPathFactory, base: torch.nn.Module) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hub-sfts")
    out = {}
    for key, seed in (("v1", 1), ("v2", 2)):
        save_file(make_sft(base, seed), str(d / f"{key}.safetensors"))
        out[key] = d / f"{key}.safetensors"
    return out


@pytest.fixture
def hub(fake_hub: FakeHub) -> FakeHub:
    fake_hub.lfs_threshold = 4096  # the SFT file travels through the LFS upload path
    return fake_hub


def logits_with(path: Path | None) -> torch.Tensor:
    model = tiny_masked_lm(seed=0)
    if path is not None:
        apply(model, [load_file(path)])
    with torch.no_grad():
        return model(input_ids=torch.tensor([[0, 5, 17, 42, 99, 2]])).logits


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


def test_push_search_pull_compose_round_trip(hub: FakeHub, tmp_path: Path, sft_files: dict[str, Path]) -> None:
    pushed = push(sft_files["v1"], REPO, hub=True, license="cc-by-4.0")
    assert pushed.revision and len(pushed.revision) == 40 and pushed.source == "hub"
    info = HfApi().model_info(REPO)
    assert {s.rfilename for s in info.siblings} >= {SFT_FILENAME, "README.md", "sftkit.json"}
    card = info.card_data.to_dict()
    assert card["library_name"] == "sftkit" and card["base_model"] == "xlm-roberta-base"
    assert card["base_model_relation"] == "adapter" and card["language"] == ["quy"] and card["license"] == "cc-by-4.0"
    assert {"sparse-fine-tuning", "sftkit", "language-sft"} <= set(card["tags"])
    assert hub.file_bytes(REPO, SFT_FILENAME) == sft_files["v1"].read_bytes()

    hub.reset_stats()
    found = search(hub=True, language="quy")
    assert [e.repo_id for e in found] == [REPO]
    assert found[0].nnz == load_file(sft_files["v1"]).nnz and found[0].base_fingerprint == pushed.base_fingerprint
    assert not [r for r in hub.requests if "/resolve/" in r.path]  # search downloads no file
    assert search(hub=True, language="deu") == [] and search(hub=True, task="nli") == []

    entry = pull(REPO, registry=tmp_path / "reg")
    assert entry.revision == pushed.revision and entry.file is not None
    assert entry.file.read_bytes() == sft_files["v1"].read_bytes()
    assert LocalRegistry(tmp_path / "reg").search(language="quy")[0].revision == pushed.revision
    composed = logits_with(entry.file)
    assert torch.equal(composed, logits_with(sft_files["v1"]))
    assert not torch.equal(composed, logits_with(None))


def test_search_reads_the_header_when_the_card_has_no_metadata(hub: FakeHub, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    indices = torch.randperm(1_000_000, generator=gen)[:150_000].sort().values
    delta = SparseDelta((1000, 1000), indices, torch.randn(150_000, generator=gen))
    path = tmp_path / "big.safetensors"
    save_file(SFT({"encoder.layer.0.output.dense.weight": delta}, metadata=SFTMetadata(kind="task", task="nli")), str(path))
    card = "---\nlibrary_name: sftkit\ntags: [sftkit]\n---\nhand-written card\n"
    hub.seed("bob/plain", {SFT_FILENAME: path.read_bytes(), "README.md": card.encode()})
    size = path.stat().st_size
    hub.reset_stats()
    (entry,) = search(hub=True, task="nli")
    assert (entry.repo_id, entry.kind, entry.nnz) == ("bob/plain", "task", 150_000)
    assert entry.density == pytest.approx(0.15)
    assert hub.stats.bytes_out < size / 4, f"search moved {hub.stats.bytes_out} bytes of a {size}-byte file"


def test_missing_repo_and_revision(hub: FakeHub, tmp_path: Path, sft_files: dict[str, Path]) -> None:
    with pytest.raises(EntryNotFoundError) as err:
        pull("nobody/missing", registry=tmp_path / "reg")
    assert "nobody/missing" in one_line(err) and "repo id" in str(err.value)
    push(sft_files["v1"], REPO, hub=True)
    with pytest.raises(EntryNotFoundError, match="revision"):
        pull(f"{REPO}@no-such-branch", registry=tmp_path / "reg")
    hub.seed("carol/empty", {"README.md": b"nothing here"})
    with pytest.raises(EntryNotFoundError, match="holds neither"):
        pull("carol/empty", registry=tmp_path / "reg")
    assert LocalRegistry(tmp_path / "reg").list_entries() == []


def test_auth_errors(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, sft_files: dict[str, Path], tmp_path: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", hub.read_token)
    with pytest.raises(HubAuthError) as err:
        push(sft_files["v1"], REPO, hub=True)
    assert "403" in one_line(err) and "write access" in str(err.value)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HubAuthError) as err:
        push(sft_files["v1"], REPO, hub=True)
    assert "401" in one_line(err) and "hf auth login" in str(err.value)

    monkeypatch.setenv("HF_TOKEN", hub.token)
    push(sft_files["v1"], "alice/secret", hub=True, private=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(EntryNotFoundError) as err:  # the Hub never confirms a private repo exists
        pull("alice/secret", registry=tmp_path / "reg")
    assert "private" in one_line(err) and "hf auth login" in str(err.value)


def test_server_error_mid_upload_then_retry(hub: FakeHub, sft_files: dict[str, Path]) -> None:
    hub.fail_next(r"/commit/", status=500, method="POST")
    with pytest.raises(HubServerError) as err:
        push(sft_files["v1"], REPO, hub=True)
    assert "500" in one_line(err) and "retry" in str(err.value)
    assert any(r.method == "PUT" for r in hub.requests)  # the LFS upload had gone through
    files = {s.rfilename for s in HfApi().model_info(REPO).siblings}
    assert SFT_FILENAME not in files  # no commit: the Hub shows nothing half-pushed
    again = push(sft_files["v1"], REPO, hub=True)
    assert hub.file_bytes(REPO, SFT_FILENAME, revision=again.revision or "main") == sft_files["v1"].read_bytes()


def test_server_error_mid_download_registers_nothing(hub: FakeHub, tmp_path: Path, sft_files: dict[str, Path]) -> None:
    push(sft_files["v1"], REPO, hub=True)
    reg = LocalRegistry(tmp_path / "reg")
    hub.fail_next(rf"/{REPO}/resolve/.*/{SFT_FILENAME}", status=503, method="GET")
    with pytest.raises(HubServerError) as err:
        pull(REPO, registry=reg)
    assert "503" in one_line(err)
    assert reg.list_entries() == [] and not list((tmp_path / "reg").rglob(SFT_FILENAME))
    entry = pull(REPO, registry=reg)
    assert entry.file is not None and entry.file.read_bytes() == sft_files["v1"].read_bytes()


def test_revision_pinning(hub: FakeHub, tmp_path: Path, sft_files: dict[str, Path]) -> None:
    v1 = push(sft_files["v1"], REPO, hub=True)
    v2 = push(sft_files["v2"], REPO, hub=True)
    dev = push(sft_files["v1"], REPO, hub=True, revision="dev")
    assert len({v1.revision, v2.revision, dev.revision}) == 3
    reg = LocalRegistry(tmp_path / "reg")
    latest = pull(REPO, registry=reg)
    assert latest.revision == v2.revision and latest.file.read_bytes() == sft_files["v2"].read_bytes()
    pinned = pull(f"{REPO}@{v1.revision}", registry=reg)
    assert pinned.revision == v1.revision and pinned.file.read_bytes() == sft_files["v1"].read_bytes()
    assert reg.get(REPO).revision == v2.revision  # a pinned pull does not move main
    short = pull(f"{REPO}@{v1.revision[:8]}", registry=tmp_path / "short")
    assert short.revision == v1.revision and short.file.read_bytes() == sft_files["v1"].read_bytes()
    assert pull(f"{REPO}@dev", registry=reg).revision == dev.revision
    assert reg.get(f"{REPO}@dev").revision == dev.revision
    hub.reset_stats()
    assert pull(f"{REPO}@{v1.revision}", registry=reg).revision == v1.revision
    assert hub.stats.requests == 0  # a pinned commit already registered needs no network


def test_offline_from_cache(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            sft_files: dict[str, Path]) -> None:
    pushed = push(sft_files["v1"], REPO, hub=True)
    pull(REPO, registry=tmp_path / "online")
    set_offline(monkeypatch)
    hub.reset_stats()
    entry = pull(REPO, registry=tmp_path / "offline")  # a fresh registry, filled from the Hub cache
    assert hub.stats.requests == 0
    assert entry.revision == pushed.revision and entry.file.read_bytes() == sft_files["v1"].read_bytes()
    with pytest.raises(HubOfflineError) as err:
        pull("alice/never-pulled", registry=tmp_path / "offline")
    assert "HF_HUB_OFFLINE" in one_line(err)
    assert resolve(tiny_masked_lm(seed=0), language="quy", registry=tmp_path / "offline") == [entry.file]


def test_altered_bytes_are_refused_then_a_clean_pull_works(hub: FakeHub, tmp_path: Path,
                                                           sft_files: dict[str, Path]) -> None:
    push(sft_files["v1"], REPO, hub=True)
    good = hub.file_bytes(REPO, SFT_FILENAME)
    hub.tamper(REPO, SFT_FILENAME)
    reg = LocalRegistry(tmp_path / "reg")
    with pytest.raises(ChecksumError) as err:
        pull(REPO, registry=reg)
    assert "not registered" in one_line(err)
    assert reg.list_entries() == [] and not list((tmp_path / "reg").rglob(SFT_FILENAME))
    hub.tamper(REPO, SFT_FILENAME, good)  # the storage object is repaired
    entry = pull(REPO, registry=reg)
    assert entry.file.read_bytes() == sft_files["v1"].read_bytes()


def test_composable_sft_repo_is_converted(hub: FakeHub, tmp_path: Path, base: torch.nn.Module) -> None:
    original = make_sft(base, seed=5)
    diff = write_pytorch_diff(original, tmp_path / "pytorch_diff.bin")
    raw = torch.load(diff, weights_only=False)
    name = "roberta.encoder.layer.0.attention.self.query.weight"
    enc, delta = raw["diffs"][name], original["encoder.layer.0.attention.self.query.weight"]
    rows, cols = delta.shape
    first = int(delta.indices[torch.argsort(delta.indices % cols * rows + delta.indices // cols)][0])
    assert int(enc["index_steps"][0]) == first % cols * rows + first // cols  # column-major, delta-coded
    config = {"_name_or_path": "xlm-roberta-base", "model_type": "xlm-roberta"}
    repo = "cambridgeltl/xlmr-lang-sft-quy-small"
    sha = hub.seed(repo, {"pytorch_diff.bin": diff.read_bytes(), "config.json": json.dumps(config).encode(),
                          "README.md": b"# composable-sft language SFT\n"})

    found = HubRegistry().search(language="quy")
    assert [e.repo_id for e in found] == [repo] and found[0].kind == "language"
    entry = pull(repo, registry=tmp_path / "reg", base=tiny_masked_lm(seed=0))
    assert (entry.kind, entry.language, entry.revision, entry.source) == ("language", "quy", sha, "hub")
    assert entry.provenance["repo"] == repo and entry.provenance["revision"] == sha
    assert entry.provenance["file"] == "pytorch_diff.bin"
    meta = load_file(entry.file).metadata
    assert meta.provenance["repo"] == repo and meta.base.name == "xlm-roberta-base"
    assert meta.base.fingerprint == original.metadata.base.fingerprint
    assert torch.equal(logits_with(entry.file), logits_with_sft(original))


def logits_with_sft(sft: SFT) -> torch.Tensor:
    model = tiny_masked_lm(seed=0)
    apply(model, [sft])
    with torch.no_grad():
        return model(input_ids=torch.tensor([[0, 5, 17, 42, 99, 2]])).logits


def test_resolve_through_the_hub(hub: FakeHub, tmp_path: Path, base: torch.nn.Module) -> None:
    other_base = tiny_masked_lm(seed=3)
    for owner, model, seed in (("alice", base, 1), ("mallory", other_base, 2)):
        path = tmp_path / f"{owner}.safetensors"
        save_file(make_sft(model, seed), str(path))
        push(path, f"{owner}/xlmr-lang-sft-quy", hub=True)
    reg = LocalRegistry(tmp_path / "reg")
    (path,) = resolve(base, language="quy", registry=reg, hub=True)
    assert path == reg.get("alice/xlmr-lang-sft-quy").file
    assert path.read_bytes() == (tmp_path / "alice.safetensors").read_bytes()
    hub.reset_stats()
    assert resolve(base, language="quy", registry=reg) == [path]  # now local: no Hub traffic
    assert hub.stats.requests == 0
    assert resolve(other_base, language="quy", registry=reg, hub=True)[0].read_bytes() == (
        tmp_path / "mallory.safetensors").read_bytes()

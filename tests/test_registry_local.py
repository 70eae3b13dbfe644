"""The local registry: layout, revisions, search, concurrent writers, crash safety, resolve by name."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sftkit.errors import ChecksumError, ConfigError
from sftkit.extraction import extract
from sftkit.format import save_file
from sftkit.metadata import SFTMetadata
from sftkit.registry import (
    CARD_FILENAME,
    META_FILENAME,
    SFT_FILENAME,
    EntryNotFoundError,
    LocalRegistry,
    ResolveError,
    default_root,
    list_entries,
    parse_ref,
    push,
    resolve,
    search,
    suggest_repo_id,
)
from sftkit.registry.card import render_card
from sftkit.registry.entry import RegistryEntry
from sftkit.registry.naming import codes_from_name
from sftkit.registry.sftfile import sha256_of
from sftkit.testing import perturbed_copy, tiny_masked_lm

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_sft(base: torch.nn.Module, path: Path, *, seed: int = 1, kind: str = "language", code: str = "quy",
             base_name: str | None = "xlm-roberta-base") -> Path:
    tuned = perturbed_copy(base, density=0.1, seed=seed)
    meta = SFTMetadata(kind=kind, language=code if kind == "language" else None, task=code if kind == "task" else None)
    sft = extract(base, tuned, density=0.02, metadata=meta)
    sft.metadata.base.name = base_name
    save_file(sft, str(path))
    return path


@pytest.fixture(scope="module")
def base_a() -> torch.nn.Module:
    return tiny_masked_lm(seed=0)


@pytest.fixture(scope="module")
def base_b() -> torch.nn.Module:
    return tiny_masked_lm(seed=7)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, base_a: torch.nn.Module, base_b: torch.nn.Module) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sfts")
    return {
        "quy": make_sft(base_a, d / "quy.safetensors", seed=1),
        "quy2": make_sft(base_a, d / "quy2.safetensors", seed=2),
        "quy_b": make_sft(base_b, d / "quy_b.safetensors", seed=3),
        "nli": make_sft(base_a, d / "nli.safetensors", seed=4, kind="task", code="nli"),
        "deu": make_sft(base_a, d / "deu.safetensors", seed=5, code="deu"),
    }


def test_push_layout_revisions_and_search(tmp_path: Path, files: dict[str, Path]) -> None:
    reg = LocalRegistry(tmp_path / "reg")
    first = reg.push(files["quy"], "me/xlmr-lang-sft-quy")
    assert first.file is not None and first.file.read_bytes() == files["quy"].read_bytes()
    rev_dir = first.file.parent
    assert rev_dir == tmp_path / "reg" / "me" / "xlmr-lang-sft-quy" / "revisions" / first.revision
    assert sorted(p.name for p in rev_dir.iterdir()) == sorted([SFT_FILENAME, CARD_FILENAME, META_FILENAME])
    assert (rev_dir.parent.parent / "refs" / "main").read_text().strip() == first.revision
    meta = json.loads((rev_dir / META_FILENAME).read_text())
    assert meta["metadata"]["language"] == "quy" and meta["entry"]["sha256"] == sha256_of(files["quy"])
    card = (rev_dir / CARD_FILENAME).read_text()
    assert card.startswith("---\n") and "library_name: sftkit" in card and "base_model_relation: adapter" in card
    assert first.nnz and 0 < (first.density or 0) < 1 and first.size == files["quy"].stat().st_size

    again = reg.push(files["quy"], "me/xlmr-lang-sft-quy")
    assert again.revision == first.revision  # same content, same revision
    second = reg.push(files["quy2"], "me/xlmr-lang-sft-quy")
    assert second.revision != first.revision
    assert [e.revision for e in reg.revisions("me/xlmr-lang-sft-quy")] == [first.revision, second.revision]
    assert reg.get("me/xlmr-lang-sft-quy").revision == second.revision
    assert reg.get(f"me/xlmr-lang-sft-quy@{first.revision[:8]}").file.read_bytes() == files["quy"].read_bytes()

    reg.push(files["nli"], "me/xlmr-task-sft-nli", branch="v1")
    reg.push(files["deu"], "other/xlmr-lang-sft-deu")
    assert [e.repo_id for e in reg.list_entries()] == ["me/xlmr-lang-sft-quy", "me/xlmr-task-sft-nli", "other/xlmr-lang-sft-deu"]
    assert [e.repo_id for e in reg.search(language="QUY")] == ["me/xlmr-lang-sft-quy"]
    assert [e.repo_id for e in reg.search(task="nli")] == ["me/xlmr-task-sft-nli"]
    assert {e.repo_id for e in reg.search(kind="language")} == {"me/xlmr-lang-sft-quy", "other/xlmr-lang-sft-deu"}
    assert len(reg.search(base="xlm-roberta-base")) == 3 and reg.search(base="bert-base-cased") == []
    assert reg.search(base=first.base_fingerprint, language="deu")[0].repo_id == "other/xlmr-lang-sft-deu"
    assert reg.get("me/xlmr-task-sft-nli@v1").task == "nli"

    with pytest.raises(EntryNotFoundError) as err:
        reg.get("me/missing")
    assert "me/missing" in str(err.value) and "\n" not in str(err.value)


def test_module_api_uses_sftkit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, Path]) -> None:
    monkeypatch.setenv("SFTKIT_HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / "registry"
    entry = push(files["quy"], "me")  # only an org: named by the convention
    assert entry.repo_id == "me/xlmr-lang-sft-quy"
    assert [e.repo_id for e in list_entries()] == ["me/xlmr-lang-sft-quy"]
    assert search(language="quy")[0].file == entry.file
    assert entry.file is not None and str(entry.file).startswith(str(tmp_path / "home" / "registry"))


def test_corrupted_file_is_refused_and_nothing_registered(tmp_path: Path, files: dict[str, Path]) -> None:
    bad = tmp_path / "bad.safetensors"
    data = bytearray(files["quy"].read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    reg = LocalRegistry(tmp_path / "reg")
    with pytest.raises(ChecksumError):
        reg.push(bad, "me/bad")
    assert reg.list_entries() == [] and not (tmp_path / "reg" / "me").exists()
    assert not list((tmp_path / "reg").rglob(SFT_FILENAME))


def test_crash_after_rename_leaves_nothing_visible(tmp_path: Path, files: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    reg = LocalRegistry(tmp_path / "reg")
    reg.push(files["deu"], "me/deu")

    def crash(self: LocalRegistry, index: dict) -> None:
        raise KeyboardInterrupt("killed between the rename and the index update")

    monkeypatch.setattr(LocalRegistry, "_write_index", crash)
    with pytest.raises(KeyboardInterrupt):
        reg.push(files["quy"], "me/quy")
    monkeypatch.undo()
    orphans = list((tmp_path / "reg" / "me" / "quy" / "revisions").iterdir())
    assert len(orphans) == 1  # the renamed dir exists on disk ...
    assert [e.repo_id for e in reg.list_entries()] == ["me/deu"]  # ... but is invisible
    assert reg.find("me/quy") is None

    entry = reg.push(files["nli"], "me/nli")  # the next writer cleans the orphan up
    assert not orphans[0].exists() and entry.file is not None and entry.file.exists()
    again = reg.push(files["quy"], "me/quy")
    assert again.file is not None and again.file.read_bytes() == files["quy"].read_bytes()
    assert [e.repo_id for e in reg.list_entries()] == ["me/deu", "me/nli", "me/quy"]


def test_writer_killed_mid_write(tmp_path: Path, files: dict[str, Path]) -> None:
    """A process dies (os._exit) while copying into staging: nothing visible, the next push cleans up."""
    root = tmp_path / "reg"
    script = textwrap.dedent(f"""
        import os, shutil
        from sftkit.registry import LocalRegistry
        real = shutil.copyfile
        def dying_copy(src, dst, **kw):
            with open(src, "rb") as s, open(dst, "wb") as d:
                d.write(s.read()[:100])
            os._exit(9)
        shutil.copyfile = dying_copy
        LocalRegistry({str(root)!r}).push({str(files["quy"])!r}, "me/quy")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    staged = list((root / ".staging").iterdir())
    assert len(staged) == 1 and (staged[0] / SFT_FILENAME).stat().st_size == 100
    reg = LocalRegistry(root)
    assert reg.list_entries() == [] and reg.find("me/quy") is None
    entry = reg.push(files["quy"], "me/quy")
    assert not staged[0].exists()
    assert entry.file is not None and sha256_of(entry.file) == sha256_of(files["quy"])


def test_concurrent_pushes_from_two_processes(tmp_path: Path, files: dict[str, Path]) -> None:
    root = tmp_path / "reg"
    jobs = {
        "a": [("quy", "me/quy"), ("nli", "me/nli"), ("quy2", "shared/lang")],
        "b": [("deu", "me/deu"), ("quy_b", "me/quy-b"), ("quy", "shared/lang")],
    }
    procs = []
    for pushes in jobs.values():
        calls = "\n".join(f"reg.push({str(files[f])!r}, {repo!r})" for f, repo in pushes)
        script = f"from sftkit.registry import LocalRegistry\nreg = LocalRegistry({str(root)!r})\n{calls}\n"
        procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err

    reg = LocalRegistry(root)
    assert {e.repo_id for e in reg.list_entries()} == {"me/quy", "me/nli", "me/deu", "me/quy-b", "shared/lang"}
    assert len(reg.revisions("shared/lang")) == 2  # both writers' revisions kept
    index = json.loads((root / "index.json").read_text())
    on_disk = {(f"{p.parent.parent.parent.name}/{p.parent.parent.name}", p.name) for p in root.glob("*/*/revisions/*")}
    in_index = {(repo, rev) for repo, data in index["repos"].items() for rev in data["revisions"]}
    assert on_disk == in_index
    for repo, data in index["repos"].items():
        for rev, record in data["revisions"].items():
            assert sha256_of(root / repo / "revisions" / rev / SFT_FILENAME) == record["sha256"]
        assert data["refs"]["main"] in data["revisions"]
    assert not any((root / ".staging").iterdir())


def test_resolve_picks_the_sft_made_for_the_base(tmp_path: Path, files: dict[str, Path], base_a: torch.nn.Module,
                                                  base_b: torch.nn.Module) -> None:
    reg = LocalRegistry(tmp_path / "reg")
    a = reg.push(files["quy"], "me/xlmr-lang-sft-quy")
    b = reg.push(files["quy_b"], "other/xlmr-lang-sft-quy")
    nli = reg.push(files["nli"], "me/xlmr-task-sft-nli")
    assert resolve(base_a, language="quy", task="nli", registry=reg, hub=False) == [a.file, nli.file]
    assert resolve(base_b, language="quy", registry=tmp_path / "reg", hub=False) == [b.file]

    with pytest.raises(ResolveError) as err:
        resolve(base_b, task="nli", registry=reg, hub=False)
    assert "me/xlmr-task-sft-nli" in str(err.value) and "none" in str(err.value)
    with pytest.raises(ResolveError, match="none in the local registry"):
        resolve(base_a, language="deu", registry=reg, hub=False)

    reg.push(files["quy2"], "third/xlmr-lang-sft-quy")  # a second SFT for base A: ambiguous
    with pytest.raises(ResolveError) as err:
        resolve(base_a, language="quy", registry=reg, hub=False)
    assert "me/xlmr-lang-sft-quy" in str(err.value) and "third/xlmr-lang-sft-quy" in str(err.value)
    with pytest.raises(ConfigError):
        resolve(base_a, registry=reg, hub=False)


def test_resolve_by_base_name_when_no_fingerprint(tmp_path: Path, base_a: torch.nn.Module) -> None:
    sft = extract(base_a, perturbed_copy(base_a, seed=3), density=0.02, metadata=SFTMetadata(kind="language", language="quy"))
    sft.metadata.base.fingerprint = None
    sft.metadata.base.name = "FacebookAI/xlm-roberta-base"
    save_file(sft, str(tmp_path / "nofp.safetensors"))
    reg = LocalRegistry(tmp_path / "reg")
    entry = reg.push(tmp_path / "nofp.safetensors", "me/xlmr-lang-sft-quy")
    assert resolve("/models/xlm-roberta-base/", language="quy", registry=reg, hub=False) == [entry.file]
    with pytest.raises(ResolveError, match="made for this base"):
        resolve("bert-base-multilingual-cased", language="quy", registry=reg, hub=False)


def test_names_refs_and_cards() -> None:
    meta = SFTMetadata(kind="language", language="quy")
    meta.base.name = "FacebookAI/xlm-roberta-base"
    assert suggest_repo_id(meta, "cambridgeltl") == "cambridgeltl/xlmr-lang-sft-quy"
    assert suggest_repo_id(meta, "me", "{org}/{kind}-{code}-{base}") == "me/lang-quy-xlmr"
    task = SFTMetadata(kind="task", task="nli")
    task.base.name = "bert-base-multilingual-cased"
    assert suggest_repo_id(task, "me") == "me/mbert-task-sft-nli"
    with pytest.raises(ConfigError):
        suggest_repo_id(meta, "me", "{org}/{nope}")
    assert codes_from_name("cambridgeltl/xlmr-lang-sft-quy-small") == ("quy", None)
    assert codes_from_name("me/mbert-task-sft-nli") == (None, "nli")
    ref = parse_ref("me/x@v1.0")
    assert (ref.repo_id, ref.revision, str(ref)) == ("me/x", "v1.0", "me/x@v1.0")
    for bad in ("noslash", "a/b/c", "me/x@", "-a/b", "me/x y"):
        with pytest.raises(ConfigError):
            parse_ref(bad)
    card = render_card(RegistryEntry("me/x", kind="task", task="nli", base_name="xlm-roberta-base", nnz=5, density=0.1,
                                     method="deft-x"))
    assert "task-sft" in card and "deft-x" in card and "--task nli" in card and "base_model: xlm-roberta-base" in card


def test_resolve_skips_an_unreachable_hub_quickly(tmp_path: Path, base_a: torch.nn.Module,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    with pytest.raises(ResolveError) as err:
        resolve(base_a, language="quy", registry=tmp_path / "reg")  # hub=None: look there when reachable
    assert time.perf_counter() - start < 10  # no retry back-off
    assert "the Hub was not searched" in str(err.value) and "\n" not in str(err.value)

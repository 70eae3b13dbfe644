"""`sftkit push/pull/search/list` through click's CliRunner (local registry and the loopback FakeHub)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fakehub import FakeHub

from sftkit.cli.main import main
from sftkit.extraction import extract
from sftkit.format import save_file
from sftkit.metadata import SFTMetadata
from sftkit.registry import LocalRegistry
from sftkit.testing import perturbed_copy, tiny_masked_lm


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tiny_masked_lm(seed=0)
    sft = extract(base, perturbed_copy(base, seed=1), density=0.02, metadata=SFTMetadata(kind="language", language="quy"))
    sft.metadata.base.name = "xlm-roberta-base"
    path = tmp_path_factory.mktemp("cli") / "quy.safetensors"
    save_file(sft, str(path))
    return path


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_local_push_list_search(tmp_path: Path, sft_file: Path) -> None:
    reg = str(tmp_path / "reg")
    assert "is empty" in run("list", "--registry", reg)
    out = run("push", str(sft_file), "me", "--registry", reg)
    assert out.startswith("pushed me/xlmr-lang-sft-quy@") and "local registry" in out
    table = run("list", "--registry", reg)
    header, rule, row = table.strip().splitlines()
    assert header.split()[:4] == ["repo", "revision", "kind", "lang/task"] and set(rule) <= {"-", " "}
    entry = LocalRegistry(reg).get("me/xlmr-lang-sft-quy")
    assert row.split()[:5] == ["me/xlmr-lang-sft-quy", entry.revision[:10], "language", "quy", "xlm-roberta-base"]
    assert f"{entry.nnz:,}" in row and row.rstrip().endswith("local")
    assert "me/xlmr-lang-sft-quy" in run("search", "--language", "quy", "--kind", "language", "--registry", reg)
    assert "no SFTs match" in run("search", "--task", "nli", "--registry", reg)


def test_hub_push_search_pull(fake_hub: FakeHub, tmp_path: Path, sft_file: Path) -> None:
    reg = str(tmp_path / "reg")
    out = run("push", str(sft_file), "alice/xlmr-lang-sft-quy", "--hub", "--license", "mit")
    assert "to the Hub" in out
    table = run("search", "--language", "quy", "--hub")
    assert "alice/xlmr-lang-sft-quy" in table and table.strip().splitlines()[-1].rstrip().endswith("hub")
    out = run("pull", "alice/xlmr-lang-sft-quy", "--registry", reg)
    assert out.startswith("pulled alice/xlmr-lang-sft-quy@")
    pulled = LocalRegistry(reg).get("alice/xlmr-lang-sft-quy")
    assert pulled.file is not None and pulled.file.read_bytes() == sft_file.read_bytes()
    assert str(pulled.file) in out


def test_one_line_errors(fake_hub: FakeHub, tmp_path: Path, sft_file: Path) -> None:
    out = run("pull", "nobody/missing", "--registry", str(tmp_path / "reg"), code=1)
    assert out.startswith("Error: ") and out.count("\n") == 1 and "nobody/missing" in out
    out = run("push", str(sft_file), "not a repo", "--registry", str(tmp_path / "reg"), code=1)
    assert out.startswith("Error: ") and out.count("\n") == 1 and "ORG/NAME" in out
    out = run("push", str(sft_file), "me/x", "--hub", "--registry", str(tmp_path), code=2)
    assert "exclusive" in out
    fake_hub.fail_next(r"/api/models/alice/", status=502)
    out = run("pull", "alice/xlmr-lang-sft-quy", "--registry", str(tmp_path / "reg"), code=1)
    assert out.startswith("Error: ") and out.count("\n") == 1 and "502" in out


def test_help_has_examples() -> None:
    for command in ("push", "pull", "search", "list"):
        out = run(command, "--help")
        assert "Example" in out and f"sftkit {command}" in out


def test_compose_by_name_from_the_local_registry(tmp_path: Path, sft_file: Path) -> None:
    """`sftkit compose BASE --language quy` resolves through the registry (base given as a directory)."""
    import torch
    from safetensors.torch import load_file as load_tensors

    base_dir = tmp_path / "base"
    tiny_masked_lm(seed=0).save_pretrained(base_dir)
    other = tmp_path / "other.safetensors"
    wrong_base = tiny_masked_lm(seed=5)
    wrong = extract(wrong_base, perturbed_copy(wrong_base, seed=2), density=0.02,
                    metadata=SFTMetadata(kind="language", language="quy"))
    wrong.metadata.base.name = "xlm-roberta-base"
    save_file(wrong, str(other))
    reg = str(tmp_path / "reg")
    run("push", str(sft_file), "me/xlmr-lang-sft-quy", "--registry", reg)
    run("push", str(other), "someone/xlmr-lang-sft-quy", "--registry", reg)  # made for another base
    by_name, by_file = tmp_path / "by-name", tmp_path / "by-file"
    run("compose", str(base_dir), "--language", "quy", "--registry", reg, "--no-hub", "-o", str(by_name))
    run("compose", str(base_dir), str(sft_file), "-o", str(by_file))
    a, b = load_tensors(str(by_name / "model.safetensors")), load_tensors(str(by_file / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out = run("compose", str(base_dir), "--language", "deu", "--registry", reg, "--no-hub", "-o", str(tmp_path / "x"),
              code=1)
    assert out.startswith("Error: ") and "deu" in out and out.count("\n") == 1

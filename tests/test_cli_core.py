"""The core CLI commands end to end on tiny models (CliRunner), plus one real console-script run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForMaskedLM

from sftkit.cli.main import main
from sftkit.format import load_file, read_metadata
from sftkit.naming import canonical_state_dict
from sftkit.registry.community import write_pytorch_diff
from sftkit.testing import perturbed_copy, tiny_masked_lm


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    base = tiny_masked_lm(seed=0)
    base.save_pretrained(root / "base")
    perturbed_copy(base, density=0.2, seed=3).save_pretrained(root / "tuned")
    return root / "base", root / "tuned"


def run(*args: str) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[-1]


def test_extract_info_compose_round_trip(models, tmp_path):
    base, tuned = models
    out = tmp_path / "jav.safetensors"
    result = run(
        "extract",
        base,
        tuned,
        "-o",
        out,
        "--num-params",
        500,
        "--denoise-energy",
        0.9,
        "--residual-keep",
        0.1,
        "--kind",
        "language",
        "--language",
        "jav",
    )
    assert result.exit_code == 0, result.output
    sft = load_file(out)
    assert sft.nnz == 500
    meta = read_metadata(out)
    assert (meta.kind, meta.language, meta.method) == ("language", "jav", "deft-x-extract")

    info = run("info", out)
    assert info.exit_code == 0
    assert "500 of" in info.output and "language: jav" in info.output and "elias-fano" in info.output

    composed_dir = tmp_path / "composed"
    result = run("compose", base, out, "-o", composed_dir)
    assert result.exit_code == 0, result.output
    composed = canonical_state_dict(AutoModelForMaskedLM.from_pretrained(composed_dir))
    theta0 = canonical_state_dict(AutoModelForMaskedLM.from_pretrained(base))
    for name, delta in sft.deltas.items():
        expected = theta0[name].reshape(-1).clone()
        expected.index_add_(0, delta.indices, delta.values)
        assert torch.equal(composed[name].reshape(-1), expected), name

    assert_one_line_error(run("compose", base, out, "-o", composed_dir), "--overwrite")
    assert run("compose", base, out, "-o", composed_dir, "--overwrite").exit_code == 0


def test_prune_and_merge(models, tmp_path):
    base, tuned = models
    full = tmp_path / "full.safetensors"
    assert run("extract", base, tuned, "-o", full, "--density", 0.1).exit_code == 0
    pruned = tmp_path / "pruned.safetensors"
    assert run("prune", full, "-o", pruned, "-k", 50).exit_code == 0
    assert load_file(pruned).nnz == 50
    merged = tmp_path / "merged.safetensors"
    assert run("merge", full, pruned, "-o", merged, "--method", "sum").exit_code == 0
    a, b, m = load_file(full), load_file(pruned), load_file(merged)
    name = next(iter(b.deltas))
    assert torch.equal(m[name].to_dense(), a[name].to_dense() + b[name].to_dense())


def test_convert_composable_sft_file(models, tmp_path):
    base, tuned = models
    ours = tmp_path / "ours.safetensors"
    assert run("extract", base, tuned, "-o", ours, "--num-params", 300).exit_code == 0
    original = load_file(ours)
    legacy = write_pytorch_diff(original, tmp_path / "pytorch_diff.bin")
    back = tmp_path / "back.safetensors"
    result = run("convert", legacy, "-o", back, "--base", base)
    assert result.exit_code == 0, result.output
    converted = load_file(back)
    assert converted.deltas.keys() == original.deltas.keys()
    for name, delta in original.deltas.items():
        assert torch.equal(converted[name].indices, delta.indices)
        assert torch.equal(converted[name].values, delta.values)


def test_user_mistakes_are_one_line_errors(models, tmp_path):
    base, tuned = models
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    assert_one_line_error(run("info", junk), str(junk))
    assert_one_line_error(run("extract", base, tuned, "-o", tmp_path / "x.safetensors"), "--num-params")
    assert_one_line_error(
        run(
            "extract",
            base,
            tuned,
            "-o",
            tmp_path / "x.safetensors",
            "-k",
            10,
            "--denoise-energy",
            0.9,
            "--denoise-rank",
            2,
        ),
        "--denoise-rank",
    )
    assert_one_line_error(run("compose", base, "-o", tmp_path / "c"), "nothing to compose")
    assert_one_line_error(
        run("extract", tmp_path / "missing", tuned, "-o", tmp_path / "x.safetensors", "-k", 5)
    )


def test_console_script_runs_as_a_real_process(models, tmp_path):
    base, tuned = models
    out = tmp_path / "d.safetensors"
    assert run("extract", base, tuned, "-o", out, "-k", 100).exit_code == 0
    script = Path(sys.executable).with_name("sftkit")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sftkit.cli.main"]
    done = subprocess.run([*command, "info", str(out), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert sum(t["nnz"] for t in payload["tensors"] if t["kind"] == "sparse") == 100
    bad = subprocess.run([*command, "info", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr

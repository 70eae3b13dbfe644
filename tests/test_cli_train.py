"""``sftkit train language`` → ``sftkit train task`` → ``sftkit evaluate --json`` through click, and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sftkit.cli.main import main
from sftkit.data import sample_path
from sftkit.format import load_file
from sftkit.training.data import read_labelled, read_texts
from sftkit.training.tokenizer import train_tokenizer

FAST = ["--full-steps", "2", "--sparse-steps", "2", "--batch-size", "8", "--max-seq-length", "32", "--lr", "1e-3",
        "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _csv(path: Path, texts: list[str], labels: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "gold"])
        writer.writerows(zip(texts, labels, strict=True))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from transformers import XLMRobertaForMaskedLM

    from sftkit.testing import tiny_config

    root = tmp_path_factory.mktemp("cli")
    (root / "sun.txt").write_text("\n".join(read_texts(sample_path("sun-text"))[:32]) + "\n", encoding="utf-8")
    eng = read_labelled(sample_path("eng-train"))
    _csv(root / "train.csv", eng.texts[:32], eng.labels[:32])
    sun = read_labelled(sample_path("sun-test"))
    _csv(root / "test_sun.csv", sun.texts[:16], sun.labels[:16])
    tokenizer = train_tokenizer(read_texts(root / "sun.txt") + eng.texts[:32], vocab_size=250, model_max_length=32)
    torch.manual_seed(0)
    XLMRobertaForMaskedLM(tiny_config(vocab_size=len(tokenizer), max_position_embeddings=34)).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    return root


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_train_language_task_and_evaluate_json(workdir):
    base = workdir / "base"
    lang = _run("train", "language", base, "--text", workdir / "sun.txt", "--language", "sun", "-o",
                workdir / "sun.safetensors", "--num-params", "300", *FAST)
    assert lang.exit_code == 0, lang.output
    assert "wrote" in lang.output and "300 nonzeros" in lang.output
    assert load_file(workdir / "sun.safetensors").metadata.language == "sun"

    task = _run("train", "task", base, "--train", workdir / "train.csv", "--text-column", "sentence", "--label-column",
                "gold", "--language-sft", workdir / "sun.safetensors", "--task", "sentiment", "-o",
                workdir / "task.safetensors", "--density", "0.05", "--method", "deft-x", "--denoise-rank", "2", *FAST)
    assert task.exit_code == 0, task.output
    sft = load_file(workdir / "task.safetensors")
    assert sft.metadata.method == "deft-x" and sft.metadata.label_names == ["negative", "neutral", "positive"]
    assert sft.nnz == sft.metadata.hyperparameters["num_params"] == round(0.05 * sft.metadata.hyperparameters["eligible_params"])

    scores = workdir / "scores.json"
    result = _run("evaluate", base, "--task-sft", workdir / "task.safetensors", "--language-sft", workdir / "sun.safetensors",
                  "--test", workdir / "test_sun.csv", "--text-column", "sentence", "--label-column", "gold", "--json", scores)
    assert result.exit_code == 0, result.output
    payload = json.loads(scores.read_text())
    assert payload["n"] == 16 and set(payload["per_class"]) == {"negative", "neutral", "positive"}
    assert f"accuracy {payload['accuracy']:.4f}" in result.output and "macro-F1" in result.output
    assert sum(m["support"] for m in payload["per_class"].values()) == 16

    stdout_only = _run("evaluate", base, "--task-sft", workdir / "task.safetensors", "--test", workdir / "test_sun.csv",
                       "--text-column", "sentence", "--label-column", "gold", "--json", "-")
    assert stdout_only.exit_code == 0
    assert json.loads(stdout_only.stdout)["n"] == 16


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "language", "{base}", "--text", "{dir}/missing.txt", "--language", "sun", "-o", "{dir}/x.safetensors",
          "-k", "10"], "missing.txt: text file does not exist"),
        (["train", "language", "{base}", "--text", "{dir}/test_sun.csv", "--text-column", "sentence", "--language", "sun",
          "-o", "{dir}/x.safetensors", "-k", "10"], "named like a test split"),
        (["train", "language", "{base}", "--text", "{dir}/sun.txt", "--language", "sun", "-o", "{dir}/x.safetensors",
          "-k", "10", "--density", "0.1"], "exactly one of --num-params K or --density D"),
        (["train", "language", "{base}", "--text", "{dir}/sun.txt", "--language", "sun", "-o", "{dir}/x.safetensors",
          "-k", "10", "--denoise-energy", "0.9"], "add --method deft-x"),
        (["train", "task", "{base}", "--train", "{dir}/train.csv", "-o", "{dir}/x.safetensors", "-k", "10"],
         "no column 'text' (columns: sentence, gold)"),
        (["train", "task", "{base}", "--train", "{dir}/train.csv", "--text-column", "sentence", "--label-column", "gold",
          "--labels", "negative,positive", "-o", "{dir}/x.safetensors", "-k", "10"], "label 'neutral' is not one of the known labels"),
        (["train", "language", "{dir}/nobase", "--text", "{dir}/sun.txt", "--language", "sun", "-o", "{dir}/x.safetensors",
          "-k", "10"], "no such model directory"),
    ],
)
def test_bad_input_is_one_error_line(workdir, args, message):
    result = CliRunner().invoke(main, [a.format(base=workdir / "base", dir=workdir) for a in args])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error:"), result.output
    assert message in lines[-1]
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


def test_help_has_examples():
    for command in (["train", "language"], ["train", "task"], ["evaluate"]):
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Examples:" in result.output and "sftkit " in result.output

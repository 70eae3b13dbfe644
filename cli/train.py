"""Training and evaluation commands: ``sftkit train language``, ``sftkit train task``, ``sftkit evaluate``.

A thin skin over :mod:`sftkit.training`: options become an :class:`SFTTrainingConfig`, files go to
the API, and the resulting SFT is written with :func:`sftkit.format.save_file`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sftkit._io import atomic_write_text
from sftkit.errors import ConfigError

_CONFIG_OPTIONS = (
    "method", "num_params", "density", "denoise_energy", "denoise_rank", "residual_keep", "full_steps",
    "sparse_steps", "full_epochs", "sparse_epochs", "learning_rate", "sparse_learning_rate", "batch_size",
    "max_seq_length", "seed", "weight_decay", "l1_reg", "freeze_embeddings", "checkpoint_dir", "resume",
    "logging_steps",
)


def _training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The SFTTrainingConfig options shared by ``train language`` and ``train task``."""
    options = [
        click.option("--method", type=click.Choice(["lt-sft", "deft-x"]), help="Mask selection: LT-SFT (top-K |δ|) or DeFT-X (top-K of the denoised δ). [default: lt-sft]"),
        click.option("--num-params", "-k", type=click.IntRange(min=1), help="K: number of sparse entries."),
        click.option("--density", "-d", type=click.FloatRange(0, 1, min_open=True), help="K as a fraction of the eligible entries."),
        click.option("--denoise-energy", type=click.FloatRange(0, 1, min_open=True), help="DeFT-X: keep the rank holding this energy (default 0.9)."),
        click.option("--denoise-rank", type=click.IntRange(min=1), help="DeFT-X: keep this fixed rank."),
        click.option("--residual-keep", type=click.FloatRange(0, 1), help="DeFT-X: fraction ρ of the residual kept by magnitude."),
        click.option("--full-steps", type=click.IntRange(min=1), help="Phase 1 (dense) optimizer steps."),
        click.option("--sparse-steps", type=click.IntRange(min=1), help="Phase 2 (sparse) optimizer steps."),
        click.option("--full-epochs", type=click.FloatRange(0, min_open=True), help="Phase 1 length in epochs (instead of steps)."),
        click.option("--sparse-epochs", type=click.FloatRange(0, min_open=True), help="Phase 2 length in epochs (instead of steps)."),
        click.option("--lr", "learning_rate", type=click.FloatRange(0, min_open=True), help="Learning rate. [default: 5e-5]"),
        click.option("--sparse-lr", "sparse_learning_rate", type=click.FloatRange(0, min_open=True), help="Phase 2 learning rate (default: --lr)."),
        click.option("--batch-size", type=click.IntRange(min=1), help="Per-device batch size. [default: 8]"),
        click.option("--max-seq-length", type=click.IntRange(min=8), help="Truncate examples to this many tokens. [default: 128]"),
        click.option("--seed", type=int, help="Random seed. [default: 42]"),
        click.option("--weight-decay", type=click.FloatRange(0), help="Decoupled weight decay. [default: 0]"),
        click.option("--l1-reg", type=click.FloatRange(0), help="L1 pull toward θ0. [default: 0]"),
        click.option("--freeze-embeddings", is_flag=True, default=None, help="Never train the embeddings."),
        click.option("--output-dir-for-checkpoints", "--checkpoint-dir", "checkpoint_dir", type=click.Path(file_okay=False), help="Save resumable checkpoints of both phases here."),
        click.option("--resume", is_flag=True, default=None, help="Continue from the latest checkpoint in --output-dir-for-checkpoints."),
        click.option("--logging-steps", type=click.IntRange(min=1), help="Log the loss every N steps. [default: 10]"),
        click.option("--tokenizer", type=click.Path(), help="Tokenizer directory (default: BASE's)."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _config(options: dict[str, Any]):  # -> SFTTrainingConfig
    from sftkit.training.config import SFTTrainingConfig

    given = {name: options.pop(name) for name in _CONFIG_OPTIONS}
    config = SFTTrainingConfig(**{name: value for name, value in given.items() if value is not None})
    if config.method == "lt-sft" and (config.denoise_energy is not None or config.denoise_rank is not None):
        raise ConfigError("--denoise-energy/--denoise-rank apply to DeFT-X; add --method deft-x")
    if config.residual_keep and config.method != "deft-x":
        raise ConfigError("--residual-keep applies to DeFT-X; add --method deft-x")
    if (config.num_params is None) == (config.density is None):
        raise ConfigError("give exactly one of --num-params K or --density D")
    config.validate()
    return config


def _report(sft: Any, output: str) -> None:
    meta = sft.metadata
    what = f"{meta.kind} SFT" + (f" ({meta.language})" if meta.kind == "language" and meta.language else "")
    if meta.kind == "task":
        what += f" ({meta.task}; labels: {', '.join(meta.label_names or [])})"
    click.echo(f"wrote {output}: {what}, {sft.nnz:,} nonzeros in {len(sft.deltas)} tensors, {len(sft.dense)} dense tensors")


@click.group()
def train() -> None:
    """Train language and task SFTs (LT-SFT or DeFT-X).

    \b
    Examples:
      sftkit train language xlmr/ --text jav.txt --language jav -o jav.safetensors --num-params 7667712
      sftkit train task xlmr/ --train train.csv --validation dev.csv --language-sft eng.safetensors \\
          --task sentiment -o sentiment.safetensors --num-params 7667712
    """


@train.command("language")
@click.argument("base")
@click.option("--text", "text_files", multiple=True, required=True, type=click.Path(),
              help="Unlabeled text: .txt (one sentence/paragraph per line) or CSV/TSV/JSONL (see --text-column). Repeatable.")
@click.option("--language", required=True, help="Language code of the text (ISO 639-3, e.g. jav).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="SFT file to write.")
@click.option("--text-column", help="Column/key holding the text in CSV/TSV/JSONL files. [default: text]")
@click.option("--allow-test-text", is_flag=True, help="Allow text files named like a test split (leaks test sentences into evaluation).")
@_training_options
def train_language(base: str, text_files: tuple[str, ...], language: str, output: str, text_column: str | None,
                   allow_test_text: bool, tokenizer: str | None, no_progress: bool, **options: Any) -> None:
    """Train a language SFT by masked language modelling on unlabeled text.

    BASE is a local model directory or a Hub id. Text files named like a test split
    (test.txt, jav_test.csv) are refused unless --allow-test-text.

    \b
    Examples:
      sftkit train language xlmr/ --text jav.txt --language jav -o jav.safetensors --num-params 7667712
      sftkit train language xlmr/ --text wiki.jsonl --text-column text --language quy -o quy.safetensors \\
          --density 0.027 --method deft-x --denoise-energy 0.9 --full-epochs 1 --sparse-epochs 1
    """
    from sftkit.training.api import train_language_sft

    config = _config(options)
    sft = train_language_sft(
        base, list(text_files), language=language, config=config, tokenizer=tokenizer, output=output,
        text_column=text_column, allow_test_text=allow_test_text, progress=not no_progress,
    )
    _report(sft, output)


@train.command("task")
@click.argument("base")
@click.option("--train", "train_file", required=True, type=click.Path(), help="Labelled training data (CSV/TSV/JSONL).")
@click.option("--validation", "validation_file", type=click.Path(), help="Labelled validation data (accuracy/macro-F1 logged).")
@click.option("--task-type", type=click.Choice(["classification", "pair-classification"]), default="classification",
              show_default=True, help="Single-text classification (sentiment) or sentence pairs (NLI).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--text-pair-column", help="Second text of a pair (e.g. hypothesis); needs --task-type pair-classification.")
@click.option("--label-column", default="label", show_default=True)
@click.option("--labels", help="Comma-separated label names in id order (default: sorted training labels).")
@click.option("--language-sft", type=click.Path(dir_okay=False), help="Source-language SFT applied underneath while training.")
@click.option("--language", help="Source language code to record (default: the --language-sft's).")
@click.option("--task", help="Task name to record, e.g. sentiment or nli. [default: the task type]")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="SFT file to write.")
@_training_options
def train_task(base: str, train_file: str, validation_file: str | None, task_type: str, text_column: str,
               text_pair_column: str | None, label_column: str, labels: str | None, language_sft: str | None,
               language: str | None, task: str | None, output: str, tokenizer: str | None, no_progress: bool,
               **options: Any) -> None:
    """Train a task SFT (classification head stored densely) on labelled data.

    With --language-sft the source language's SFT is applied underneath during training, so the
    task SFT composes with other languages' SFTs for zero-shot transfer.

    \b
    Examples:
      sftkit train task xlmr/ --train train.csv --validation dev.csv --language-sft eng.safetensors \\
          --task sentiment -o sentiment.safetensors --num-params 7667712 --full-epochs 3 --sparse-epochs 3
      sftkit train task xlmr/ --train mnli.tsv --task-type pair-classification --text-column premise \\
          --text-pair-column hypothesis --label-column label --task nli -o nli.safetensors --density 0.02
    """
    from sftkit.training.api import train_task_sft

    config = _config(options)
    label_names = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    sft = train_task_sft(
        base, train_file, validation_file=validation_file, task_type=task_type, text_column=text_column,
        text_pair_column=text_pair_column, label_column=label_column, labels=label_names,
        language_sft=language_sft, language=language, config=config, task=task, tokenizer=tokenizer,
        output=output, progress=not no_progress,
    )
    _report(sft, output)


def _write_json(payload: dict[str, Any], target: str) -> None:
    text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    if target == "-":
        click.echo(text, nl=False)
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


@click.command()
@click.argument("base")
@click.option("--task-sft", required=True, type=click.Path(dir_okay=False), help="The task SFT (with its head).")
@click.option("--language-sft", type=click.Path(dir_okay=False), help="Target-language SFT composed underneath.")
@click.option("--test", "test_file", required=True, type=click.Path(), help="Labelled test data (CSV/TSV/JSONL).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--text-pair-column", help="Second text of a pair (NLI).")
@click.option("--label-column", default="label", show_default=True)
@click.option("--tokenizer", type=click.Path(), help="Tokenizer directory (default: BASE's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-seq-length", type=click.IntRange(min=8), help="Default: the task SFT's training length.")
@click.option("--force", is_flag=True, help="Compose even if an SFT's base fingerprint does not match BASE.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True),
              help="Also write the scores as JSON to this file ('-' for stdout only).")
def evaluate(base: str, task_sft: str, language_sft: str | None, test_file: str, text_column: str,
             text_pair_column: str | None, label_column: str, tokenizer: str | None, batch_size: int,
             max_seq_length: int | None, force: bool, json_out: str | None) -> None:
    """Evaluate BASE + language SFT + task SFT on labelled test data (accuracy, macro-F1, per class).

    \b
    Examples:
      sftkit evaluate xlmr/ --task-sft sentiment.safetensors --language-sft jav.safetensors --test jav_test.csv
      sftkit evaluate xlmr/ --task-sft nli.safetensors --test test.tsv --text-column premise \\
          --text-pair-column hypothesis --json scores.json
    """
    from sftkit.training.api import evaluate as evaluate_sft
    from sftkit.training.metrics import format_result

    result = evaluate_sft(
        base, task_sft, language_sft=language_sft, test_file=test_file, text_column=text_column,
        text_pair_column=text_pair_column, label_column=label_column, tokenizer=tokenizer,
        batch_size=batch_size, max_seq_length=max_seq_length, force=force, progress=json_out != "-",
    )
    if json_out == "-":
        _write_json(result.to_dict(), "-")
        return
    click.echo(format_result(result))
    if json_out:
        _write_json(result.to_dict(), json_out)
        click.echo(f"wrote {json_out}")


def register(group: click.Group) -> None:
    group.add_command(train)
    group.add_command(evaluate)

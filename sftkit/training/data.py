"""Reading training data and turning it into tokenized torch datasets.

Two kinds of data feed SFT training:

* unlabeled text for a *language* SFT (masked language modelling): plain text files with one
  sentence or paragraph per line, or a text column of a CSV/TSV/JSONL file;
* labelled examples for a *task* SFT: single-text classification (sentiment) or sentence-pair
  classification (NLI) from CSV/TSV/JSONL files with named columns.

Label names come from the training file (sorted; numerically when all labels are integers) unless
given explicitly, and are stored in the task SFT's metadata so evaluation maps labels to the same
ids. Every file that goes into training is recorded with its sha256 so an SFT says what it was
trained on. User mistakes (missing file, empty file, missing column, unknown label) raise
:class:`~sftkit.errors.ConfigError` with a one-line message naming the file.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from sftkit._io import sha256_file as sha256_of
from sftkit.errors import ConfigError

logger = logging.getLogger("sftkit")

TEXT_SUFFIXES = {".txt", ".text", ".raw", ""}
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}

# A name part "test" delimited by non-alphanumerics: test.txt, jav_test.csv, xnli.test.tsv, test/x.txt.
_TEST_NAME = re.compile(r"(^|[^a-z0-9])test([^a-z0-9]|$)", re.IGNORECASE)

PathLike = str | Path


# --------------------------------------------------------------------------------------------- files


def _existing_file(path: PathLike, what: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"{file}: {what} file does not exist; check the path")
    if not file.is_file():
        raise ConfigError(f"{file}: {what} path is not a file")
    return file


def file_record(path: PathLike, examples: int) -> dict[str, Any]:
    """What metadata keeps about one data file: its name, sha256 and how many examples it gave."""
    return {"file": Path(path).name, "sha256": sha256_of(path), "examples": examples}


def looks_like_test_file(path: PathLike) -> bool:
    """True if the file (or its folder) is named like a test split: ``test.txt``, ``jav_test.csv``, ``test/x.txt``."""
    file = Path(path)
    return bool(_TEST_NAME.search(file.name)) or file.parent.name.lower() == "test"


def check_not_test_text(path: PathLike, *, allow: bool = False) -> None:
    """Refuse (or, when ``allow``, warn about) language-SFT text that looks like a test split.

    A language SFT trained on the sentences later used to evaluate a task leaks the test set into
    the zero-shot result; the name is the only signal there is, so it is checked by name.
    """
    if not looks_like_test_file(path):
        return
    message = f"{path}: this text file is named like a test split; training a language SFT on test sentences leaks them into evaluation"
    if not allow:
        raise ConfigError(message + "; use train/unlabeled text, or pass allow_test_text=True / --allow-test-text")
    logger.warning(message)


def _format_of(file: Path) -> str:
    suffix = file.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return "table"
    if suffix in JSON_SUFFIXES:
        return "jsonl"
    if suffix in TEXT_SUFFIXES:
        return "text"
    raise ConfigError(
        f"{file}: unknown data format {suffix!r}; use .txt (one text per line), .csv, .tsv or .jsonl"
    )


def _read_records(file: Path) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """Column names and the rows of a CSV/TSV (header row) or JSON-lines file."""
    if _format_of(file) == "jsonl":
        rows: list[dict[str, Any]] = []
        with open(file, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{file}: line {number} is not valid JSON ({exc.msg}); expected one object per line") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{file}: line {number} is not a JSON object; expected one object per line")
                rows.append(row)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        return columns, iter(rows)
    delimiter = TABLE_SUFFIXES[file.suffix.lower()]
    handle = open(file, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by the generator
    # TSV corpora (XNLI, AmericasNLI) carry bare quotes inside texts; they are not CSV quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(handle, delimiter=delimiter, quoting=quoting)
    columns = list(reader.fieldnames or [])

    def rows_of() -> Iterator[dict[str, Any]]:
        with handle:
            yield from reader

    return columns, rows_of()


def _require_column(file: Path, columns: list[str], column: str, option: str) -> None:
    if column not in columns:
        shown = ", ".join(columns) if columns else "none"
        raise ConfigError(f"{file}: no column {column!r} (columns: {shown}); name the right one with {option}")


def read_texts(path: PathLike, *, text_column: str | None = None) -> list[str]:
    """The non-empty texts of a language-SFT data file.

    ``.txt``: one text per line, blank lines skipped. CSV/TSV/JSONL: the ``text_column`` (default
    ``text``) of every row.
    """
    file = _existing_file(path, "text")
    if _format_of(file) == "text":
        if text_column is not None:
            raise ConfigError(f"{file}: text_column/--text-column applies to CSV/TSV/JSONL files, not to plain text")
        with open(file, encoding="utf-8-sig") as handle:
            texts = [line.strip() for line in handle]
    else:
        column = text_column or "text"
        columns, rows = _read_records(file)
        _require_column(file, columns, column, "text_column / --text-column")
        texts = [str(row.get(column) or "").strip() for row in rows]
    texts = [t for t in texts if t]
    if not texts:
        raise ConfigError(f"{file}: no text in this file; give a file with one sentence or paragraph per line")
    return texts


@dataclass
class LabelledData:
    """Rows of a classification file: texts, optional second texts (pairs) and string labels."""

    path: Path
    texts: list[str]
    pairs: list[str] | None
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def read_labelled(
    path: PathLike,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    what: str = "data",
) -> LabelledData:
    """Read a CSV/TSV/JSONL classification file (``text_pair_column`` for sentence pairs, e.g. NLI)."""
    file = _existing_file(path, what)
    if _format_of(file) == "text":
        raise ConfigError(f"{file}: labelled data must be CSV, TSV or JSONL with a header/keys, not plain text")
    columns, rows = _read_records(file)
    if not columns:
        raise ConfigError(f"{file}: the {what} file is empty; it needs a header row and at least one example")
    _require_column(file, columns, text_column, "text_column / --text-column")
    if text_pair_column is not None:
        _require_column(file, columns, text_pair_column, "text_pair_column / --text-pair-column")
    _require_column(file, columns, label_column, "label_column / --label-column")
    texts: list[str] = []
    pairs: list[str] | None = [] if text_pair_column is not None else None
    labels: list[str] = []
    for number, row in enumerate(rows, start=2):
        label = row.get(label_column)
        label = "" if label is None else str(label).strip()
        if not label:
            raise ConfigError(f"{file}: row {number} has no value in label column {label_column!r}; fill it in or drop the row")
        texts.append(str(row.get(text_column) or ""))
        if pairs is not None:
            pairs.append(str(row.get(text_pair_column) or ""))
        labels.append(label)
    if not texts:
        raise ConfigError(f"{file}: the {what} file has a header but no examples")
    return LabelledData(file, texts, pairs, labels)


# -------------------------------------------------------------------------------------------- labels


def _label_key(label: str) -> tuple[int, float | str]:
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def label_names_for(train: LabelledData, labels: Sequence[str] | None = None) -> list[str]:
    """The label names in id order: ``labels`` when given (checked against the data), else the sorted
    distinct training labels (numerically when every label is a number, so ``2`` precedes ``10``)."""
    seen = set(train.labels)
    if labels is not None:
        names = [str(x).strip() for x in labels]
        if len(set(names)) != len(names) or not names:
            raise ConfigError(f"labels/--labels {names} must be a non-empty list of distinct names")
        check_labels(train, names)
        return names
    if all(_label_key(label)[0] == 0 for label in seen):
        return sorted(seen, key=_label_key)
    return sorted(seen)


def check_labels(data: LabelledData, label_names: Sequence[str]) -> None:
    """Raise a one-line :class:`ConfigError` naming the file, the first unknown label and the known ones."""
    known = set(label_names)
    for label in data.labels:
        if label not in known:
            raise ConfigError(
                f"{data.path}: label {label!r} is not one of the known labels ({', '.join(label_names)}); "
                "fix the file or pass the full label list with --labels"
            )


def encode_labels(data: LabelledData, label_names: Sequence[str]) -> list[int]:
    check_labels(data, label_names)
    ids = {name: i for i, name in enumerate(label_names)}
    return [ids[label] for label in data.labels]


# ------------------------------------------------------------------------------------------ datasets


class TokenizedDataset(Dataset):
    """A list of tokenized examples (dicts of int lists), padded later by the collator."""

    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


def _rows(encoded: Any, keys: Sequence[str]) -> list[dict[str, Any]]:
    columns = [encoded[k] for k in keys]
    return [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]


def masked_lm_dataset(tokenizer: Any, texts: Sequence[str], *, max_seq_length: int) -> TokenizedDataset:
    """One example per text, truncated to ``max_seq_length`` tokens (special tokens included)."""
    if getattr(tokenizer, "mask_token_id", None) is None:
        raise ConfigError("the tokenizer has no mask token; masked-LM training needs one (e.g. <mask>)")
    encoded = tokenizer(
        list(texts), truncation=True, max_length=max_seq_length, return_special_tokens_mask=True
    )
    return TokenizedDataset(_rows(encoded, ["input_ids", "attention_mask", "special_tokens_mask"]))


def classification_dataset(
    tokenizer: Any, data: LabelledData, label_names: Sequence[str], *, max_seq_length: int
) -> TokenizedDataset:
    """Tokenized (pair) examples with integer ``labels`` in ``label_names`` order."""
    label_ids = encode_labels(data, label_names)
    args = (data.texts, data.pairs) if data.pairs is not None else (data.texts,)
    encoded = tokenizer(*args, truncation=True, max_length=max_seq_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    rows = _rows(encoded, keys)
    for row, label in zip(rows, label_ids, strict=True):
        row["labels"] = label
    return TokenizedDataset(rows)


def masked_lm_collator(tokenizer: Any, *, mlm_probability: float = 0.15, seed: int | None = None) -> Any:
    """Dynamic masking (80/10/10 of ``mlm_probability`` of the non-special tokens), padding per batch.

    Leave ``seed`` unset for :func:`~sftkit.training.procedure.train_sft`: it draws each batch's mask
    from the global RNG re-seeded per batch, which a collator-owned generator would bypass.
    """
    from transformers import DataCollatorForLanguageModeling

    kwargs: dict[str, Any] = {"mlm_probability": mlm_probability}
    if seed is not None:
        kwargs["seed"] = seed
    return DataCollatorForLanguageModeling(tokenizer, **kwargs)


def classification_collator(tokenizer: Any) -> Any:
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def batches(dataset: TokenizedDataset, collator: Any, batch_size: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """``(item indices, batch)`` for evaluation, items grouped by length so batches carry little padding.

    Padding is most of the cost when lengths vary (a batch pads to its longest item); the indices let
    the caller put outputs back in dataset order.
    """
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield chunk, collator([dataset[i] for i in chunk])

"""Data readers, label handling, tokenized datasets, the tokenizer trainer and the metrics."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkit.data import SAMPLE_FILES, sample_path
from sftkit.errors import ConfigError
from sftkit.training import data as D
from sftkit.training.metrics import classification_metrics
from sftkit.training.tokenizer import train_tokenizer

ROWS = [
    {"premise": "the cat sat", "hypothesis": "a cat", "label": "entailment"},
    {"premise": 'he said "no"', "hypothesis": "he agreed", "label": "contradiction"},
    {"premise": "rain, then sun", "hypothesis": "it rained", "label": "entailment"},
    {"premise": "a dog", "hypothesis": "a bird", "label": "neutral"},
]


def _write_table(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    if delimiter == "\t":  # TSV as corpora ship it: no quoting at all
        lines = ["\t".join(rows[0])] + ["\t".join(r.values()) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(D.read_texts(sample_path("jav-text")), vocab_size=300)


# ------------------------------------------------------------------------------------------ text


def test_read_texts_txt_skips_blank_lines(tmp_path):
    file = tmp_path / "jav.txt"
    file.write_text("\ufeffsiji\n\n  loro  \n\t\ntelu", encoding="utf-8")
    assert D.read_texts(file) == ["siji", "loro", "telu"]


@pytest.mark.parametrize("suffix,delimiter", [(".csv", ","), (".tsv", "\t")])
def test_read_texts_from_table_column(tmp_path, suffix, delimiter):
    file = _write_table(tmp_path / f"text{suffix}", ROWS, delimiter)
    assert D.read_texts(file, text_column="premise") == [r["premise"] for r in ROWS]


def test_read_texts_jsonl_defaults_to_text_key(tmp_path):
    file = _write_jsonl(tmp_path / "t.jsonl", [{"text": "a b"}, {"text": ""}, {"text": "c"}])
    assert D.read_texts(file) == ["a b", "c"]


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_text_file_is_a_one_line_error(tmp_path, content):
    file = tmp_path / "empty.txt"
    file.write_text(content)
    with pytest.raises(ConfigError, match=r"empty\.txt: no text") as info:
        D.read_texts(file)
    assert "\n" not in str(info.value)


def test_missing_text_file_and_bad_column(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        D.read_texts(tmp_path / "nope.txt")
    file = _write_table(tmp_path / "t.csv", ROWS)
    with pytest.raises(ConfigError, match=r"no column 'sentence' \(columns: premise, hypothesis, label\)"):
        D.read_texts(file, text_column="sentence")
    with pytest.raises(ConfigError, match="applies to CSV"):
        D.read_texts(sample_path("jav-text"), text_column="text")
    with pytest.raises(ConfigError, match="unknown data format"):
        D.read_texts(_write_jsonl(tmp_path / "t.parquet", [{"text": "x"}]))


def test_test_split_names_are_refused_or_warned(tmp_path, caplog):
    for name in ("test.txt", "jav_test.csv", "xnli.test.jav.tsv", "test-jav.txt"):
        assert D.looks_like_test_file(tmp_path / name), name
    assert D.looks_like_test_file(tmp_path / "test" / "jav.txt")
    for name in ("contest.txt", "latest.txt", "jav_train.txt", "testing.txt"):
        assert not D.looks_like_test_file(tmp_path / name), name
    with pytest.raises(ConfigError, match="allow-test-text"):
        D.check_not_test_text(tmp_path / "jav_test.txt")
    D.check_not_test_text(tmp_path / "jav_test.txt", allow=True)
    assert any("test split" in r.getMessage() for r in caplog.records)


# -------------------------------------------------------------------------------------- labelled


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_read_labelled_pairs_in_every_format(tmp_path, suffix):
    file = tmp_path / f"nli{suffix}"
    if suffix == ".jsonl":
        _write_jsonl(file, ROWS)
    else:
        _write_table(file, ROWS, "\t" if suffix == ".tsv" else ",")
    data = D.read_labelled(file, text_column="premise", text_pair_column="hypothesis")
    assert data.texts == [r["premise"] for r in ROWS]
    assert data.pairs == [r["hypothesis"] for r in ROWS]
    assert data.labels == [r["label"] for r in ROWS]
    assert D.label_names_for(data) == ["contradiction", "entailment", "neutral"]


def test_labelled_errors_are_one_line_and_name_the_file(tmp_path):
    file = _write_table(tmp_path / "train.csv", ROWS)
    with pytest.raises(ConfigError, match=r"train\.csv: no column 'gold' .*--label-column") as info:
        D.read_labelled(file, text_column="premise", label_column="gold")
    assert "label_column" in str(info.value) and "\n" not in str(info.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.csv: the data file is empty"):
        D.read_labelled(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(ConfigError, match="header but no examples"):
        D.read_labelled(header_only)
    blank_label = _write_table(tmp_path / "blank.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": ""}])
    with pytest.raises(ConfigError, match="row 3 has no value"):
        D.read_labelled(blank_label)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(ConfigError, match="bad.jsonl: line 2 is not valid JSON"):
        D.read_labelled(bad_json)


def test_unknown_label_names_file_label_and_known_labels(tmp_path):
    train = D.read_labelled(_write_table(tmp_path / "train.csv", ROWS), text_column="premise")
    names = D.label_names_for(train)
    valid = D.read_labelled(
        _write_table(tmp_path / "valid.csv", [{"premise": "x", "label": "entailment"}, {"premise": "y", "label": "maybe"}]),
        text_column="premise",
    )
    with pytest.raises(ConfigError) as info:
        D.check_labels(valid, names)
    message = str(info.value)
    assert "valid.csv" in message and "'maybe'" in message and "contradiction, entailment, neutral" in message


def test_label_order_numeric_and_explicit(tmp_path):
    rows = [{"text": str(i), "label": label} for i, label in enumerate(["10", "2", "1", "2"])]
    data = D.read_labelled(_write_table(tmp_path / "n.csv", rows))
    assert D.label_names_for(data) == ["1", "2", "10"]
    assert D.label_names_for(data, ["10", "2", "1", "0"]) == ["10", "2", "1", "0"]
    assert D.encode_labels(data, ["10", "2", "1"]) == [0, 1, 2, 1]
    with pytest.raises(ConfigError, match="'1' is not one of the known labels"):
        D.label_names_for(data, ["10", "2"])
    json_labels = D.read_labelled(_write_jsonl(tmp_path / "j.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0}]))
    assert json_labels.labels == ["1", "0"]


def test_file_record_hashes_the_bytes(tmp_path):
    file = tmp_path / "x.txt"
    file.write_bytes(b"abc\n")
    assert D.file_record(file, 1) == {"file": "x.txt", "sha256": hashlib.sha256(b"abc\n").hexdigest(), "examples": 1}


# -------------------------------------------------------------------------------------- datasets


def test_masked_lm_dataset_and_collator(tokenizer):
    texts = D.read_texts(sample_path("sun-text"))[:16]
    dataset = D.masked_lm_dataset(tokenizer, texts, max_seq_length=12)
    assert len(dataset) == 16
    assert all(len(ex["input_ids"]) <= 12 and ex["input_ids"][0] == 0 and ex["input_ids"][-1] == 2 for ex in dataset)
    batch = D.masked_lm_collator(tokenizer, seed=0)([dataset[i] for i in range(8)])
    labels, inputs = batch["labels"], batch["input_ids"]
    assert labels.shape == inputs.shape
    masked = labels != -100
    assert masked.any()
    # Special tokens and padding are never prediction targets; unmasked positions keep their token.
    assert not bool((labels[masked] <= 2).any())
    assert bool((batch["attention_mask"][~masked] >= 0).all())
    assert int(masked.sum()) < int(batch["attention_mask"].sum())


def test_classification_dataset_pairs(tokenizer, tmp_path):
    data = D.read_labelled(_write_table(tmp_path / "nli.csv", ROWS), text_column="premise", text_pair_column="hypothesis")
    names = D.label_names_for(data)
    dataset = D.classification_dataset(tokenizer, data, names, max_seq_length=32)
    assert [ex["labels"] for ex in dataset] == [1, 0, 1, 2]
    ids = dataset[0]["input_ids"]
    assert ids.count(2) == 3, "pair framing <s> A </s></s> B </s>"
    batch = D.classification_collator(tokenizer)([dataset[i] for i in range(4)])
    assert batch["labels"].tolist() == [1, 0, 1, 2]
    assert batch["input_ids"].shape[0] == 4


def test_tokenizer_special_ids_and_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    tok = train_tokenizer(["aku seneng", "kowe lunga menyang pasar", "iki apik tenan"] * 5, vocab_size=60)
    assert tok.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.mask_token_id, tok.bos_token_id, tok.eos_token_id) == (1, 4, 0, 2)
    assert len(tok) <= 60
    encoded = tok("kowe lunga")["input_ids"]
    assert encoded[0] == 0 and encoded[-1] == 2
    assert tok.decode(encoded, skip_special_tokens=True) == "kowe lunga"
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("kowe lunga")["input_ids"] == encoded
    with pytest.raises(ConfigError):
        train_tokenizer(["", "  "])


# ----------------------------------------------------------------------------------------- metrics


def test_metrics_by_hand():
    result = classification_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], ["a", "b", "c"])
    assert result.accuracy == pytest.approx(4 / 6)
    a, b, c = (result.per_class[k] for k in "abc")
    assert (a.precision, a.recall, a.support) == (0.5, 0.5, 2)
    assert (b.precision, b.recall) == (1.0, 0.5) and b.f1 == pytest.approx(2 / 3)
    assert c.precision == pytest.approx(2 / 3) and c.recall == 1.0 and c.f1 == pytest.approx(0.8)
    assert result.macro_f1 == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert result.to_dict()["per_class"]["c"]["support"] == 2


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_metrics_properties(pairs):
    pred, ref = zip(*pairs, strict=True)
    result = classification_metrics(pred, ref, ["w", "x", "y", "z"])
    assert result.accuracy == pytest.approx(sum(p == r for p, r in pairs) / len(pairs))
    assert sum(m.support for m in result.per_class.values()) == result.n == len(pairs)
    # Micro-averaged recall over all classes equals accuracy.
    tp = sum(m.recall * m.support for m in result.per_class.values())
    assert tp == pytest.approx(result.accuracy * result.n)
    assert 0.0 <= result.macro_f1 <= 1.0


def test_sample_corpus_is_shipped_and_small():
    total = 0
    for name in SAMPLE_FILES:
        path = sample_path(name)
        assert path.is_file(), path
        total += path.stat().st_size
    assert total < 300_000
    folder = sample_path("jav-text").parent
    assert "CC BY-SA 4.0" in (folder / "LICENSE.txt").read_text() and "NusaX" in (folder / "README.txt").read_text()
    eng = D.read_labelled(sample_path("eng-train"))
    assert len(eng) == 300 and D.label_names_for(eng) == ["negative", "neutral", "positive"]
    assert len(D.read_texts(sample_path("jav-text"))) == 300
    for language in ("jav", "sun"):
        test = D.read_labelled(sample_path(f"{language}-test"))
        D.check_labels(test, ["negative", "neutral", "positive"])
        # The shipped language text never contains a test sentence.
        assert not set(test.texts) & set(D.read_texts(sample_path(f"{language}-text")))


def test_evaluation_batches_group_by_length_and_cover_every_item_once():
    items = [{"input_ids": list(range(n)), "label": n} for n in (5, 1, 9, 3, 3, 7, 2)]
    seen: list[int] = []
    lengths: list[list[int]] = []
    for indices, batch in D.batches(items, lambda rows: rows, 3):
        assert [row["label"] for row in batch] == [items[i]["label"] for i in indices]
        seen += indices
        lengths.append([len(row["input_ids"]) for row in batch])
    assert sorted(seen) == list(range(len(items)))
    flat = [n for batch in lengths for n in batch]
    assert flat == sorted(flat)  # the padding of a batch is bounded by its neighbours' lengths


def test_trained_tokenizer_is_the_same_in_every_process():
    """Token ids must not change between runs (the demo and tests rely on a seed being enough)."""
    import subprocess
    import sys

    script = (
        "from sftkit.data import sample_path; from sftkit.training import data as D;"
        "from sftkit.training.tokenizer import train_tokenizer;"
        "t = train_tokenizer(D.read_texts(sample_path('jav-text')), vocab_size=400);"
        "print(t.backend_tokenizer.to_str())"
    )
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(runs) == 1


def test_trained_tokenizer_frames_like_xlm_r(tokenizer):
    ids = tokenizer("apa kabar", "sae")["input_ids"]
    assert ids[0] == 0 and ids.count(2) == 3 and tokenizer.mask_token_id == 4 and tokenizer.pad_token_id == 1
    assert tokenizer.decode(tokenizer("apa kabar")["input_ids"], skip_special_tokens=True) == "apa kabar"

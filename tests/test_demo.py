"""The embedded default (``sftkit demo``) runs end to end and writes real, composable SFT files."""

from __future__ import annotations

import torch

from sftkit.demo import format_table, run_demo
from sftkit.format import load_file, read_metadata


def test_quick_demo_end_to_end(tmp_path):
    threads = torch.get_num_threads()
    messages: list[str] = []
    result = run_demo(tmp_path, quick=True, log=messages.append)
    assert len(messages) == 6 and all(m.startswith("demo: ") for m in messages)
    assert torch.get_num_threads() == threads, "the demo restores the thread setting"

    files = result["files"]
    assert set(files) == {"lang-eng", "lang-jav", "lang-sun", "task-sentiment"}
    languages = {read_metadata(files[f"lang-{code}"]).language for code in ("eng", "jav", "sun")}
    assert languages == {"eng", "jav", "sun"}
    task = load_file(files["task-sentiment"])
    assert task.metadata.kind == "task" and task.metadata.label_names == ["negative", "neutral", "positive"]
    assert [u["language"] for u in task.metadata.hyperparameters["underlying"]] == ["eng"]
    fingerprints = {read_metadata(path).base.fingerprint for path in files.values()}
    assert len(fingerprints) == 1, "every SFT was trained on the same base"
    # No language SFT was trained on test text.
    for code in ("jav", "sun"):
        data = read_metadata(files[f"lang-{code}"]).hyperparameters["data"]["text"]
        assert [d["file"] for d in data] == [f"text_{code}.txt"]

    rows = result["rows"]
    assert [(r["language"], r["language_sft"]) for r in rows] == [
        ("eng", True), ("jav", False), ("jav", True), ("sun", False), ("sun", True)
    ]
    for row in rows:
        assert row["n"] == 100
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0
        # Accuracy on 100 examples is a multiple of 1/100.
        assert abs(row["accuracy"] * 100 - round(row["accuracy"] * 100)) < 1e-9

    text = format_table(result)
    assert "zero-shot, + language SFT" in text and "chance" in text and str(tmp_path) in text

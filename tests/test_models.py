"""HF model I/O: loading for a task, picking the head from SFTs, writing a standalone composed model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast

from sftkit.compose import apply
from sftkit.delta import SFT, SparseDelta
from sftkit.errors import ConfigError, SFTError
from sftkit.fingerprints import describe_base
from sftkit.metadata import SFTMetadata
from sftkit.models import load_model, load_model_for, load_tokenizer, save_composed, task_for
from sftkit.naming import canonical_state_dict
from sftkit.testing import perturbed_copy

QUERY = "encoder.layer.0.attention.self.query.weight"
LABELS = ["entailment", "neutral", "contradiction"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {tok: i for i, tok in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "a", "b", "c"])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()
    }


@pytest.fixture
def base_dir(tmp_path, mlm) -> Path:
    directory = tmp_path / "base"
    mlm.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def task_sft(mlm, num_labels: int = 3, label_names: list[str] | None = LABELS) -> SFT:
    tuned = perturbed_copy(mlm, density=0.2, seed=2)
    b, t = canonical_state_dict(mlm), canonical_state_dict(tuned)
    deltas = {n: SparseDelta.from_dense(t[n] - b[n]) for n in b if n.startswith("encoder.")}
    gen = torch.Generator().manual_seed(3)
    hidden = mlm.config.hidden_size
    head = {
        "classifier.dense.weight": torch.randn(hidden, hidden, generator=gen) * 0.1,
        "classifier.dense.bias": torch.randn(hidden, generator=gen) * 0.1,
        "classifier.out_proj.weight": torch.randn(num_labels, hidden, generator=gen) * 0.1,
        "classifier.out_proj.bias": torch.randn(num_labels, generator=gen) * 0.1,
    }
    meta = SFTMetadata(kind="task", task="nli", label_names=label_names, base=describe_base(mlm))
    return SFT(deltas=deltas, dense=head, metadata=meta)


def language_sft(mlm) -> SFT:
    tuned = perturbed_copy(mlm, density=0.1, seed=1)
    b, t = canonical_state_dict(mlm), canonical_state_dict(tuned)
    deltas = {n: SparseDelta.from_dense(t[n] - b[n]) for n in b}
    return SFT(deltas=deltas, metadata=SFTMetadata(kind="language", language="quy", base=describe_base(mlm)))


def test_load_model_rejects_what_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(SFTError, match="not a model directory"):
        load_model(tmp_path / "empty")
    with pytest.raises(SFTError, match="not a model directory"):
        load_model(tmp_path / "file.bin")
    with pytest.raises(SFTError, match="no such model directory"):
        load_model(tmp_path / "missing" / "model")
    with pytest.raises(ConfigError, match="for_task"):
        load_model(tmp_path / "empty", for_task="token-classification")


def test_offline_hub_id_fails_cleanly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SFTError, match="HF_HUB_OFFLINE"):
        load_model("someone/not-a-cached-model")


def test_load_model_for_each_task(base_dir, mlm):
    auto = load_model(base_dir)
    assert type(auto).__name__ == "XLMRobertaForMaskedLM"
    assert torch.equal(canonical_state_dict(auto)[QUERY], canonical_state_dict(mlm)[QUERY])
    assert type(load_model(base_dir, for_task="base")).__name__ == "XLMRobertaModel"
    clf = load_model(base_dir, label_names=LABELS)
    assert type(clf).__name__ == "XLMRobertaForSequenceClassification"
    assert clf.num_labels == 3 and clf.config.id2label == dict(enumerate(LABELS))
    assert load_model(base_dir, dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="agree"):
        load_model(base_dir, num_labels=2, label_names=LABELS)


def test_task_for_picks_the_head(mlm):
    assert task_for([language_sft(mlm), task_sft(mlm)]) == ("sequence-classification", 3, LABELS)
    assert task_for([task_sft(mlm, num_labels=5, label_names=None)]) == ("sequence-classification", 5, None)
    assert task_for([language_sft(mlm)]) == ("masked-lm", None, None)
    encoder_only = SFT(deltas={n: d for n, d in language_sft(mlm).deltas.items() if n.startswith("encoder.")})
    assert task_for([encoder_only]) == ("base", None, None)
    with pytest.raises(ConfigError, match="label"):
        task_for([task_sft(mlm, num_labels=2, label_names=LABELS)])


def test_load_tokenizer_only_when_there_is_one(tmp_path, base_dir, mlm):
    assert load_tokenizer(base_dir) is not None
    bare = tmp_path / "bare"
    mlm.save_pretrained(bare)  # config.json alone must not yield a tokenizer
    assert load_tokenizer(bare) is None
    assert load_tokenizer(bare / "config.json") is None


def test_compose_and_save_gives_a_standalone_classifier(tmp_path, base_dir, mlm):
    before = digest(base_dir)
    sfts = [language_sft(mlm), task_sft(mlm)]
    model = load_model_for(base_dir, sfts)
    assert type(model).__name__ == "XLMRobertaForSequenceClassification" and model.num_labels == 3
    composition = apply(model, sfts, revertible=False)
    assert len(composition.skipped) == sum(1 for n in sfts[0].deltas if n.startswith("lm_head."))
    out = save_composed(model, tmp_path / "composed", tokenizer_source=base_dir)

    assert digest(base_dir) == before  # the base model's files are never modified
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "composed"]  # no temp dirs left behind
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert reloaded.config.id2label == dict(enumerate(LABELS))
    ids = torch.randint(5, 120, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0
        )
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("b") == 6


def test_save_composed_refuses_to_clobber(tmp_path, base_dir, mlm):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="overwrite"):
        save_composed(mlm, out)
    assert (out / "keep.txt").read_text() == "mine"
    save_composed(mlm, out, overwrite=True)
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
    with pytest.raises(ConfigError, match="base model"):
        save_composed(mlm, base_dir, tokenizer_source=base_dir, overwrite=True)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        save_composed(mlm, tmp_path / "plain")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        load_tokenizer(save_composed(mlm, empty)) is None
    )  # an empty directory is fine; no tokenizer source

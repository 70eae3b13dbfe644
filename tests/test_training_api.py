"""The training API end to end on a tiny model: language SFT → task SFT on top → evaluate."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from sftkit.data import sample_path
from sftkit.errors import ConfigError
from sftkit.format import load_file
from sftkit.training import SFTTrainingConfig, evaluate, train_language_sft, train_task_sft
from sftkit.training.data import read_labelled, read_texts
from sftkit.training.tokenizer import train_tokenizer

K = 400


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**changes: object) -> SFTTrainingConfig:
    params: dict[str, object] = dict(
        num_params=K, full_steps=3, sparse_steps=3, batch_size=8, max_seq_length=32, learning_rate=1e-3, seed=3
    )
    params.update(changes)
    return SFTTrainingConfig(**params)


def _head(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny saved base (tokenizer + masked LM), small text and labelled files."""
    from transformers import XLMRobertaForMaskedLM, XLMRobertaModel

    from sftkit.testing import tiny_config

    root = tmp_path_factory.mktemp("api")
    text = root / "jav.txt"
    text.write_text("\n".join(read_texts(sample_path("jav-text"))[:48]) + "\n", encoding="utf-8")
    eng = read_labelled(sample_path("eng-train"))
    train = _head(root / "train.csv", [{"text": t, "label": lab} for t, lab in zip(eng.texts[:48], eng.labels[:48], strict=True)])
    valid = _head(root / "valid.csv", [{"text": t, "label": lab} for t, lab in zip(eng.texts[48:64], eng.labels[48:64], strict=True)])
    jav = read_labelled(sample_path("jav-test"))
    test = _head(root / "jav_test.csv", [{"text": t, "label": lab} for t, lab in zip(jav.texts[:24], jav.labels[:24], strict=True)])
    tokenizer = train_tokenizer(read_texts(text) + eng.texts[:64], vocab_size=300, model_max_length=32)
    config = tiny_config(vocab_size=len(tokenizer), max_position_embeddings=34)
    torch.manual_seed(0)
    base = root / "base"
    XLMRobertaForMaskedLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    encoder_only = root / "encoder-only"
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(encoder_only)
    tokenizer.save_pretrained(encoder_only)
    return {"root": root, "base": base, "encoder_only": encoder_only, "text": text, "train": train, "valid": valid,
            "test": test, "tokenizer": tokenizer}


class _PhaseRecorder(TrainerCallback):
    """Records the phase of every optimizer step, as a caller timing or inspecting phases would."""

    def __init__(self) -> None:
        self.phases: list[str] = []

    def on_step_end(self, args: object, state: object, control: object, **kwargs: object) -> None:
        self.phases.append(kwargs["model"].phase)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def trained(files):
    root = files["root"]
    lang_steps, task_steps = _PhaseRecorder(), _PhaseRecorder()
    lang = train_language_sft(files["base"], [files["text"]], language="jav", config=_config(),
                              output=root / "lang.safetensors", progress=False, callbacks=[lang_steps])
    task = train_task_sft(files["base"], files["train"], validation_file=files["valid"], language_sft=root / "lang.safetensors",
                          config=_config(full_steps=2, sparse_steps=4), task="sentiment", output=root / "task.safetensors",
                          progress=False, callbacks=(task_steps,))
    return {"lang": lang, "task": task, "lang_file": root / "lang.safetensors", "task_file": root / "task.safetensors",
            "lang_steps": lang_steps.phases, "task_steps": task_steps.phases}


def test_callbacks_see_every_step_of_both_phases(trained):
    assert trained["lang_steps"] == ["full"] * 3 + ["sparse"] * 3
    assert trained["task_steps"] == ["full"] * 2 + ["sparse"] * 4


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_language_sft_file_has_exact_k_and_metadata(files, trained):
    from sftkit.fingerprints import describe_base
    from sftkit.models import load_model

    saved = load_file(trained["lang_file"])
    assert saved == trained["lang"]
    assert saved.nnz == K
    meta = saved.metadata
    assert (meta.kind, meta.language, meta.method) == ("language", "jav", "lt-sft")
    assert meta.hyperparameters["num_params"] == K
    assert meta.hyperparameters["data"]["text"] == [{"file": "jav.txt", "sha256": _sha(files["text"]), "examples": 48}]
    assert meta.base.fingerprint == describe_base(load_model(files["base"], for_task="masked-lm")).fingerprint
    assert meta.base.name == str(files["base"])
    assert any(name.startswith("lm_head.") for name in saved.dense), "the MLM head is stored densely"


def test_task_sft_records_labels_data_and_language(files, trained):
    saved = load_file(trained["task_file"])
    assert saved.nnz == K
    meta = saved.metadata
    assert (meta.kind, meta.task, meta.language) == ("task", "sentiment", "jav")
    assert meta.label_names == ["negative", "neutral", "positive"]
    data = meta.hyperparameters["data"]
    assert data["train"] == {"file": "train.csv", "sha256": _sha(files["train"]), "examples": 48}
    assert data["validation"]["sha256"] == _sha(files["valid"])
    assert data["language_sft"]["nnz"] == K
    assert [u["language"] for u in meta.hyperparameters["underlying"]] == ["jav"]
    assert saved.dense["classifier.out_proj.weight"].shape[0] == 3
    assert not any(name.startswith("lm_head.") for name in (*saved.deltas, *saved.dense))
    assert set(meta.hyperparameters["evaluation"]["sparse"]) >= {"eval_accuracy", "eval_macro_f1"}


def test_evaluate_matches_predictions_of_the_composed_model(files, trained):
    from sftkit.compose import composed
    from sftkit.models import load_model

    result = evaluate(files["base"], trained["task_file"], language_sft=trained["lang_file"], test_file=files["test"],
                      batch_size=5)
    test = read_labelled(files["test"])
    names = trained["task"].metadata.label_names
    # By hand, one example at a time (no padding): θ0 + φ_L + φ_T on a freshly loaded classifier.
    model = load_model(files["base"], for_task="sequence-classification", label_names=names)
    lang = trained["lang"]
    lang_body = type(lang)(deltas=dict(lang.deltas), dense={}, metadata=lang.metadata)
    tok = files["tokenizer"]
    with composed(model, [lang_body, trained["task"]]), torch.no_grad():
        predictions = [
            int(model(**tok(text, return_tensors="pt", truncation=True, max_length=32)).logits.argmax(-1))
            for text in test.texts
        ]
    references = [names.index(label) for label in test.labels]
    assert result.predictions == predictions
    assert result.n == 24
    assert result.accuracy == pytest.approx(sum(p == r for p, r in zip(predictions, references, strict=True)) / 24)
    per_class_support = {name: sum(1 for r in references if r == i) for i, name in enumerate(names)}
    assert {n: m.support for n, m in result.per_class.items()} == per_class_support
    payload = result.to_dict()
    assert set(payload) >= {"accuracy", "macro_f1", "per_class", "n"}
    assert payload["details"]["test"]["sha256"] == _sha(files["test"])
    without = evaluate(files["base"], trained["task"], test_file=files["test"])
    assert without.details["language_sft"] is None and result.details["language_sft"] == "jav"


def test_encoder_only_base_gets_a_fresh_dense_mlm_head(files):
    sft = train_language_sft(files["encoder_only"], files["text"], language="jav", config=_config(full_steps=2, sparse_steps=1),
                             progress=False)
    assert sft.nnz == K
    head = {name for name in sft.dense if name.startswith("lm_head.")}
    assert {"lm_head.dense.weight", "lm_head.bias"} <= head


def test_in_memory_encoder_with_pooler_gets_an_mlm_head(files):
    from transformers import XLMRobertaModel

    from sftkit.testing import tiny_config

    tok = files["tokenizer"]
    torch.manual_seed(0)
    encoder = XLMRobertaModel(tiny_config(vocab_size=len(tok), max_position_embeddings=34))  # with a pooler
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    sft = train_language_sft(encoder, files["text"], language="jav", tokenizer=tok,
                             config=_config(full_steps=1, sparse_steps=1), progress=False)
    assert sft.nnz == K and "lm_head.dense.weight" in sft.dense
    assert not any(name.startswith("pooler.") for name in sft.deltas), "the pooler is not part of an MLM model"
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items()), "the given model is untouched"


def test_in_memory_base_pair_classification_is_restored(files, tmp_path):
    from sftkit.testing import tiny_classifier

    tok = files["tokenizer"]
    model = tiny_classifier(seed=1, num_labels=2, vocab_size=len(tok), max_position_embeddings=34)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = [{"premise": p, "hypothesis": h, "label": lab} for p, h, lab in [
        ("aku seneng", "aku bungah", "same"), ("iki apik", "iki elek", "different"),
        ("kowe lunga", "kowe mlaku", "same"), ("omah gedhe", "omah cilik", "different"),
    ] * 4]
    train = _head(tmp_path / "pairs.csv", rows)
    sft = train_task_sft(model, train, task_type="pair-classification", text_column="premise", text_pair_column="hypothesis",
                         config=_config(num_params=100, full_steps=2, sparse_steps=2), tokenizer=tok, task="nli", progress=False)
    assert sft.nnz == 100 and sft.metadata.label_names == ["different", "same"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "θ0 restored"
    result = evaluate(model, sft, test_file=train, text_column="premise", text_pair_column="hypothesis", tokenizer=tok)
    assert result.n == 16 and result.label_names == ["different", "same"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "composition reverted"


def test_user_mistakes_are_config_errors(files, trained, tmp_path):
    base = files["base"]
    with pytest.raises(ConfigError, match=r"jav_test\.csv: .*test split"):
        train_language_sft(base, files["test"], language="jav", config=_config(), text_column="text")
    with pytest.raises(ConfigError, match="num_params"):
        train_language_sft(base, files["text"], language="jav", config=SFTTrainingConfig())
    with pytest.raises(ConfigError, match="max_seq_length=64 exceeds the model's 32 positions"):
        train_language_sft(base, files["text"], language="jav", config=_config(max_seq_length=64))
    with pytest.raises(ConfigError, match="text_pair_column"):
        train_task_sft(base, files["train"], task_type="pair-classification", config=_config())
    bad_valid = _head(tmp_path / "dev.csv", [{"text": "x", "label": "mixed"}])
    with pytest.raises(ConfigError, match=r"dev\.csv: label 'mixed' is not one of the known labels \(negative, neutral, positive\)"):
        train_task_sft(base, files["train"], validation_file=bad_valid, config=_config())
    with pytest.raises(ConfigError, match=r"dev\.csv: label 'mixed'"):
        evaluate(base, trained["task_file"], test_file=bad_valid)
    with pytest.raises(ConfigError, match="tokenizer"):
        train_language_sft(torch.nn.Linear(2, 2), files["text"], language="jav", config=_config())

"""The user-facing training API: language SFTs, task SFTs, and zero-shot evaluation.

It reads like the recipe of Ansell et al. (2022): train a *language* SFT φ_L on unlabeled text of
each language by masked language modelling; train a *task* SFT φ_T on labelled source-language data
with the source language SFT applied underneath (so φ_T learns the task, not the language); then
transfer zero-shot by composing θ0 + φ_L(target) + φ_T and evaluating on target-language test data::

    from sftkit.training import SFTTrainingConfig, train_language_sft, train_task_sft, evaluate

    config = SFTTrainingConfig(num_params=7_667_712, full_epochs=1, sparse_epochs=1)
    eng = train_language_sft("xlm-roberta-base", ["eng.txt"], language="eng", config=config, output="eng.safetensors")
    jav = train_language_sft("xlm-roberta-base", ["jav.txt"], language="jav", config=config, output="jav.safetensors")
    task = train_task_sft("xlm-roberta-base", "train.csv", validation_file="dev.csv", language_sft=eng,
                          config=config, task="sentiment", output="sentiment.safetensors")
    print(evaluate("xlm-roberta-base", task, language_sft=jav, test_file="jav_test.csv").accuracy)

The two-phase procedure itself lives in :mod:`sftkit.training.procedure`; this module handles bases
(a local model directory, a Hub id, or an in-memory model plus tokenizer), data files, metadata
(including the data files' sha256) and saving.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sftkit.delta import SFT
from sftkit.errors import ConfigError
from sftkit.metadata import SFTMetadata
from sftkit.training import data as datamod
from sftkit.training.config import SFTTrainingConfig
from sftkit.training.metrics import EvaluationResult, classification_metrics, compute_metrics_for

if TYPE_CHECKING:
    from transformers import TrainerCallback

logger = logging.getLogger("sftkit")

TASK_TYPES = ("classification", "pair-classification")
PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------- bases


def _is_path(base: Any) -> bool:
    return isinstance(base, (str, os.PathLike))


def _base_name(base: Any) -> str | None:
    if _is_path(base):
        return str(base)
    return getattr(getattr(base, "config", None), "_name_or_path", None) or None


def _tokenizer_for(base: Any, tokenizer: Any) -> Any:
    if tokenizer is not None:
        if _is_path(tokenizer):
            from sftkit.models import load_tokenizer

            return load_tokenizer(tokenizer)
        return tokenizer
    if _is_path(base):
        from sftkit.models import load_tokenizer

        return load_tokenizer(base)
    raise ConfigError("an in-memory base model needs its tokenizer: pass tokenizer=...")


def _as_sft(sft: SFT | PathLike | None) -> SFT | None:
    if sft is None or isinstance(sft, SFT):
        return sft
    from sftkit.format import load_file

    return load_file(sft)


def _for_model(sft: SFT, model: nn.Module) -> SFT:
    """``sft`` without the tensors ``model`` has no parameter for.

    A language SFT carries its MLM head densely; under a classifier that head has nothing to land on.
    Dropping it here (with an info notice) keeps the composer's "skipping parameters" warning for
    the cases where a missing parameter is a real surprise.
    """
    from sftkit.naming import alias_map

    known = alias_map(model)
    deltas = {name: d for name, d in sft.deltas.items() if name in known}
    dense = {name: t for name, t in sft.dense.items() if name in known}
    if len(deltas) == len(sft.deltas) and len(dense) == len(sft.dense):
        return sft
    dropped = sorted({*sft.deltas, *sft.dense} - {*deltas, *dense})
    logger.info("%s SFT: %d tensors not in %s left out (%s)", sft.metadata.kind, len(dropped), type(model).__name__, ", ".join(dropped))
    return SFT(deltas=deltas, dense=dense, metadata=sft.metadata)


def _with_base_weights(target: nn.Module, source: nn.Module) -> nn.Module:
    """Copy ``source``'s base-model weights into ``target`` (whose head stays freshly initialised)."""
    missing, unexpected = target.base_model.load_state_dict(source.base_model.state_dict(), strict=False)
    unexpected = [name for name in unexpected if not name.startswith("pooler.")]  # heads without a pooler
    if unexpected:
        raise ConfigError(f"the base model has parameters the new head model lacks ({unexpected[0]} …); is it the same architecture?")
    if [m for m in missing if not m.startswith("pooler.")]:
        logger.info("base weights not in the given model, freshly initialised: %s", ", ".join(missing))
    return target


def _masked_lm_model(base: Any, seed: int) -> nn.Module:
    """The base with an MLM head. A base without one (encoder-only checkpoint, or a classifier) gets a
    fresh head; phase 1 trains it and the SFT stores it densely."""
    torch.manual_seed(seed)
    if _is_path(base):
        from sftkit.models import load_model

        return load_model(base, for_task="masked-lm")
    if not isinstance(base, nn.Module) or not hasattr(base, "config"):
        raise ConfigError(f"base must be a model directory, a Hub id or a transformers model, got {type(base).__name__}")
    if type(base).__name__.endswith("ForMaskedLM"):
        return base  # train_sft hands it back in its θ0 state
    from transformers import AutoModelForMaskedLM

    config = copy.deepcopy(base.config)
    return _with_base_weights(AutoModelForMaskedLM.from_config(config), base)


def _classifier(base: Any, label_names: Sequence[str], seed: int) -> nn.Module:
    """The base with a freshly initialised classification head for ``label_names`` (θ0 of the head)."""
    torch.manual_seed(seed)
    names = list(label_names)
    if _is_path(base):
        from sftkit.models import load_model

        return load_model(base, for_task="sequence-classification", num_labels=len(names), label_names=names)
    if not isinstance(base, nn.Module) or not hasattr(base, "config"):
        raise ConfigError(f"base must be a model directory, a Hub id or a transformers model, got {type(base).__name__}")
    config = copy.deepcopy(base.config)
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    if type(base).__name__.endswith("ForSequenceClassification") and base.config.num_labels == len(names):
        return base  # its head is θ0 of the task head; train_sft and composed() hand it back unchanged
    from transformers import AutoModelForSequenceClassification

    return _with_base_weights(AutoModelForSequenceClassification.from_config(config), base)


def _check_seq_length(model: nn.Module, max_seq_length: int) -> None:
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return
    # RoBERTa-family position ids start after the padding index.
    offset = (config.pad_token_id + 1) if "roberta" in str(getattr(config, "model_type", "")) else 0
    limit = int(positions) - int(offset or 0)
    if max_seq_length > limit:
        raise ConfigError(f"max_seq_length={max_seq_length} exceeds the model's {limit} positions; lower max_seq_length / --max-seq-length")


def _resolve_config(config: SFTTrainingConfig | None) -> SFTTrainingConfig:
    if config is None:
        raise ConfigError("pass config=SFTTrainingConfig(num_params=K or density=D, ...) (K has no sensible default)")
    config.validate()
    return config


def _describe(model: nn.Module, base: Any) -> Any:
    from sftkit.fingerprints import describe_base

    return describe_base(model, name=_base_name(base))


def _save(sft: SFT, output: PathLike | None) -> None:
    """Write the SFT; in a multi-process run (torchrun / accelerate launch) only the main process writes."""
    from sftkit.training.procedure import is_main_process

    if output is None or not is_main_process():
        return
    from sftkit.format import save_file

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    save_file(sft, str(output))


# ------------------------------------------------------------------------------------------ training


def train_language_sft(
    base: Any,
    text_files: PathLike | Sequence[PathLike],
    *,
    language: str,
    config: SFTTrainingConfig,
    tokenizer: Any = None,
    output: PathLike | None = None,
    text_column: str | None = None,
    allow_test_text: bool = False,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    phase1_cache: PathLike | None = None,
) -> SFT:
    """Train a language SFT φ_L by masked language modelling on unlabeled text of ``language``.

    ``text_files``: ``.txt`` files with one sentence or paragraph per line, or CSV/TSV/JSONL files
    whose ``text_column`` (default ``text``) holds the text. Files named like a test split are refused
    (they would leak test sentences into a zero-shot evaluation) unless ``allow_test_text``.
    ``base`` is a model directory, a Hub id, or an in-memory transformers model (then pass
    ``tokenizer``; it is handed back in its θ0 state). Saved to ``output`` when given.
    ``callbacks`` (``TrainerCallback`` objects) join both phases, so a caller can time phases or keep
    phase 1's model without driving the engine itself; ``kwargs["model"].phase`` tells which phase.
    ``phase1_cache``: a folder shared by runs that differ only in the mask method or K (LT-SFT and
    DeFT-X variants); phase 1 runs once and the others start from its θ1 (the same computation).
    """
    from sftkit.training.procedure import train_sft

    if not language or not str(language).strip():
        raise ConfigError("language must be a language code, e.g. 'jav' (ISO 639-3)")
    config = _resolve_config(config)
    files = [text_files] if _is_path(text_files) else list(text_files)
    if not files:
        raise ConfigError("no text files given; pass at least one file of unlabeled text")
    texts: list[str] = []
    records = []
    for file in files:
        datamod.check_not_test_text(file, allow=allow_test_text)
        file_texts = datamod.read_texts(file, text_column=text_column)
        texts.extend(file_texts)
        records.append(datamod.file_record(file, len(file_texts)))
    tok = _tokenizer_for(base, tokenizer)
    model = _masked_lm_model(base, config.seed)
    _check_seq_length(model, config.max_seq_length)
    dataset = datamod.masked_lm_dataset(tok, texts, max_seq_length=config.max_seq_length)
    # No collator seed: train_sft seeds every batch's masking from its content (resume-exact).
    collator = datamod.masked_lm_collator(tok)
    metadata = SFTMetadata(
        kind="language",
        language=str(language).strip(),
        method=config.method,
        hyperparameters={"data": {"text": records, **({"text_column": text_column} if text_column else {})}},
    )
    sft = train_sft(
        model, dataset, collator, config, kind="language", metadata=metadata,
        base_info=_describe(model, base), progress=progress, callbacks=callbacks, phase1_cache=phase1_cache,
    )
    _save(sft, output)
    return sft


def train_task_sft(
    base: Any,
    train_file: PathLike,
    *,
    validation_file: PathLike | None = None,
    task_type: str = "classification",
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    labels: Sequence[str] | None = None,
    language_sft: SFT | PathLike | None = None,
    language: str | None = None,
    config: SFTTrainingConfig,
    task: str | None = None,
    tokenizer: Any = None,
    output: PathLike | None = None,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    phase1_cache: PathLike | None = None,
) -> SFT:
    """Train a task SFT φ_T (sequence or sentence-pair classification) on labelled data.

    With ``language_sft`` (the *source* language's SFT) applied underneath during both phases, φ_T
    learns the task rather than the source language, which is what makes it transfer when composed
    with a target language SFT. The classification head is stored densely in φ_T; label names come
    from the training file (sorted) or ``labels`` and go into the SFT's metadata. ``callbacks`` and
    ``phase1_cache`` work as in :func:`train_language_sft`.
    """
    from sftkit.training.procedure import train_sft

    if task_type not in TASK_TYPES:
        raise ConfigError(f"task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
    if task_type == "pair-classification" and not text_pair_column:
        raise ConfigError("task_type 'pair-classification' needs text_pair_column / --text-pair-column (the second sentence)")
    if task_type == "classification" and text_pair_column:
        raise ConfigError("text_pair_column / --text-pair-column needs task_type 'pair-classification'")
    config = _resolve_config(config)
    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    train_data = datamod.read_labelled(train_file, what="training", **columns)
    label_names = datamod.label_names_for(train_data, labels)
    if len(label_names) < 2:
        raise ConfigError(f"{train_file}: only one label ({label_names[0]!r}) in the training data; a classifier needs two or more")
    valid_data = datamod.read_labelled(validation_file, what="validation", **columns) if validation_file else None
    if valid_data is not None:
        datamod.check_labels(valid_data, label_names)
    lang_sft = _as_sft(language_sft)
    tok = _tokenizer_for(base, tokenizer)
    model = _classifier(base, label_names, config.seed)
    _check_seq_length(model, config.max_seq_length)
    train_set = datamod.classification_dataset(tok, train_data, label_names, max_seq_length=config.max_seq_length)
    valid_set = (
        datamod.classification_dataset(tok, valid_data, label_names, max_seq_length=config.max_seq_length)
        if valid_data is not None else None
    )
    data_info: dict[str, Any] = {
        "task_type": task_type,
        "train": datamod.file_record(train_file, len(train_data)),
        **{k: v for k, v in columns.items() if v is not None},
    }
    if validation_file is not None and valid_data is not None:
        data_info["validation"] = datamod.file_record(validation_file, len(valid_data))
    source_language = language or (lang_sft.metadata.language if lang_sft is not None else None)
    if lang_sft is not None:
        data_info["language_sft"] = {
            "language": lang_sft.metadata.language,
            "fingerprint": lang_sft.metadata.base.fingerprint,
            "nnz": lang_sft.nnz,
        }
    metadata = SFTMetadata(
        kind="task",
        language=source_language,
        task=task or task_type,
        method=config.method,
        hyperparameters={"data": data_info},
        label_names=label_names,
    )
    sft = train_sft(
        model, train_set, datamod.classification_collator(tok), config, kind="task",
        eval_dataset=valid_set, underlying=[_for_model(lang_sft, model)] if lang_sft is not None else (),
        metadata=metadata, base_info=_describe(model, base),
        compute_metrics=compute_metrics_for(label_names), progress=progress, callbacks=callbacks,
        phase1_cache=phase1_cache,
    )
    if sft.metadata.label_names is None:
        sft.metadata.label_names = label_names
    _save(sft, output)
    return sft


# ---------------------------------------------------------------------------------------- evaluation


def _evaluation_model(base: Any, sfts: list[SFT], label_names: Sequence[str]) -> nn.Module:
    if _is_path(base):
        from sftkit.models import load_model_for

        return load_model_for(base, sfts)
    return _classifier(base, label_names, seed=0)


def _max_seq_length_of(sft: SFT, default: int = 128) -> int:
    hp = sft.metadata.hyperparameters or {}
    for source in (hp, hp.get("config") or {}, hp.get("training") or {}):
        if isinstance(source, dict) and isinstance(source.get("max_seq_length"), int):
            return int(source["max_seq_length"])
    return default


def evaluate(
    base: Any,
    task_sft: SFT | PathLike,
    *,
    language_sft: SFT | PathLike | None = None,
    test_file: PathLike,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    tokenizer: Any = None,
    batch_size: int = 32,
    max_seq_length: int | None = None,
    device: str | torch.device | None = None,
    force: bool = False,
    progress: bool = False,
) -> EvaluationResult:
    """Accuracy, macro-F1 and per-class scores of θ0 + φ_L + φ_T on a labelled test file.

    The model is the base classifier loaded for the task SFT's head and composed through the core
    composer (:func:`sftkit.compose.composed`), exactly what ``sftkit compose`` would write out.
    Test labels must be among the task SFT's label names.
    """
    from sftkit.compose import composed

    task = _as_sft(task_sft)
    assert task is not None
    lang = _as_sft(language_sft)
    label_names = task.metadata.label_names
    if not label_names:
        raise ConfigError("the task SFT has no label names in its metadata; was it trained with sftkit train task?")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
    test = datamod.read_labelled(
        test_file, text_column=text_column, text_pair_column=text_pair_column, label_column=label_column, what="test"
    )
    sfts = [s for s in (lang, task) if s is not None]
    tok = _tokenizer_for(base, tokenizer)
    seq_length = max_seq_length or _max_seq_length_of(task)
    dataset = datamod.classification_dataset(tok, test, label_names, max_seq_length=seq_length)
    model = _evaluation_model(base, sfts, label_names)
    target = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(target).eval()
    collator = datamod.classification_collator(tok)
    predictions: list[int] = [0] * len(dataset)
    references: list[int] = [0] * len(dataset)
    batches = datamod.batches(dataset, collator, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=(len(dataset) + batch_size - 1) // batch_size, desc="evaluate", unit="batch")
    with composed(model, [_for_model(s, model) for s in sfts], force=force), torch.inference_mode():
        for items, batch in batches:
            labels = batch.pop("labels")
            logits = model(**{k: v.to(target) for k, v in batch.items()}).logits
            for i, predicted, label in zip(items, logits.argmax(dim=-1).tolist(), labels.tolist(), strict=True):
                predictions[i], references[i] = predicted, label
    result = classification_metrics(predictions, references, label_names)
    result.details = {
        "test": datamod.file_record(test_file, len(test)),
        "base": _base_name(base),
        "task": task.metadata.task,
        "language_sft": lang.metadata.language if lang is not None else None,
    }
    return result

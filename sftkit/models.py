"""Hugging Face model I/O: load a base model for composing, and write a composed model back out.

The composer works on any ``nn.Module``; this module is the thin layer that turns a local directory
or Hub id into the right ``AutoModel*`` (a task SFT with a classifier head needs a
sequence-classification model with the SFT's labels), and that writes the composed result as a
standalone model directory any ``transformers`` user can load — atomically, and without ever touching
the base model's own files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sftkit._io import atomic_directory
from sftkit.delta import SFT
from sftkit.errors import ConfigError, SFTError
from sftkit.naming import canonicalize_name

__all__ = ["TASKS", "load_model", "load_model_for", "load_tokenizer", "save_composed", "task_for"]

logger = logging.getLogger("sftkit")

TASKS = ("auto", "masked-lm", "sequence-classification", "base")
_CLASS_SUFFIX = {
    "masked-lm": "ForMaskedLM",
    "sequence-classification": "ForSequenceClassification",
    "base": "Model",
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
)
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set: then only local files and the local cache are used."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def _check_source(path_or_id: str | os.PathLike[str]) -> str:
    """Fail early with one line when a local path is not a model directory."""
    source = str(path_or_id)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise SFTError(
                f"{source}: not a model directory (no config.json); give a directory written by save_pretrained or a Hub id"
            )
        return str(path)
    looks_local = (
        source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source
    )
    if looks_local or hub_offline():
        raise SFTError(
            f"{source}: no such model directory; check the path"
            + (" (HF_HUB_OFFLINE is set)" if hub_offline() else "")
        )
    return source


def _architectures(config: Any) -> list[str]:
    return list(getattr(config, "architectures", None) or [])


def load_model(
    path_or_id: str | os.PathLike[str],
    *,
    for_task: str = "auto",
    num_labels: int | None = None,
    label_names: Sequence[str] | None = None,
    dtype: str | torch.dtype | None = None,
) -> nn.Module:
    """Load a model from a local directory or a Hub id, in eval mode.

    ``for_task``: ``masked-lm``, ``sequence-classification``, ``base`` (the bare encoder), or
    ``auto`` — sequence classification when ``num_labels``/``label_names`` are given, otherwise the
    architecture recorded in the checkpoint's config (falling back to the bare encoder). Heads the
    checkpoint lacks are freshly initialised by transformers (a task SFT's dense head replaces them).
    With ``HF_HUB_OFFLINE`` set only local files are used.
    """
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
    )

    if for_task not in TASKS:
        raise ConfigError(f"for_task {for_task!r} is not one of {', '.join(TASKS)}")
    source = _check_source(path_or_id)
    torch_dtype = _resolve_dtype(dtype)
    local_only = hub_offline()
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise SFTError(
            f"{source}: cannot read a model config ({_first_line(exc)}); check the path or Hub id"
        ) from exc

    task = for_task
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if num_labels is not None and num_labels != len(label_names):
            raise ConfigError(
                f"num_labels={num_labels} but {len(label_names)} label names were given; make them agree"
            )
        num_labels = len(label_names)
    if task == "auto":
        archs = _architectures(config)
        if num_labels is not None or any(a.endswith("ForSequenceClassification") for a in archs):
            task = "sequence-classification"
        elif any(a.endswith("ForMaskedLM") for a in archs):
            task = "masked-lm"
        else:
            task = "base"
    if task == "sequence-classification":
        if num_labels is not None:
            config.num_labels = num_labels
        if label_names is not None:
            config.id2label = dict(enumerate(label_names))
            config.label2id = {name: i for i, name in enumerate(label_names)}
    auto_class = {
        "masked-lm": AutoModelForMaskedLM,
        "sequence-classification": AutoModelForSequenceClassification,
        "base": AutoModel,
    }[task]
    kwargs: dict[str, Any] = {"config": config, "local_files_only": local_only}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    archs = _architectures(config)
    other_head = bool(archs) and not any(a.endswith(_CLASS_SUFFIX[task]) for a in archs)
    try:
        with _quiet_load_report(other_head):
            model = auto_class.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise SFTError(
            f"{source}: cannot load the model as {task} ({_first_line(exc)}); check the path or Hub id"
        ) from exc
    if other_head:
        logger.info(
            "%s: a %s checkpoint loaded as %s; heads it lacks start fresh, heads it has but %s lacks are dropped",
            source,
            archs[0],
            type(model).__name__,
            type(model).__name__,
        )
    return model.eval()


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextmanager
def _quiet_load_report(enabled: bool) -> Iterator[None]:
    """Drop transformers' multi-line load report when a head mismatch is intended (MLM → classifier).

    A filter rather than a level change: transformers 5 keys other warnings off this logger's level.
    """
    report_logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    if enabled:
        report_logger.addFilter(drop)
    try:
        yield
    finally:
        report_logger.removeFilter(drop)


def load_tokenizer(path_or_id: str | os.PathLike[str]) -> Any | None:
    """The tokenizer stored with a model, or ``None`` if there is none (e.g. a model built from a config)."""
    from transformers import AutoTokenizer

    source = str(path_or_id)
    path = Path(source).expanduser()
    if path.exists():
        # transformers 5 builds an empty tokenizer from config.json alone; that is not a tokenizer
        if not path.is_dir() or not any((path / name).is_file() for name in TOKENIZER_FILES):
            return None
        source = str(path)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=hub_offline())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.info("no tokenizer loaded from %s: %s", source, _first_line(exc))
        return None


def _is_classifier_name(name: str) -> bool:
    return canonicalize_name(name).startswith("classifier.")


def _is_lm_head_name(name: str) -> bool:
    return canonicalize_name(name).startswith(("lm_head.", "cls.predictions."))


def task_for(sfts: Sequence[SFT]) -> tuple[str, int | None, list[str] | None]:
    """The head a composition of ``sfts`` needs: ``(task, num_labels, label_names)``.

    A dense ``classifier.*`` tensor (a task head) → sequence classification, with ``num_labels`` from
    the head's output projection and label names from the last SFT that records them; otherwise any
    ``lm_head.*`` tensor → masked LM; otherwise the bare base model.
    """
    heads = {name: tensor for sft in sfts for name, tensor in sft.dense.items() if _is_classifier_name(name)}
    if heads:
        label_names = next(
            (list(s.metadata.label_names) for s in reversed(sfts) if s.metadata.label_names), None
        )
        weights = [n for n, t in heads.items() if n.endswith("weight") and t.dim() == 2]
        projection = next((n for n in weights if n.endswith(("out_proj.weight", "classifier.weight"))), None)
        projection = projection or (weights[-1] if weights else None)
        num_labels = int(heads[projection].shape[0]) if projection else None
        if num_labels is None and label_names is not None:
            num_labels = len(label_names)
        if label_names is not None and num_labels is not None and len(label_names) != num_labels:
            raise ConfigError(
                f"the task head {projection} has {num_labels} outputs but the SFT metadata names {len(label_names)} labels; "
                "fix label_names in the SFT"
            )
        return "sequence-classification", num_labels, label_names
    touched = [name for sft in sfts for name in (*sft.deltas, *sft.dense)]
    if any(_is_lm_head_name(n) for n in touched):
        return "masked-lm", None, None
    return "base", None, None


def load_model_for(
    base: str | os.PathLike[str], sfts: Sequence[SFT], *, dtype: str | torch.dtype | None = None
) -> nn.Module:
    """Load ``base`` with the head the SFTs need (see :func:`task_for`), ready for :func:`sftkit.compose.apply`."""
    task, num_labels, label_names = task_for(sfts)
    return load_model(base, for_task=task, num_labels=num_labels, label_names=label_names, dtype=dtype)


def save_composed(
    model: nn.Module,
    outdir: str | os.PathLike[str],
    *,
    tokenizer_source: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a standalone model directory (``save_pretrained`` + the tokenizer if any).

    Atomic: everything is written to a temporary directory beside ``outdir`` and renamed into place,
    so a crash leaves either the old directory or the complete new one. Refuses a non-empty existing
    ``outdir`` unless ``overwrite``, and always refuses to write over the base model's directory.
    """
    out = Path(outdir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory; choose another output path")
    protected = [p for p in (tokenizer_source, getattr(model, "name_or_path", None)) if p]
    for source in protected:
        source_path = Path(str(source)).expanduser()
        if source_path.exists() and source_path.resolve() == out.resolve():
            raise ConfigError(
                f"{out}: is the base model's directory; write the composed model somewhere else"
            )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out}: exists and is not empty; choose another directory or pass overwrite=True / --overwrite"
        )
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(
            f"{type(model).__name__} has no save_pretrained; only transformers models can be saved as a model directory"
        )

    with atomic_directory(out) as staging:
        model.save_pretrained(staging)
        tokenizer = load_tokenizer(tokenizer_source) if tokenizer_source is not None else None
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""LT-SFT / DeFT-X training of language and task SFTs (see docs/training.md).

The public API (loaded lazily: the procedure pulls in the transformers Trainer)::

    from sftkit.training import SFTTrainingConfig, train_language_sft, train_task_sft, evaluate

* :class:`SFTTrainingConfig` and :func:`train_sft` — the two-phase procedure on any model and dataset;
* :func:`train_language_sft`, :func:`train_task_sft`, :func:`evaluate` — the paper's recipe on files;
* :func:`train_tokenizer` — a small XLM-R-style tokenizer for tiny models (tests, the demo);
* :class:`EvaluationResult`, :func:`classification_metrics` — accuracy, macro-F1, per-class scores.
"""

from __future__ import annotations

from sftkit._lazy import lazy_attributes

# Cheap to import eagerly: transformers loads only when training or evaluation runs.
from sftkit.training.api import TASK_TYPES, evaluate, train_language_sft, train_task_sft
from sftkit.training.config import SFTTrainingConfig
from sftkit.training.data import read_labelled, read_texts
from sftkit.training.metrics import ClassMetrics, EvaluationResult, classification_metrics

_LAZY = {
    "train_sft": "sftkit.training.procedure",
    "train_tokenizer": "sftkit.training.tokenizer",
}

__all__ = [
    "SFTTrainingConfig",
    "train_language_sft",
    "train_task_sft",
    "evaluate",
    "TASK_TYPES",
    "EvaluationResult",
    "ClassMetrics",
    "classification_metrics",
    "read_texts",
    "read_labelled",
    *_LAZY,
]


__getattr__, __dir__ = lazy_attributes("sftkit.training", globals(), _LAZY)

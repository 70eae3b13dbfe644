"""LT-SFT / DeFT-X training of language and task SFTs (see docs/training.md).

The public API (loaded lazily: the procedure pulls in the transformers Trainer)::

    from sftkit.training import SFTTrainingConfig, train_language_sft, train_task_sft, evaluate

* :class:`SFTTrainingConfig` and :func:`train_sft` — the two-phase procedure on any model and dataset;
* :func:`train_language_sft`, :func:`train_task_sft`, :func:`evaluate` — the paper's recipe on files;
* :func:`train_tokenizer` — a small XLM-R-style tokenizer for tiny models (tests, the demo);
* :class:`EvaluationResult`, :func:`classification_metrics` — accuracy, macro-F1, per-class scores.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported eagerly on purpose: importing the submodule ``sftkit.training.evaluate`` binds the package
# attribute ``evaluate`` to that module; binding the API function afterwards makes
# ``from sftkit.training import evaluate`` the function. (Cheap: transformers loads only when used.)
from sftkit.training.api import TASK_TYPES, evaluate, train_language_sft, train_task_sft
from sftkit.training.config import SFTTrainingConfig
from sftkit.training.data import read_labelled, read_texts
from sftkit.training.evaluate import ClassMetrics, EvaluationResult, classification_metrics

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sftkit.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

"""Classification metrics for task SFTs: accuracy, macro-F1 and per-class precision/recall/F1.

Pure functions over integer predictions and references (no scikit-learn dependency), so the same
numbers come out of :func:`sftkit.training.evaluate` (the API), ``sftkit evaluate`` (the CLI) and
the validation metric used during task-SFT training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "support": self.support}


@dataclass
class EvaluationResult:
    """Scores of a classifier on a labelled test set; ``per_class`` is keyed by label name."""

    accuracy: float
    macro_f1: float
    n: int
    label_names: list[str]
    per_class: dict[str, ClassMetrics]
    predictions: list[int] = field(default_factory=list, repr=False)
    """Predicted label ids in test-file order (kept for error analysis; omitted from ``to_dict``)."""
    details: dict[str, Any] = field(default_factory=dict)
    """What was evaluated: test file and sha256, SFT names, base."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "n": self.n,
            "label_names": list(self.label_names),
            "per_class": {name: m.to_dict() for name, m in self.per_class.items()},
            **({"details": self.details} if self.details else {}),
        }


def _safe_div(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def classification_metrics(
    predictions: Sequence[int], references: Sequence[int], label_names: Sequence[str]
) -> EvaluationResult:
    """Accuracy, macro-F1 over *all* ``label_names`` (a class never predicted nor present scores 0),
    and per-class precision/recall/F1/support."""
    pred = np.asarray(list(predictions), dtype=np.int64)
    ref = np.asarray(list(references), dtype=np.int64)
    if pred.shape != ref.shape:
        raise ValueError(f"{pred.size} predictions but {ref.size} references")
    n = int(ref.size)
    per_class: dict[str, ClassMetrics] = {}
    for label_id, name in enumerate(label_names):
        tp = int(np.sum((pred == label_id) & (ref == label_id)))
        predicted = int(np.sum(pred == label_id))
        support = int(np.sum(ref == label_id))
        precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
        f1 = _safe_div(2 * precision * recall, precision + recall)
        per_class[name] = ClassMetrics(precision, recall, f1, support)
    accuracy = _safe_div(int(np.sum(pred == ref)), n)
    macro_f1 = _safe_div(sum(m.f1 for m in per_class.values()), len(per_class))
    return EvaluationResult(accuracy, macro_f1, n, list(label_names), per_class, pred.tolist())


def compute_metrics_for(label_names: Sequence[str]) -> Any:
    """A transformers ``compute_metrics`` callback reporting accuracy and macro-F1 on validation data."""

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        logits, references = eval_prediction[0], eval_prediction[1]
        if isinstance(logits, tuple):
            logits = logits[0]
        result = classification_metrics(np.argmax(logits, axis=-1).tolist(), np.asarray(references).tolist(), label_names)
        return {"accuracy": result.accuracy, "macro_f1": result.macro_f1}

    return compute_metrics


def format_result(result: EvaluationResult) -> str:
    """A short human-readable report (used by ``sftkit evaluate``)."""
    lines = [f"accuracy {result.accuracy:.4f}  macro-F1 {result.macro_f1:.4f}  (n={result.n})", ""]
    width = max([5, *(len(name) for name in result.label_names)])
    lines.append(f"{'label'.ljust(width)}  precision  recall      f1  support")
    for name, m in result.per_class.items():
        lines.append(f"{name.ljust(width)}  {m.precision:9.4f}  {m.recall:6.4f}  {m.f1:6.4f}  {m.support:7d}")
    return "\n".join(lines)

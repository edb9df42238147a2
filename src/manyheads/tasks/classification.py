"""`classification`: one label per text or text pair; cross-entropy; accuracy, macro-F1, MCC."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from torch import nn

from .base import SequenceOptions, Task, softmax

if TYPE_CHECKING:
    from datasets import Dataset

    from ..config import TaskConfig


@dataclass
class ClassificationOptions(SequenceOptions):
    # "auto" (inverse label frequency, normalised to mean 1), a list in label order, or {label: weight}.
    class_weights: list[float] | dict[str, float] | str | None = None


def label_key(value: Any) -> str:
    """Labels are stored as strings so that 0/1 columns and named labels behave the same."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def sorted_labels(values: list[Any]) -> list[str]:
    """Inferred label order: numeric labels by value (0, 1, 2, 10), names alphabetically."""
    keys = {label_key(v) for v in values if v is not None}
    try:
        return sorted(keys, key=float)
    except ValueError:
        return sorted(keys)


def check_label_values(values: list[Any], allowed: list[str] | None, source: str, column: str) -> list[str]:
    """First missing or undeclared label in a column, as a one-line problem."""
    for row, value in enumerate(values):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return [f"{source}: data row {row + 1}, column '{column}': the label is empty. Fill or drop that row."]
        if allowed is not None and label_key(value) not in allowed:
            return [
                f"{source}: data row {row + 1}, column '{column}': label {value!r} is not in the declared "
                f"labels {allowed}. Add it to 'labels' or fix the row."
            ]
    return []


class ClassificationTask(Task):
    type_name = "classification"
    Options = ClassificationOptions
    METRICS = {"accuracy": True, "f1": True, "mcc": True}
    DEFAULT_MAIN_METRIC = "accuracy"
    stock_problem_type = "single_label_classification"

    @classmethod
    def check_config(cls, config: TaskConfig) -> list[str]:
        problems = super().check_config(config)
        if not config.label:
            problems.append("label: a classification task needs the name of its label column.")
        weights = config.options.class_weights
        if isinstance(weights, str) and weights != "auto":
            problems.append(f"class_weights: got {weights!r}; use 'auto', a list, or a {{label: weight}} mapping.")
        if isinstance(weights, list) and config.labels and len(weights) != len(config.labels):
            problems.append(
                f"class_weights: {len(weights)} weights for {len(config.labels)} labels; give one per label."
            )
        return problems

    def check_data(self, split: str, dataset: Dataset, source: str) -> list[str]:
        declared = [label_key(v) for v in self.config.labels] if self.config.labels else None
        return super().check_data(split, dataset, source) + check_label_values(
            dataset[self.config.label], declared, source, self.config.label
        )

    def setup_labels(self, train: Dataset | None) -> None:
        if self.config.labels:
            self.config.labels = [label_key(v) for v in self.config.labels]
        elif train is not None:
            self.config.labels = sorted_labels(train[self.config.label])
        weights = self.options.class_weights
        if weights == "auto" and train is not None:
            counts = Counter(label_key(v) for v in train[self.config.label])
            # Inverse frequency, scaled so the mean weight is 1 and the loss scale stays comparable.
            raw = [len(train) / (len(self.labels) * max(counts[label], 1)) for label in self.labels]
            self.options.class_weights = raw
        elif isinstance(weights, dict):
            self.options.class_weights = [float(weights.get(label, 1.0)) for label in self.labels]

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[label_key(v)] for v in batch[self.config.label]]


    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = self.options.class_weights
        weight = torch.tensor(weights, dtype=torch.float32, device=logits.device) if weights else None
        return nn.functional.cross_entropy(logits.float(), labels, weight=weight)

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        predicted = predictions.argmax(-1)
        return {
            "accuracy": float(accuracy_score(labels, predicted)),
            "f1": float(f1_score(labels, predicted, average="macro", labels=range(self.num_outputs),
                                 zero_division=0)),
            "mcc": float(matthews_corrcoef(labels, predicted)),
        }

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        probs = softmax(np.asarray(logits, dtype=np.float64))
        best = probs.argmax(-1)
        return [
            {"label": self.labels[i], "score": float(p[i]),
             "scores": {label: float(s) for label, s in zip(self.labels, p)}}
            for i, p in zip(best, probs)
        ]

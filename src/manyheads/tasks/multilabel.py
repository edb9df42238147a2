"""`multilabel`: any subset of labels per text; binary cross-entropy; micro/macro F1 and exact match.

Labels come either as one list column (`label: aspects`, each cell a list of label names) or as one 0/1
column per label (`label_columns: [toxic, obscene, ...]`, the column names being the labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from .base import SequenceOptions, Task, sigmoid
from .classification import label_key, sorted_labels

if TYPE_CHECKING:
    from datasets import Dataset

    from ..config import TaskConfig


@dataclass
class MultilabelOptions(SequenceOptions):
    label_columns: list[str] | None = None
    # "auto" (negatives / positives per label, from the training split) or one weight per label.
    pos_weight: list[float] | str | None = None
    threshold: float = 0.5


class MultilabelTask(Task):
    type_name = "multilabel"
    Options = MultilabelOptions
    METRICS = {"micro_f1": True, "macro_f1": True, "exact_match": True}
    DEFAULT_MAIN_METRIC = "micro_f1"
    stock_problem_type = "multi_label_classification"

    @classmethod
    def check_config(cls, config: TaskConfig) -> list[str]:
        problems = super().check_config(config)
        options = config.options
        if isinstance(options.pos_weight, str) and options.pos_weight != "auto":
            problems.append(f"pos_weight: got {options.pos_weight!r}; use 'auto' or one number per label.")
        if not 0.0 < options.threshold < 1.0:
            problems.append(f"threshold: got {options.threshold}; it must be between 0 and 1.")
        if options.label_columns and config.labels and list(config.labels) != list(options.label_columns):
            problems.append("labels: with 'label_columns' the labels are the column names; remove 'labels'.")
        return problems

    def required_columns(self) -> list[str]:
        targets = self.options.label_columns or [self.config.label]
        return list(self.config.text) + list(targets)

    def check_data(self, split: str, dataset: Dataset, source: str) -> list[str]:
        problems = super().check_data(split, dataset, source)
        declared = set(self.labels) if self.config.labels else None
        if self.options.label_columns:
            for column in self.options.label_columns:
                bad = next(((r, v) for r, v in enumerate(dataset[column]) if v not in (0, 1)), None)
                if bad:
                    problems.append(
                        f"{source}: data row {bad[0] + 1}, column '{column}': multi-label value {bad[1]!r} is "
                        "not 0 or 1. Use 0/1 per label column."
                    )
            return problems
        for row, value in enumerate(dataset[self.config.label]):
            if not isinstance(value, list):
                problems.append(
                    f"{source}: data row {row + 1}, column '{self.config.label}': expected a list of labels, "
                    f"got {value!r}. Use a JSON list, or 'label_columns' for 0/1 columns."
                )
                break
            unknown = [v for v in value if declared is not None and label_key(v) not in declared]
            if unknown:
                problems.append(
                    f"{source}: data row {row + 1}, column '{self.config.label}': label {unknown[0]!r} is not "
                    f"in the declared labels {sorted(declared)}. Add it to 'labels' or fix the row."
                )
                break
        return problems

    def setup_labels(self, train: Dataset | None) -> None:
        if self.options.label_columns:
            self.config.labels = list(self.options.label_columns)
        elif self.config.labels:
            self.config.labels = [label_key(v) for v in self.config.labels]
        elif train is not None:
            self.config.labels = sorted_labels([v for row in train[self.config.label] for v in row])
        if self.options.pos_weight == "auto" and train is not None:
            targets = np.asarray(self._targets(train[:]), dtype=np.float64)
            positives = targets.sum(0)
            # pos_weight = negatives / positives, as in torch's BCEWithLogitsLoss docs; 1 for absent labels.
            ratio = np.where(positives > 0, (len(targets) - positives) / np.maximum(positives, 1), 1.0)
            self.options.pos_weight = [float(w) for w in ratio]

    def _targets(self, batch: dict[str, list]) -> list[list[float]]:
        if self.options.label_columns:
            columns = [batch[c] for c in self.options.label_columns]
            return [[float(v) for v in row] for row in zip(*columns)]
        index = {label: i for i, label in enumerate(self.labels)}
        rows = []
        for values in batch[self.config.label]:
            row = [0.0] * len(index)
            for v in values:
                row[index[label_key(v)]] = 1.0
            rows.append(row)
        return rows

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        return self._targets(batch)


    def collate_labels(self, labels: list, sequence_length: int) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.float32)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pos_weight = self.options.pos_weight
        weight = torch.tensor(pos_weight, dtype=torch.float32, device=logits.device) if pos_weight else None
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        predicted = (sigmoid(predictions.astype(np.float64)) >= self.options.threshold).astype(int)
        labels = labels.astype(int)
        return {
            "micro_f1": float(f1_score(labels, predicted, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
            "exact_match": float((predicted == labels).all(axis=1).mean()),
        }

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        probs = sigmoid(np.asarray(logits, dtype=np.float64))
        return [
            {"labels": [lab for lab, p in zip(self.labels, row) if p >= self.options.threshold],
             "scores": {lab: float(p) for lab, p in zip(self.labels, row)}}
            for row in probs
        ]

"""`multilabel`: any subset of labels per text; binary cross-entropy; micro/macro F1 and exact match.

Labels come as one list column (`label: aspects`, each cell a list of label names), as a delimited string
(`label_separator: ","` for cells such as "4,27", with `label_names` when they are indices), or as one 0/1
column per label (`label_columns: [toxic, obscene, ...]`, the column names being the labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from ..errors import shown
from .base import SequenceTask, sigmoid
from .labels import sorted_labels

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass(kw_only=True)
class MultiLabel(SequenceTask):
    """Any subset of labels per text or pair.

    Args:
        label_columns: one 0/1 column per label instead of a list column.
        label_separator: split string cells on it ("4,27" with ",").
        pos_weight: `"auto"` (negatives / positives per label, fitted on the training split) or one weight per
            label; None: unweighted.
        threshold: probability from which a label is predicted.
        (and every `Task` / `SequenceTask` argument)
    """

    label_columns: list[str] | None = None
    label_separator: str | None = None
    pos_weight: list[float] | str | None = None
    threshold: float = 0.5

    type_name = "multilabel"
    METRICS = {"micro_f1": True, "macro_f1": True, "exact_match": True}
    stock_problem_type = "multi_label_classification"

    def check(self) -> list[str]:
        problems = super().check()
        if isinstance(self.pos_weight, str) and self.pos_weight != "auto":
            problems.append(f"pos_weight: got {self.pos_weight!r}; use 'auto' or one number per label.")
        if isinstance(self.pos_weight, list) and any(not math.isfinite(float(w)) or float(w) <= 0
                                                     for w in self.pos_weight):
            problems.append(f"pos_weight: got {shown(self.pos_weight)}; each weight must be a finite number > 0.")
        if not 0.0 < self.threshold < 1.0:
            problems.append(f"threshold: got {self.threshold}; it must be between 0 and 1.")
        if self.label_columns and self.labels and list(self.labels) != list(self.label_columns):
            problems.append("labels: with 'label_columns' the labels are the column names; remove 'labels'.")
        if self.label_separator == "":
            problems.append("label_separator: got ''; give the character between labels, e.g. ','.")
        return problems

    def required_columns(self) -> list[str]:
        return list(self.text) + list(self.label_columns or [self.label])

    def check_data(self, split: str, dataset: Dataset, source: str) -> list[str]:
        problems = super().check_data(split, dataset, source)
        if self.label_columns:
            for column in self.label_columns:
                bad = next(((r, v) for r, v in enumerate(dataset[column]) if v not in (0, 1)), None)
                if bad:
                    problems.append(f"{source}: data row {bad[0] + 1}, column '{column}': multi-label value "
                                    f"{shown(bad[1])} is not 0 or 1. Use 0/1 per label column.")
            return problems
        declared = self.label_list or None
        reader = self.reader
        for row, value in enumerate(dataset[self.label]):
            where = f"{source}: data row {row + 1}, column '{self.label}'"
            try:
                names = reader.many(value)
            except TypeError:
                return problems + [f"{where}: expected a list of labels, got {shown(value)}. Use a JSON list, "
                                   "'label_separator' for delimited strings such as \"4,27\", or 'label_columns' "
                                   "for 0/1 columns."]
            except ValueError as err:
                return problems + [f"{where}: {err}. Fix the row or label_names."]
            unknown = [v for v in names if declared is not None and v not in declared]
            if unknown:
                return problems + [f"{where}: label {shown(unknown[0])} is not in the declared labels "
                                   f"{list(declared)}. Add it to 'labels' or fix the row."]
        return problems

    def fit(self, train: Dataset | None) -> None:
        labels = self.label_columns or self.labels or self.label_names
        if labels is None and train is not None:
            labels = sorted_labels([v for cell in train[self.label] for v in self.reader.many(cell)])
        if labels is not None:
            self.fitted["labels"] = list(labels)
        if self.pos_weight == "auto" and train is not None:
            targets = np.asarray(self._targets(train[:]), dtype=np.float64)
            positives = targets.sum(0)
            # pos_weight = negatives / positives, as in torch's BCEWithLogitsLoss docs; 1 for absent labels.
            ratio = np.where(positives > 0, (len(targets) - positives) / np.maximum(positives, 1), 1.0)
            self.fitted["pos_weight"] = [float(w) for w in ratio]
        elif isinstance(self.pos_weight, list):
            self.fitted["pos_weight"] = [float(w) for w in self.pos_weight]

    def _targets(self, batch: dict[str, list]) -> list[list[float]]:
        if self.label_columns:
            return [[float(v) for v in row] for row in zip(*[batch[c] for c in self.label_columns])]
        index = {label: i for i, label in enumerate(self.label_list)}
        rows = []
        for cell in batch[self.label]:
            row = [0.0] * len(index)
            for name in self.reader.many(cell):
                row[index[name]] = 1.0
            rows.append(row)
        return rows

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        return self._targets(batch)

    def collate_labels(self, labels: list, sequence_length: int) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.float32)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pos_weight = self.fitted.get("pos_weight")
        weight = torch.tensor(pos_weight, dtype=torch.float32, device=logits.device) if pos_weight else None
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        predicted = (sigmoid(predictions.astype(np.float64)) >= self.threshold).astype(int)
        labels = labels.astype(int)
        return {
            "micro_f1": float(f1_score(labels, predicted, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
            "exact_match": float((predicted == labels).all(axis=1).mean()),
        }

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        probs = sigmoid(np.asarray(logits, dtype=np.float64))
        labels = self.label_list
        return [{"labels": [lab for lab, p in zip(labels, row) if p >= self.threshold],
                 "scores": {lab: float(p) for lab, p in zip(labels, row)}} for row in probs]

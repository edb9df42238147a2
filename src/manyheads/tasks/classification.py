"""`classification`: one label per text or text pair; cross-entropy; accuracy, macro F1/precision/recall, MCC."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, matthews_corrcoef, precision_recall_fscore_support
from torch import nn

from ..errors import shown
from .base import SequenceTask, all_same, main_metric_of, softmax, unknown_label_message
from .capabilities import StockLayout
from .labels import label_key, sorted_labels

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)


def _is_number(value: Any) -> bool:
    try:
        float(label_key(value))
    except ValueError:
        return False
    return True


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


@dataclass(kw_only=True)
class Classification(SequenceTask):
    """One label per text or pair.

    Args:
        class_weights: `"auto"` (inverse label frequency on the training split, mean 1), a list in label
            order, or `{label: weight}`; None: unweighted cross-entropy.
        (and every `Task` / `SequenceTask` argument)
    """

    class_weights: list[float] | dict[str, float] | str | None = None

    METRICS = {"accuracy": True, "f1": True, "precision": True, "recall": True, "mcc": True}

    def check(self) -> list[str]:
        problems = super().check()
        if not self.label:
            problems.append("label: a classification task needs the name of its label column.")
        weights = self.class_weights
        if isinstance(weights, str) and weights != "auto":
            problems.append(f"class_weights: got {shown(weights)}; use 'auto', a list, or a {{label: weight}} mapping.")
        values = list(weights.values()) if isinstance(weights, dict) else weights if isinstance(weights, list) else []
        if values and (any(not math.isfinite(float(w)) or float(w) < 0 for w in values) or not any(values)):
            problems.append(f"class_weights: got {shown(weights)}; each weight must be a finite number >= 0, and "
                            "not all of them 0.")
        declared = self.label_list or None
        if isinstance(weights, list) and declared and len(weights) != len(declared):
            problems.append(f"class_weights: {len(weights)} weights for {len(declared)} labels; give one per label.")
        return problems

    def _label_of(self, value: Any) -> str:
        return self.reader.name(value)

    def check_data(self, split: str, dataset: Dataset, source: str, labelled: bool = True) -> list[str]:
        problems = super().check_data(split, dataset, source, labelled)
        if not labelled:
            return problems
        declared = self.label_list or None
        column = self.label
        values = dataset[column]
        first = next((v for v in values if not _is_empty(v)), None)
        for row, value in enumerate(values):
            where = f"{source}: data row {row + 1}, column '{column}'"
            if _is_empty(value):
                return problems + [f"{where}: the label is empty. Fill or drop that row."]
            if isinstance(value, (dict, list, tuple)):
                kind = "an object" if isinstance(value, dict) else "a list"
                return problems + [f"{where}: the label is {kind} ({shown(value)}); a classification label is one "
                                   "name or number. Flatten the column (a list of labels per row is a multilabel "
                                   "task)."]
            try:
                name = self._label_of(value)
            except ValueError as err:
                return problems + [f"{where}: {err}. Fix the row or label_names."]
            if _is_number(value) != _is_number(first):
                return problems + [f"{where}: label {shown(value)} mixes with {shown(first)} (row 1): a label column "
                                   "holds names or numbers, not both. Fix the row (or map numbers with label_names)."]
            if declared is not None and name not in declared:
                # The declared list as the user wrote it (its order is the head's order).
                return problems + [f"{where}: {unknown_label_message(self, 'label', value)}"]
        return problems

    def fit(self, train: Dataset | None) -> None:
        labels = self.labels or self.label_names
        if labels is None and train is not None:
            labels = sorted_labels([self._label_of(v) for v in train[self.label]])
        if labels is not None:
            self.fitted["labels"] = list(labels)
        if train is not None and len({self._label_of(v) for v in train[self.label]}) == 1:
            logger.warning("manyheads: task '%s': every training row has the label %r, so the head can only learn "
                           "to predict it. Check the label column and the data split.", self.name,
                           self._label_of(train[self.label][0]))
        weights = self.class_weights
        if weights == "auto" and train is not None:
            counts = Counter(self._label_of(v) for v in train[self.label])
            # Inverse frequency, scaled so the mean weight is 1 and the loss scale stays comparable.
            self.fitted["class_weights"] = [len(train) / (len(self.label_list) * max(counts[label], 1))
                                            for label in self.label_list]
        elif isinstance(weights, dict):
            self.fitted["class_weights"] = [float(weights.get(label, 1.0)) for label in self.label_list]
        elif isinstance(weights, list):
            self.fitted["class_weights"] = [float(w) for w in weights]

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        index = {label: i for i, label in enumerate(self.label_list)}
        return [index[self._label_of(v)] for v in batch[self.label]]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = self.fitted.get("class_weights")
        weight = torch.tensor(weights, dtype=torch.float32, device=logits.device) if weights else None
        if labels.dim() > 1 and labels.numel() == logits.shape[0]:
            labels = labels.reshape(-1)  # [1, N] (`.unsqueeze(0)` in tutorials): stock models flatten it too
        return nn.functional.cross_entropy(logits.float(), labels, weight=weight)

    def stock_layout(self, head: nn.Module) -> StockLayout:
        return dataclasses.replace(super().stock_layout(head), problem_type="single_label_classification")

    def constant_predictions(self, predictions: np.ndarray, labels: np.ndarray) -> bool:
        return all_same(np.asarray(predictions).argmax(-1))

    def constant_baseline(self, labels: np.ndarray) -> tuple[float, str] | None:
        """The main metric of always answering the most frequent label of these encoded `labels` (the best constant
        answer for accuracy; for F1, precision, recall and MCC every constant scores alike), and that answer."""
        labels = np.asarray(labels).reshape(-1).astype(int)
        if not len(labels) or self.num_outputs < 1:
            return None
        best = int(np.bincount(labels, minlength=self.num_outputs).argmax())
        logits = np.zeros((len(labels), self.num_outputs))
        logits[:, best] = 1.0
        return self.compute_metrics(logits, labels)[main_metric_of(self)], f"always {self.label_list[best]!r}"

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        predicted = predictions.argmax(-1)
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, average="macro", labels=range(self.num_outputs), zero_division=0)
        return {"accuracy": float(accuracy_score(labels, predicted)), "f1": float(f1),
                "precision": float(precision), "recall": float(recall),
                "mcc": float(matthews_corrcoef(labels, predicted))}

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        probs = softmax(np.asarray(logits, dtype=np.float64))
        labels = self.label_list
        return [{"label": labels[i], "score": float(p[i]), "scores": {label: float(s) for label, s in zip(labels, p)}}
                for i, p in zip(probs.argmax(-1), probs)]

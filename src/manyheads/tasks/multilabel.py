"""`multilabel`: any subset of labels per text; binary cross-entropy; micro/macro F1, exact match, Jaccard.

Labels come as one list column (`label: aspects`, each cell a list of label names), as a delimited string
(`label_separator: ","` for cells such as "4,27", with `label_names` when they are indices), or as one 0/1
column per label (`label_columns: [toxic, obscene, ...]`, the column names being the labels).

Decision thresholds: with imbalanced labels a sigmoid head rarely lifts a rare label above 0.5 in a few hundred
steps, so a fixed 0.5 predicts nothing for it (micro/macro F1 0). By default (`threshold: tuned`) each label gets
the threshold that maximises its F1 on the eval split, fitted whenever `MultiTaskTrainer` evaluates the run's own
eval split after training steps (`fit_on_predictions`; never on a test split, nor in `manyheads evaluate`) and
saved in `fitted["thresholds"]`, so `predict`, `serve` and exports use them; a label with fewer than 5 positives
in the eval split gets the one threshold that maximises micro-F1 over all labels. Without an eval split, or
before the first evaluation, the thresholds are 0.5. The eval metrics of those evaluations are computed with
the thresholds just fitted on the same rows, so they are optimistic; judge a model on a split that chose
nothing (`manyheads evaluate --split test`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from ..errors import ConfigError, shown
from .base import SequenceTask, all_same, sigmoid
from .labels import sorted_labels

if TYPE_CHECKING:
    from datasets import Dataset


TUNED = "tuned"
POS_WEIGHTS = ("auto", "sqrt")
SQRT_POS_WEIGHT_CAP = 10.0
# A label with fewer positives than this in the eval split gets the global threshold: its own F1 curve is noise.
MIN_TUNING_POSITIVES = 5
_GRID = np.round(np.arange(0.02, 0.981, 0.01), 2)


@dataclass(kw_only=True)
class MultiLabel(SequenceTask):
    """Any subset of labels per text or pair.

    Args:
        label_columns: one 0/1 column per label instead of a list column.
        label_separator: split string cells on it ("4,27" with ",").
        pos_weight: weight of the positive term of each label's loss: `"sqrt"` (default: square root of negatives /
            positives per label, fitted on the training split, at most 10; best of the variants on SemEval-2018 E-c
            in bench/RESULTS.md), `"auto"` (negatives / positives: on imbalanced labels it floods predictions, many
            labels per row), one weight per label, or None: unweighted.
        threshold: probability from which a label is predicted: `"tuned"` (default; per label, fitted on the eval
            split during training, see the module docstring), one number for every label, or `{label: number}`
            (labels not named: 0.5).
        (and every `Task` / `SequenceTask` argument)
    """

    label_columns: list[str] | None = None
    label_separator: str | None = None
    pos_weight: list[float] | str | None = "sqrt"
    threshold: float | dict[str, float] | str = TUNED

    type_name = "multilabel"
    METRICS = {"micro_f1": True, "macro_f1": True, "exact_match": True, "jaccard": True}
    stock_problem_type = "multi_label_classification"

    def check(self) -> list[str]:
        problems = super().check()
        if isinstance(self.pos_weight, str) and self.pos_weight not in POS_WEIGHTS:
            problems.append(f"pos_weight: got {self.pos_weight!r}; use {' or '.join(map(repr, POS_WEIGHTS))}, one "
                            "number per label, or leave it out (unweighted).")
        if isinstance(self.pos_weight, list) and any(not math.isfinite(float(w)) or float(w) <= 0
                                                     for w in self.pos_weight):
            problems.append(f"pos_weight: got {shown(self.pos_weight)}; each weight must be a finite number > 0.")
        problems += threshold_problems(self.threshold, self.labels or self.label_columns)
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
        if self.pos_weight in POS_WEIGHTS and train is not None:
            targets = np.asarray(self._targets(train[:]), dtype=np.float64)
            positives = targets.sum(0)
            # pos_weight = negatives / positives, as in torch's BCEWithLogitsLoss docs; 1 for absent labels.
            ratio = np.where(positives > 0, (len(targets) - positives) / np.maximum(positives, 1), 1.0)
            if self.pos_weight == "sqrt":
                ratio = np.clip(np.sqrt(ratio), 1.0, SQRT_POS_WEIGHT_CAP)
            self.fitted["pos_weight"] = [float(w) for w in ratio]
        elif isinstance(self.pos_weight, list):
            self.fitted["pos_weight"] = [float(w) for w in self.pos_weight]
        problems = unknown_threshold_labels(self.threshold, self.label_list)
        if problems:
            raise ConfigError(problems, where=f"MultiLabel(name={self.name!r})")

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

    # ----- decision thresholds -----
    def decision_thresholds(self) -> np.ndarray:
        """The threshold of each label, in head order: the `threshold` setting, or the tuned ones (0.5 untuned)."""
        labels = self.label_list
        if isinstance(self.threshold, dict):
            return np.array([float(self.threshold.get(label, 0.5)) for label in labels])
        if self.threshold == TUNED:
            tuned = self.fitted.get("thresholds")
            if tuned and len(tuned) == len(labels):
                return np.array(tuned, dtype=np.float64)
            return np.full(len(labels), 0.5)
        return np.full(len(labels), float(self.threshold))

    def set_threshold(self, threshold: float | dict[str, float] | str) -> None:
        """Use another `threshold` from now on (evaluate / predict overrides); a mapping names every label to change,
        the others keep their current threshold. Raises ConfigError naming the problem."""
        problems = unknown_threshold_labels(threshold, self.label_list, owner=f"task '{self.name}'")
        if problems:
            raise ConfigError(problems)
        if isinstance(threshold, dict):
            current = dict(zip(self.label_list, self.decision_thresholds().tolist()))
            threshold = {**current, **threshold}
        problems = threshold_problems(threshold, None)
        if problems:
            raise ConfigError(problems, where=f"task '{self.name}'")
        self.threshold = threshold

    def fit_on_predictions(self, predictions: np.ndarray, labels: np.ndarray) -> None:
        """`threshold: tuned`: per-label thresholds that maximise F1 on these eval-split predictions."""
        if self.threshold == TUNED and len(labels):
            self.fitted["thresholds"] = tune_thresholds(sigmoid(predictions.astype(np.float64)), labels.astype(int))

    def predicted(self, predictions: np.ndarray) -> np.ndarray:
        """0/1 label matrix from logits, with the current decision thresholds."""
        return (sigmoid(np.asarray(predictions, dtype=np.float64)) >= self.decision_thresholds()).astype(int)

    def constant_predictions(self, predictions: np.ndarray, labels: np.ndarray) -> bool:
        return all_same(self.predicted(predictions))

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        predicted = self.predicted(predictions)
        labels = labels.astype(int)
        return {
            "micro_f1": float(f1_score(labels, predicted, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
            "exact_match": float((predicted == labels).all(axis=1).mean()),
            "jaccard": jaccard(labels, predicted),
        }

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        probs = sigmoid(np.asarray(logits, dtype=np.float64))
        thresholds = self.decision_thresholds()
        labels = self.label_list
        return [{"labels": [lab for lab, p, t in zip(labels, row, thresholds) if p >= t],
                 "scores": {lab: float(p) for lab, p in zip(labels, row)}} for row in probs]


def threshold_problems(threshold: Any, labels: list[str] | None) -> list[str]:
    """Problems of a `threshold` setting: a number or `{label: number}` in (0, 1), or "tuned"."""
    if isinstance(threshold, str):
        return [] if threshold == TUNED else [f"threshold: got {threshold!r}; give a number between 0 and 1, "
                                               f"{{label: number}}, or '{TUNED}'."]
    values = threshold if isinstance(threshold, dict) else {"": threshold}
    problems = []
    for label, value in values.items():
        where = f"threshold[{label!r}]" if label else "threshold"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: got {shown(value)}; it must be a number between 0 and 1.")
        elif not 0.0 < float(value) < 1.0:
            problems.append(f"{where}: got {value}; it must be between 0 and 1.")
    return problems + unknown_threshold_labels(threshold, labels)


def unknown_threshold_labels(threshold: Any, labels: list[str] | None, owner: str = "this task") -> list[str]:
    """The problem of a `{label: number}` threshold naming labels that `labels` (when known) lacks."""
    if not isinstance(threshold, dict) or not labels:
        return []
    unknown = [k for k in threshold if k not in labels]
    return [f"threshold: labels {unknown} are not labels of {owner}; its labels are {list(labels)}."] if unknown else []


def _f1_per_threshold(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, predicted positives and actual positives, per grid threshold x label."""
    positive = labels == 1
    true_positive = np.empty((len(_GRID), labels.shape[1]), dtype=np.int64)
    predicted_positive = np.empty_like(true_positive)
    for i, t in enumerate(_GRID):  # one threshold at a time: memory of one rows x labels matrix
        predicted = probs >= t
        true_positive[i] = (predicted & positive).sum(0)
        predicted_positive[i] = predicted.sum(0)
    return true_positive, predicted_positive, np.broadcast_to(positive.sum(0), true_positive.shape)


def tune_thresholds(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """Per label, the grid threshold (0.02 .. 0.98) with the best F1 on `labels`; labels with fewer than
    `MIN_TUNING_POSITIVES` positives, and ties, fall back to (or towards) the threshold with the best micro-F1."""
    tp, predicted, actual = _f1_per_threshold(probs, labels)
    micro = 2 * tp.sum(1) / np.maximum(predicted.sum(1) + actual.sum(1), 1)
    best_global = float(_GRID[int(np.argmax(micro))])
    f1 = 2 * tp / np.maximum(predicted + actual, 1)  # grid x labels
    # Among equal F1, the threshold nearest the global one: a flat stretch of the curve says nothing more.
    per_label = _GRID[np.argmax(f1 - 1e-9 * np.abs(_GRID - best_global)[:, None], axis=0)]
    enough = labels.sum(0) >= MIN_TUNING_POSITIVES
    return [float(t) if ok else best_global for t, ok in zip(per_label, enough)]


def jaccard(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Jaccard accuracy (SemEval-2018 Task 1 E-c): mean over rows of |gold & predicted| / |gold | predicted|,
    a row with neither counting 1."""
    union = (labels | predicted).sum(1)
    inter = (labels & predicted).sum(1)
    return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())

"""`multilabel`: any subset of labels per text; binary cross-entropy; micro/macro F1, exact match, Jaccard.

Labels come as one list column (`label: aspects`, each cell a list of label names), as a delimited string
(`label_separator: ","` for cells such as "4,27", with `label_names` when they are indices), or as one 0/1
column per label (`label_columns: [toxic, obscene, ...]`, the column names being the labels).

Decision thresholds: with imbalanced labels a sigmoid head rarely lifts a rare label above 0.5 in a few hundred
steps, so a fixed 0.5 predicts nothing for it (micro/macro F1 0). By default (`threshold: tuned`) each label gets
the threshold that maximises its F1 on the eval split, fitted whenever `MultiTaskTrainer` evaluates the run's own
eval split after training steps (`fit_on_predictions`; never on a test split, nor in `manyheads evaluate`) and
saved in `fitted["thresholds"]`, so `predict`, `serve` and exports use them. A label falls back to the one
threshold that maximises micro-F1 over all labels when it has fewer than 5 positives in the eval split, or when
its own threshold would lower that micro-F1 (a rare label whose F1 peaks at the bottom of the grid, predicted on
nearly every row); see `fit_on_predictions`. Without an eval split, or before the first evaluation, the
thresholds are 0.5. The eval metrics of those evaluations are computed with the thresholds just fitted on the
same rows, so they are optimistic; judge a model on a split that chose nothing (`manyheads evaluate --split
test`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from ..errors import ConfigError, shown
from .base import SequenceTask, all_same, higher_is_better, main_metric_of, sigmoid, unknown_label_message
from .capabilities import StockLayout
from .labels import LabelReader, sorted_labels

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

    METRICS = {"micro_f1": True, "macro_f1": True, "exact_match": True, "jaccard": True}

    @property
    def reader(self) -> LabelReader:
        return LabelReader(self.label_names, self.label_separator)

    def stock_layout(self, head: nn.Module) -> StockLayout:
        return dataclasses.replace(super().stock_layout(head), problem_type="multi_label_classification")

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

    def check_data(self, split: str, dataset: Dataset, source: str, labelled: bool = True) -> list[str]:
        problems = super().check_data(split, dataset, source, labelled)
        if not labelled:
            return problems
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
                return problems + [f"{where}: {unknown_label_message(self, 'label', unknown[0])}"]
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
        """`threshold: tuned`: per-label thresholds fitted on these eval-split predictions.

        The rule, per label, on the grid 0.02 .. 0.98:
        1. its own threshold is the one with the best F1 for that label;
        2. the global threshold is the one with the best micro-F1 over all labels;
        3. the label keeps its own threshold only if it has at least `MIN_TUNING_POSITIVES` (5) positives here and,
           swapped in for the global threshold with every other label at the global one, it does not lower the
           micro-F1 over all labels; otherwise it gets the global threshold.

        Step 3 is there because a label's own F1 is a poor guide for a rare label the head has not learnt: its F1
        often peaks at the bottom of the grid (predicting it on nearly every row), which floods every row with a
        false positive and drops micro-F1 below a flat 0.5 (issue 29: a label at 0.02 predicted on 2,121 test rows
        where 16 had it). Swaps that each keep micro-F1 also keep it together (each one's gain is linear in its
        true and predicted positives), so the tuned thresholds never score a lower micro-F1 on the eval split
        than the best single threshold, 0.5 included. With `main_metric: macro_f1`, a mean of per-label F1s that
        one label's false positives cannot hurt elsewhere, step 3 only asks for the 5 positives.
        """
        if self.threshold == TUNED and len(labels):
            self.fitted["thresholds"] = tune_thresholds(sigmoid(predictions.astype(np.float64)), labels.astype(int),
                                                        keep_micro_f1=main_metric_of(self) != "macro_f1")

    def predicted(self, predictions: np.ndarray) -> np.ndarray:
        """0/1 label matrix from logits, with the current decision thresholds."""
        return (sigmoid(np.asarray(predictions, dtype=np.float64)) >= self.decision_thresholds()).astype(int)

    def constant_predictions(self, predictions: np.ndarray, labels: np.ndarray) -> bool:
        return all_same(self.predicted(predictions))

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        return label_set_scores(np.asarray(labels).astype(int), self.predicted(predictions))

    def constant_baseline(self, labels: np.ndarray) -> tuple[float, str] | None:
        """The main metric of the best constant answer on these 0/1 `labels` (rows x labels), and that answer.

        The answers tried: the k most frequent labels on every row, for each k from 0 (no label) to all of them
        (k = 1 is "always the most frequent label"; the labels carried by most rows are one of these), and the
        most frequent label set. That is the best constant for micro-F1, macro-F1 and exact match; for Jaccard the
        best of these. None when there are no rows.
        """
        labels = np.asarray(labels).astype(int)
        if labels.ndim != 2 or not len(labels) or labels.shape[1] != len(self.label_list):
            return None
        names = self.label_list
        by_frequency = np.argsort(-labels.sum(0), kind="stable")
        answers = [by_frequency[:k] for k in range(len(names) + 1)]
        sets, counts = np.unique(labels, axis=0, return_counts=True)
        answers.append(np.flatnonzero(sets[int(np.argmax(counts))]))
        metric = main_metric_of(self)
        greater = higher_is_better(self, metric)
        best: tuple[float, str] | None = None
        for answer in answers:
            predicted = np.zeros_like(labels)
            predicted[:, answer] = 1
            score = label_set_scores(labels, predicted)[metric]
            if best is None or (score > best[0] if greater else score < best[0]):
                best = (score, f"always the label set {[names[i] for i in sorted(answer)]}")
        return best

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


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, keep_micro_f1: bool = True) -> list[float]:
    """Per label, the grid threshold (0.02 .. 0.98) with the best F1 on `labels`; labels with fewer than
    `MIN_TUNING_POSITIVES` positives, ties, and (with `keep_micro_f1`) labels whose own threshold would lower the
    micro-F1 over all labels fall back to (or towards) the threshold with the best micro-F1 (the rule:
    `MultiLabel.fit_on_predictions`)."""
    tp, predicted, actual = _f1_per_threshold(probs, labels)
    micro = 2 * tp.sum(1) / np.maximum(predicted.sum(1) + actual.sum(1), 1)
    best = int(np.argmax(micro))
    best_global = float(_GRID[best])
    f1 = 2 * tp / np.maximum(predicted + actual, 1)  # grid x labels
    # Among equal F1, the threshold nearest the global one: a flat stretch of the curve says nothing more.
    own = np.argmax(f1 - 1e-9 * np.abs(_GRID - best_global)[:, None], axis=0)
    keep = labels.sum(0) >= MIN_TUNING_POSITIVES
    if keep_micro_f1:
        # Micro-F1 = 2 TP / (predicted + actual) with label l alone at its own threshold; compared as integer
        # cross-products, so a swap that changes nothing (own == global) is never refused by rounding.
        columns = np.arange(labels.shape[1])
        swapped_tp = tp[best].sum() - tp[best] + tp[own, columns]
        swapped_total = predicted[best].sum() - predicted[best] + predicted[own, columns] + actual[best].sum()
        global_total = predicted[best].sum() + actual[best].sum()
        keep &= swapped_tp * global_total >= tp[best].sum() * swapped_total
    return [float(_GRID[i]) if ok else best_global for i, ok in zip(own, keep)]


def label_set_scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """The multilabel metrics of a 0/1 `predicted` matrix against 0/1 `labels` (rows x labels)."""
    return {
        "micro_f1": float(f1_score(labels, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "exact_match": float((predicted == labels).all(axis=1).mean()),
        "jaccard": jaccard(labels, predicted),
    }


def jaccard(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Jaccard accuracy (SemEval-2018 Task 1 E-c): mean over rows of |gold & predicted| / |gold | predicted|,
    a row with neither counting 1."""
    union = (labels | predicted).sum(1)
    inter = (labels & predicted).sum(1)
    return float(np.where(union > 0, inter / np.maximum(union, 1), 1.0).mean())

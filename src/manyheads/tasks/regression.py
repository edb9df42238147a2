"""`regression`: one number per text or text pair; mean squared error; Pearson and Spearman."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import nn

from ..errors import shown
from .base import SequenceTask
from .capabilities import StockLayout

if TYPE_CHECKING:
    from datasets import Dataset


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(kw_only=True)
class Regression(SequenceTask):
    """One number per text or pair.

    Args:
        normalize: standardise targets with the training split's mean and std (fitted), so a 1-5 rating does
            not start with a loss 10x the other tasks' and swamp the shared encoder. Predictions and metrics
            are always in the target's own units.
        (and every `Task` / `SequenceTask` argument)
    """

    normalize: bool = True

    METRICS = {"pearson": True, "spearman": True, "mse": False}

    def check(self) -> list[str]:
        problems = super().check()
        if not self.label:
            problems.append("label: a regression task needs the name of its target column.")
        if self.labels:
            problems.append("labels: a regression task has no label list; remove 'labels'.")
        return problems

    def check_data(self, split: str, dataset: Dataset, source: str, labelled: bool = True) -> list[str]:
        problems = super().check_data(split, dataset, source, labelled)
        if not labelled:
            return problems
        for row, value in enumerate(dataset[self.label]):
            number = _as_float(value)
            if number is None or not math.isfinite(number):
                what = "not a number" if number is None else "not finite"
                return problems + [f"{source}: data row {row + 1}, column '{self.label}': regression target "
                                   f"{shown(value)} is {what}. Fix or drop that row."]
        return problems

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def scale(self) -> tuple[float, float]:
        """(mean, std) of the target scaling: fitted, else the identity."""
        return float(self.fitted.get("mean", 0.0)), float(self.fitted.get("std", 1.0))

    def fit(self, train: Dataset | None) -> None:
        if self.normalize and train is not None:
            values = np.asarray(train[self.label], dtype=np.float64)
            self.fitted["mean"] = float(values.mean())
            self.fitted["std"] = float(values.std()) or 1.0

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        mean, std = self.scale
        return [(float(v) - mean) / std for v in batch[self.label]]

    def stock_layout(self, head: nn.Module) -> StockLayout:
        """A stock regressor has no target scaling: it is folded into the output layer (y = std * (Wx + b) +
        mean), and the export is checked against our outputs in target units."""
        mean, std = self.scale

        def fold(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            state = dict(state)
            state["classifier.weight"] = state["classifier.weight"] * std
            state["classifier.bias"] = state["classifier.bias"] * std + mean
            return state

        return dataclasses.replace(super().stock_layout(head), problem_type="regression", head_state=fold,
                                   our_logits=lambda logits: logits * std + mean)

    def to_target_scale(self, outputs: np.ndarray) -> np.ndarray:
        """Head outputs (or encoded labels) back in the units of the target column."""
        mean, std = self.scale
        return np.asarray(outputs).astype(np.float64) * std + mean

    def metric_inputs(self, predictions: Any, labels: Any) -> tuple[Any, Any]:
        return self.to_target_scale(np.asarray(predictions).reshape(-1)), self.to_target_scale(
            np.asarray(labels).reshape(-1))

    def collate_labels(self, labels: list, sequence_length: int) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.float32)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(logits.float().squeeze(-1), labels.float())

    def constant_predictions(self, predictions: np.ndarray, labels: np.ndarray) -> bool:
        predicted, labels = self.metric_inputs(predictions, labels)
        # "No spread": a thousandth of the targets' own spread (a head that outputs their mean to 3 digits).
        return len(predicted) > 1 and float(np.std(predicted)) <= 1e-3 * max(float(np.std(labels)), 1e-12)

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        predicted, labels = self.metric_inputs(predictions, labels)
        # A constant prediction has no correlation; report 0 rather than NaN so averages stay defined.
        constant = np.ptp(predicted) == 0 or np.ptp(labels) == 0
        return {
            "pearson": 0.0 if constant else float(pearsonr(predicted, labels)[0]),
            "spearman": 0.0 if constant else float(spearmanr(predicted, labels)[0]),
            "mse": float(np.mean((predicted - labels) ** 2)),
        }

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        return [{"score": float(v)} for v in self.to_target_scale(np.asarray(logits).reshape(-1))]

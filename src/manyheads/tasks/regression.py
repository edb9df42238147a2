"""`regression`: one number per text or text pair; mean squared error; Pearson and Spearman."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import nn

from .base import SequenceOptions, Task

if TYPE_CHECKING:
    from datasets import Dataset

    from ..config import TaskConfig


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class RegressionOptions(SequenceOptions):
    # Standardise targets with the training mean/std: the head learns values near 0 with unit spread, so
    # a 1-5 rating does not start with a loss 10x the other tasks' and swamp the shared encoder.
    normalize: bool = True
    mean: float = 0.0
    std: float = 1.0


class RegressionTask(Task):
    type_name = "regression"
    Options = RegressionOptions
    METRICS = {"pearson": True, "spearman": True, "mse": False}
    DEFAULT_MAIN_METRIC = "pearson"
    stock_problem_type = "regression"

    @classmethod
    def check_config(cls, config: TaskConfig) -> list[str]:
        problems = super().check_config(config)
        if not config.label:
            problems.append("label: a regression task needs the name of its target column.")
        if config.labels:
            problems.append("labels: a regression task has no label list; remove 'labels'.")
        return problems

    def check_data(self, split: str, dataset: Dataset, source: str) -> list[str]:
        problems = super().check_data(split, dataset, source)
        for row, value in enumerate(dataset[self.config.label]):
            number = _as_float(value)
            if number is None or not math.isfinite(number):
                what = "not a number" if number is None else "not finite"
                problems.append(
                    f"{source}: data row {row + 1}, column '{self.config.label}': regression target {value!r} "
                    f"is {what}. Fix or drop that row."
                )
                break
        return problems

    @property
    def num_outputs(self) -> int:
        return 1

    def setup_labels(self, train: Dataset | None) -> None:
        if self.options.normalize and train is not None:
            values = np.asarray(train[self.config.label], dtype=np.float64)
            self.options.mean = float(values.mean())
            self.options.std = float(values.std()) or 1.0

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        return [(float(v) - self.options.mean) / self.options.std for v in batch[self.config.label]]

    def export_head_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # A stock regressor has no target scaling: fold it into the output layer (y = std * (Wx + b) + mean).
        state = dict(state)
        state["classifier.weight"] = state["classifier.weight"] * self.options.std
        state["classifier.bias"] = state["classifier.bias"] * self.options.std + self.options.mean
        return state

    def stock_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.options.std + self.options.mean

    def to_target_scale(self, outputs: np.ndarray) -> np.ndarray:
        """Head outputs (or encoded labels) back in the units of the target column."""
        return outputs.astype(np.float64) * self.options.std + self.options.mean


    def collate_labels(self, labels: list, sequence_length: int) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.float32)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(logits.float().squeeze(-1), labels.float())

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        predicted = self.to_target_scale(predictions.reshape(-1))
        labels = self.to_target_scale(labels.reshape(-1))
        # A constant prediction has no correlation; report 0 rather than NaN so averages stay defined.
        constant = np.ptp(predicted) == 0 or np.ptp(labels) == 0
        return {
            "pearson": 0.0 if constant else float(pearsonr(predicted, labels)[0]),
            "spearman": 0.0 if constant else float(spearmanr(predicted, labels)[0]),
            "mse": float(np.mean((predicted - labels) ** 2)),
        }

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        return [{"score": float(v)} for v in self.to_target_scale(np.asarray(logits).reshape(-1))]

"""Static weighting: fixed per-task weights, from each task's `weight` (kwargs `weights`: deprecated)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import LossWeighting


class StaticWeighting(LossWeighting):
    """Fixed weights.

    Args:
        tasks: task names.
        weights: weight per task name; tasks not listed get 1.0.
    """

    def __init__(self, tasks: Sequence[str], weights: dict[str, float] | None = None):
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"weights name unknown tasks {unknown}; tasks are {self.tasks}")
        bad = {k: v for k, v in weights.items() if not float(v) >= 0}
        if bad:
            raise ValueError(f"weights must be >= 0, got {bad}")
        self.register_buffer("fixed", torch.tensor([float(weights.get(t, 1.0)) for t in self.tasks]))

    def current(self) -> torch.Tensor:
        return self.fixed

"""Uncertainty weighting, Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics" (CVPR).

Each task has a learnable log-variance s; its loss enters as 0.5 * exp(-s) * L + 0.5 * s, so a task whose loss
stays large (noisy) is down-weighted, and the 0.5 * s term keeps s from growing without bound. The gradient with
respect to s is 0.5 - 0.5 * exp(-s) * L: s settles where exp(s) equals the task's loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import LossWeighting


class UncertaintyWeighting(LossWeighting):
    """Learnable log-variances, one per task, trained by the Trainer's optimizer.

    Args:
        tasks: task names.
        lr: learning rate of the log-variances (their own optimizer group: the encoder's typical 2e-5 would
            leave them at their initial value).
        init: initial log-variance.
    """

    def __init__(self, tasks: Sequence[str], lr: float = 1e-2, init: float = 0.0):
        super().__init__(tasks)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.param_lr = float(lr)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(init)))

    def current(self) -> torch.Tensor:
        return 0.5 * torch.exp(-self.log_vars)

    def forward(self, task: str, loss: torch.Tensor) -> torch.Tensor:
        s = self.log_vars[self.index[task]]
        return 0.5 * torch.exp(-s).to(loss.dtype) * loss + 0.5 * s.to(loss.dtype)

"""Random loss weighting, Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning" (TMLR).

Each optimizer step draws weights softmax(z), z ~ N(0, I), scaled by the number of tasks so that the average
weight is 1 as with equal weighting (one-task micro-batches would otherwise see their learning rate divided by
the task count). The draw is a pure function of (seed, step): resume and DDP ranks agree without saved state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import LossWeighting


class RandomWeighting(LossWeighting):
    """Weights resampled every optimizer step.

    Args:
        tasks: task names.
        seed: base seed of the draws.
    """

    def __init__(self, tasks: Sequence[str], seed: int = 0):
        super().__init__(tasks)
        self.seed = int(seed)

    def current(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        z = torch.randn(len(self.tasks), generator=generator)
        return len(self.tasks) * torch.softmax(z, dim=0)

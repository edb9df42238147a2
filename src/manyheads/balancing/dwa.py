"""Dynamic Weight Average, Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with Attention" (CVPR).

w_i = K * softmax(r_i / T), with r_i = L_i(t-1) / L_i(t-2) the ratio of task i's mean loss over the last two
periods: a task whose loss falls slowly gets more weight. The paper's period is an epoch; with one-task
micro-batches the period is `period` optimizer steps, and L_i is the mean of task i's micro-batch losses in the
period summed over ranks. Weights are 1 until two periods have passed; a task unseen in a period keeps ratio 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import LossWeighting, Reduce, single_process


class DynamicWeightAverage(LossWeighting):
    """Weights from the rate of decrease of each task's loss.

    Args:
        tasks: task names.
        period: optimizer steps per averaging period.
        temperature: T of the softmax (larger = closer to equal weights).
    """

    def __init__(self, tasks: Sequence[str], period: int = 50, temperature: float = 2.0):
        super().__init__(tasks)
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.period, self.temperature = int(period), float(temperature)
        k = len(self.tasks)
        # Running sums of the current period, and the mean loss of the last two finished periods.
        self.register_buffer("sums", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("history", torch.full((2, k), float("nan"), dtype=torch.float64))
        self.register_buffer("_weights", torch.ones(k))

    def current(self) -> torch.Tensor:
        return self._weights

    def observe(self, task: str, loss: torch.Tensor) -> None:
        i = self.index[task]
        self.sums[i] += loss.detach().double().to(self.sums.device)
        self.counts[i] += 1

    def step_end(self, reduce: Reduce = single_process) -> None:
        super().step_end(reduce)
        if self.step % self.period:
            return
        sums, counts = reduce(self.sums.clone()), reduce(self.counts.clone())
        means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
        self.history = torch.stack([self.history[1], means])
        self.sums.zero_()
        self.counts.zero_()
        self._weights = self.weights_from_history(self.history, self.temperature).to(self._weights)

    @staticmethod
    def weights_from_history(history: torch.Tensor, temperature: float) -> torch.Tensor:
        """K * softmax(r / T) with r = L(t-1) / L(t-2); ratio 1 where a period lacks the task."""
        ratio = history[1] / history[0]
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        return (len(ratio) * torch.softmax(ratio / temperature, dim=0)).float()

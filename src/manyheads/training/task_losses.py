"""Per-task training losses between two logging steps: `loss_<task>` and `share_<task>` in the trainer's logs."""

from __future__ import annotations

from collections.abc import Callable

import torch


class TaskLossWindow:
    """Sums of each task's unweighted micro-batch losses since the last log, and how many there were."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, task: str, value: torch.Tensor) -> None:
        self.sums[task] = self.sums.get(task, 0.0) + value
        self.counts[task] = self.counts.get(task, 0) + 1

    def __bool__(self) -> bool:
        return bool(self.counts)

    def pop(self, device: torch.device, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """Mean loss per task (summed over ranks before dividing) and each task's share of the window's
        micro-batches (what the sampler actually served); the window starts again."""
        sums = torch.stack([torch.as_tensor(self.sums.get(n, 0.0), device=device).float() for n in self.names])
        counts = torch.tensor([self.counts.get(n, 0) for n in self.names], device=device, dtype=torch.float)
        sums, counts = reduce_sum(sums), reduce_sum(counts)
        self.sums, self.counts = {}, {}
        out = {f"loss_{n}": round(float(s / c), 4) for n, s, c in zip(self.names, sums.tolist(), counts.tolist()) if c}
        total = float(counts.sum())
        out.update({f"share_{n}": round(float(c) / total, 4) for n, c in zip(self.names, counts.tolist())})
        return out

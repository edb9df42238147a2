"""The task-group step of gradient aggregation.

Each micro-batch holds one sub-batch per task of the group. For every task, the loss is differentiated with
respect to the shared encoder (kept as one row of the task-gradient matrix J) and that task's head (added to
its `.grad` as usual). Rows accumulate over gradient-accumulation micro-batches; at the last micro-batch of the
optimizer step, J is averaged over ranks (every rank then aggregates the same global per-task gradients, which
is what a single process with the global batch would do), the aggregator combines it, and the result becomes
the encoder's `.grad`. Trainer then clips and steps, so clipping sees the aggregated gradient.

Forward passes go through the unwrapped module: DDP's own all-reduce would average the *sum* of the task
gradients, which is the wrong object to aggregate, so rows and head gradients are all-reduced here instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from ..gradients import norms_and_cosines


class TaskGroupStep:
    """Per-task gradient rows on the shared parameters and their aggregation.

    Args:
        model: the (unwrapped) `MultiTaskModel`.
        aggregator: a torchjd `WeightedAggregator`.
        seed: base seed of the aggregator's random draws (if it makes any).
    """

    def __init__(self, model: nn.Module, aggregator: Any, seed: int = 0):
        self.tasks = list(model.tasks)
        self.seed = int(seed)
        self.aggregator = aggregator
        # Shared: the encoder's own weights. A task's head and adapter (soft sharing) only ever get that task's
        # gradient, so they are left out of the aggregation like heads.
        self.shared = [p for _, p in model.shared_parameters()]
        if not self.shared:
            raise ValueError("gradient aggregation needs trainable shared parameters; the encoder is frozen")
        self.heads = {name: [p for _, p in model.task_parameters(name)] for name in self.tasks}
        self.numels = [p.numel() for p in self.shared]
        self.rows: torch.Tensor | None = None
        self.seen = torch.zeros(len(self.tasks), dtype=torch.bool)
        self._sums: dict[str, list[float]] = {}  # statistic -> [sum, count] since the last log

    def backward(self, model: nn.Module, groups: dict[str, dict[str, Any]], scale: float,
                 context: Callable[[], AbstractContextManager],
                 adjust: Callable[[str, torch.Tensor, dict[str, Any]], torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
        """Forward and differentiate each task's sub-batch; returns each task's (unscaled, detached) loss.

        `adjust(task, loss, batch)` rescales a loss before it is differentiated (generation tasks: a token mean
        over the optimizer step instead of a mean of sub-batch means)."""
        if self.rows is None:
            device = self.shared[0].device
            self.rows = torch.zeros(len(self.tasks), sum(self.numels), device=device, dtype=torch.float32)
        losses = {}
        for name, batch in groups.items():
            with context():
                loss = model(**batch).loss
            losses[name] = loss.detach()
            if adjust is not None:
                loss = adjust(name, loss, batch)
            params = self.shared + self.heads[name]
            grads = torch.autograd.grad(loss * scale, params, allow_unused=True)
            i = self.tasks.index(name)
            self.rows[i] += self._flatten(grads[: len(self.shared)])
            for p, g in zip(self.heads[name], grads[len(self.shared):]):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
            self.seen[i] = True
        return losses

    def _flatten(self, grads: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        return torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, self.shared)
        ])

    def step(self, reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
             step: int = 0) -> dict[str, float]:
        """Aggregate the accumulated rows into the shared parameters' `.grad`; returns this step's statistics.

        `reduce_mean` averages a tensor over ranks (None in a single process); `step` is the optimizer step.
        """
        if self.rows is None or not self.seen.any():
            return {}
        rows, seen = self.rows, self.seen.clone()
        if reduce_mean is not None:
            rows = reduce_mean(rows)
            seen = reduce_mean(seen.float().to(rows.device)).cpu() > 0
            self._reduce_heads(reduce_mean)
        names = [n for n, s in zip(self.tasks, seen.tolist()) if s]
        # Boolean indexing copies the K x n matrix; skip it in the usual case where every task was seen.
        matrix = rows if bool(seen.all()) else rows[seen.to(rows.device)]
        gram = matrix @ matrix.T  # computed once, for the aggregator and for the logged norms and cosines
        # Some aggregators draw random numbers (PCGrad's task order): from a generator keyed on (seed, step), so
        # every rank computes the same weights and a resumed run the same as an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + step)
            if hasattr(self.aggregator, "gramian_weighting"):
                weights = self.aggregator.gramian_weighting(gram)
            else:
                weights = self.aggregator.weighting(matrix)
        weights = weights.to(matrix.dtype)
        combined = weights @ matrix
        for p, chunk in zip(self.shared, torch.split(combined, self.numels)):
            p.grad = chunk.view_as(p).to(p.dtype)
        stats = self._statistics(names, gram, weights)
        self.rows.zero_()
        self.seen.zero_()
        return stats

    def _reduce_heads(self, reduce_mean: Callable[[torch.Tensor], torch.Tensor]) -> None:
        # Every rank computed the same tasks, so each head's gradient exists on every rank (or on none).
        params = [p for name in self.tasks for p in self.heads[name] if p.grad is not None]
        if not params:
            return
        flat = reduce_mean(torch.cat([p.grad.reshape(-1) for p in params]))
        for p, chunk in zip(params, torch.split(flat, [p.numel() for p in params])):
            p.grad = chunk.view_as(p).to(p.dtype)

    def _statistics(self, names: list[str], gram: torch.Tensor, weights: torch.Tensor) -> dict[str, float]:
        norms, cosine = norms_and_cosines(gram, zero="zero")
        stats = {f"weight_{n}": float(w) for n, w in zip(names, weights.tolist())}
        stats.update({f"grad_norm_{n}": float(v) for n, v in zip(names, norms.tolist())})
        for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
            stats[f"grad_cos_{a}_{b}"] = float(cosine[i, j])
        for key, value in stats.items():
            total = self._sums.setdefault(key, [0.0, 0])
            total[0] += value
            total[1] += 1
        return stats

    def discard(self) -> None:
        """Forget this step's rows (a skipped step)."""
        if self.rows is not None:
            self.rows.zero_()
        self.seen.zero_()

    def pop_statistics(self) -> dict[str, float]:
        """Mean of each statistic over the optimizer steps since the last call (for `log`)."""
        out = {k: round(total / count, 6) for k, (total, count) in self._sums.items()}
        self._sums = {}
        return out

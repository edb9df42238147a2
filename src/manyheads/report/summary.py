"""Summaries of a run with many tasks: each task's main metric ranked worst first, conflict orderings and pairs.

Above `MANY_TASKS` tasks the report stops drawing one line, panel or legend entry per task and shows these
summaries instead (see `report.many`); the numbers here are plain Python, no matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import RunData

MANY_TASKS = 8  # more tasks than this: summary figures, worst-k tasks and sorted tables
WORST_K = 6  # tasks drawn and named one by one in the summaries
TOP_PAIRS = 10  # most conflicting task pairs listed beside the heatmap


def many_tasks(data: RunData) -> bool:
    return len(data.tasks) > MANY_TASKS


@dataclass
class TaskRank:
    """One task's main metric over the evaluations during training (`first`, `last`, their steps), its change
    signed so that positive is an improvement, the final evaluation's value, and its last training loss."""

    task: str
    metric: str | None
    higher: bool
    first: float | None = None
    last: float | None = None
    change: float | None = None
    best: float | None = None
    final: float | None = None
    train_loss: float | None = None

    def key(self) -> tuple[float, float, str]:
        """Worst first: the smallest improvement since the first evaluation, then the worst last value; a task
        with no evaluation at all goes last."""
        if self.last is None:
            return (math.inf, math.inf, self.task)
        signed_last = self.last if self.higher else -self.last
        return (self.change if self.change is not None else 0.0, signed_last, self.task)


def ranked_tasks(data: RunData) -> list[TaskRank]:
    """Every task with its main metric, worst first (see `TaskRank.key`)."""
    entries, train = data.eval_logs(), data.train_logs()
    ranks = []
    for task in data.tasks:
        metric = data.main_metric(task)
        higher = data.greater_is_better(task, metric) if metric else True
        rank = TaskRank(task, metric, higher)
        if metric:
            _, values = data.series(entries, f"eval_{task}_{metric}")
            values = [v for v in values if math.isfinite(v)]
            if values:
                sign = 1.0 if higher else -1.0
                rank.first, rank.last = values[0], values[-1]
                rank.change = sign * (values[-1] - values[0])
                rank.best = (max if higher else min)(values)
            final = (data.final_eval or {}).get(f"eval_{task}_{metric}")
            rank.final = float(final) if isinstance(final, (int, float)) else None
            if rank.last is None and rank.final is not None:
                rank.first = rank.last = rank.final
        _, losses = data.series(train, f"loss_{task}")
        rank.train_loss = losses[-1] if losses else None
        ranks.append(rank)
    return sorted(ranks, key=TaskRank.key)


def rank_rows(ranks: list[TaskRank], stalled: set[str]) -> list[dict[str, Any]]:
    """The ranked tasks as table rows (for `report.html.table`)."""
    rows = []
    for i, r in enumerate(ranks, 1):
        row: dict[str, Any] = {"rank": i, "task": r.task,
                               "main metric": f"{r.metric} ({'higher' if r.higher else 'lower'} is better)"
                               if r.metric else "(none logged)",
                               "first": r.first, "last": r.last, "change": r.change, "best": r.best}
        if r.final is not None:
            row["after training"] = r.final
        row["last train loss"] = r.train_loss
        row["stalled"] = "yes" if r.task in stalled else ""
        rows.append(row)
    return rows


def cosine_matrix(record: dict[str, Any]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in record["cosine"]], dtype=float)


def conflict_order(matrix: np.ndarray) -> list[int]:
    """Rows in an order that puts tasks with similar gradients side by side: average-linkage clustering on
    1 - cosine (NaN as 0, no similarity); the identity for fewer than three tasks."""
    n = len(matrix)
    if n < 3:
        return list(range(n))
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    distance = 1.0 - np.nan_to_num(matrix, nan=0.0)
    distance = np.clip((distance + distance.T) / 2, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    return [int(i) for i in leaves_list(linkage(squareform(distance, checks=False), method="average"))]


def conflicting_pairs(record: dict[str, Any], k: int = TOP_PAIRS) -> list[dict[str, Any]]:
    """The `k` task pairs with the most negative cosine at one measurement (negative ones only)."""
    tasks, matrix = record["tasks"], cosine_matrix(record)
    upper = np.triu_indices(len(tasks), 1)
    values = matrix[upper]
    order = [i for i in np.argsort(np.nan_to_num(values, nan=np.inf)) if values[i] < 0][:k]
    return [{"task a": tasks[upper[0][i]], "task b": tasks[upper[1][i]], "cosine": float(values[i])} for i in order]


def mean_cosine(record: dict[str, Any]) -> dict[str, float | None]:
    """Each task's mean cosine with the other tasks (NaNs left out)."""
    matrix = cosine_matrix(record)
    np.fill_diagonal(matrix, np.nan)
    out: dict[str, float | None] = {}
    for task, row in zip(record["tasks"], matrix):
        finite = row[np.isfinite(row)]
        out[task] = float(finite.mean()) if len(finite) else None
    return out

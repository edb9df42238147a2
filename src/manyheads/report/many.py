"""The report's figures for a run with many tasks (more than `summary.MANY_TASKS`): distributions across tasks
(median and inter-quartile band) with the worst tasks drawn and named one by one, small multiples of the worst
tasks only, and a clustered conflict heatmap; never one legend entry or panel per task.

Same contract as `report.figures`: each `draw_*` returns a `Figure` or the reason there is nothing to draw.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from .data import RunData
from .figures import Figure, _matplotlib, _matplotlib_cmap, _save
from .figures import draw_relative_update as _draw_relative_update
from .summary import WORST_K, conflict_order, conflicting_pairs, cosine_matrix, ranked_tasks

LABELLED_TICKS = 80  # heatmap tick labels up to this many tasks (the pairs table names them beyond)


def _spread(data: RunData, entries: list[dict[str, Any]], keys: list[str]) -> tuple[list[int], ...]:
    """Per step (where at least one key has a value): median, 25th and 75th percentile and count across `keys`."""
    by_step: dict[int, list[float]] = {}
    for key in keys:
        for step, value in zip(*data.series(entries, key)):
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    quantiles = [np.percentile(by_step[s], [50, 25, 75]) for s in steps]
    return (steps, [q[0] for q in quantiles], [q[1] for q in quantiles], [q[2] for q in quantiles],
            [len(by_step[s]) for s in steps])


def _summary_axes(ax: Any, data: RunData, entries: list[dict[str, Any]], keys: dict[str, str], what: str) -> None:
    """Median and IQR band of `keys` (task -> log key) across tasks, plus the worst tasks' own lines."""
    steps, median, low, high, counts = _spread(data, entries, list(keys.values()))
    if steps:
        ax.fill_between(steps, low, high, color="tab:blue", alpha=0.2, label=f"25-75 % of tasks ({what})")
        ax.plot(steps, median, color="tab:blue", linewidth=2, label=f"median over tasks (≤{max(counts)} a step)")
    worst = [r.task for r in ranked_tasks(data) if r.task in keys][:WORST_K]
    for task in worst:
        s, v = data.series(entries, keys[task])
        if s:
            ax.plot(s, v, marker="o", markersize=3, linewidth=1, label=task)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title=f"worst {len(worst)} of {len(keys)} tasks" if worst else None, title_fontsize=7)


def _figure(width: float, height: float) -> Any:
    figure_cls, canvas_cls = _matplotlib()
    figure = figure_cls(figsize=(width, height), dpi=100, layout="constrained")
    canvas_cls(figure)
    return figure


def draw_train_loss(data: RunData, folder: Path) -> Figure | str:
    entries = data.train_logs()
    if not entries:
        return "No training log entries (no 'loss' key in the log history)."
    figure = _figure(9, 4.5)
    ax = figure.subplots()
    steps, values = data.series(entries, "loss")
    ax.plot(steps, values, color="0.4", linewidth=1.5, linestyle="--", label="loss (weighted, all tasks)")
    keys = {t: f"loss_{t}" for t in data.tasks if data.series(entries, f"loss_{t}")[0]}
    _summary_axes(ax, data, entries, keys, "unweighted loss")
    ax.set(xlabel="optimizer step", ylabel="training loss (unweighted, per task)",
           title=f"Training loss across {len(data.tasks)} tasks")
    return Figure(_save(figure, folder, "train_loss.png"), "Training loss",
                  f"Band: the middle half of the {len(keys)} tasks' `loss_<task>` at each logging step (tasks with a "
                  "micro-batch in that window); line: their median. Coloured: the worst tasks by their main "
                  "evaluation metric (the first rows of the table above).")


def draw_eval_metrics(data: RunData, folder: Path) -> Figure | str:
    entries = data.eval_logs()
    metrics = {t: m for t, m in data.task_metrics().items() if m}
    if not entries or not metrics:
        return "No evaluation during training (set eval_strategy: steps to see metrics over time)."
    worst = [r.task for r in ranked_tasks(data) if r.task in metrics][:WORST_K]
    cols = 3
    rows = math.ceil(len(worst) / cols)
    figure = _figure(4.2 * cols, 3.6 + 3.0 * rows)
    grid = figure.add_gridspec(1 + rows, cols, height_ratios=[1.3] + [1] * rows)
    top = figure.add_subplot(grid[0, :])
    keys = {t: f"eval_{t}_{data.main_metric(t)}" for t in metrics if data.main_metric(t)}
    steps, values = data.series(entries, "eval_average")
    if steps:
        top.plot(steps, values, color="black", linestyle="--", linewidth=1.5, label="eval_average")
    _summary_axes(top, data, entries, keys, "main metric")
    top.set(title=f"Main metric of each task, {len(keys)} tasks", xlabel="optimizer step")
    for i, task in enumerate(worst):
        ax = figure.add_subplot(grid[1 + i // cols, i % cols])
        for metric in metrics[task]:
            s, v = data.series(entries, f"eval_{task}_{metric}")
            if s:
                ax.plot(s, v, marker="o", markersize=3, label=metric)
        ax.set(title=f"#{i + 1} worst: {task}", xlabel="optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return Figure(_save(figure, folder, "eval_metrics.png"), "Evaluation metrics across tasks",
                  "Top: each task's main metric (the one in `eval_average`) at each evaluation: the middle half of "
                  "the tasks (band), their median, `eval_average` (dashed) and the worst tasks. Below: every metric "
                  f"of the {len(worst)} worst tasks (smallest improvement since the first evaluation, then the worst "
                  "last value). The table above ranks every task the same way.")


def draw_weights_and_sampling(data: RunData, folder: Path) -> Figure | str:
    entries = data.train_logs()
    weights = {t: f"weight_{t}" for t in data.tasks if data.series(entries, f"weight_{t}")[0]}
    shares = {t: data.series(entries, f"share_{t}")[1] for t in data.tasks}
    shares = {t: float(np.mean(v)) for t, v in shares.items() if v}
    plan = {row["task"]: row["probability"] for row in (data.info or {}).get("plan", [])}
    if not weights and not shares and not plan:
        return "No task weights (`weight_<task>`), sampling shares or sampling plan were logged."
    figure = _figure(11, 4)
    left, right = figure.subplots(1, 2)
    if weights:
        steps, median, low, high, _ = _spread(data, entries, list(weights.values()))
        left.fill_between(steps, low, high, alpha=0.2, label="25-75 % of tasks")
        left.plot(steps, median, linewidth=2, label="median")
        left.legend(fontsize=7)
    left.set(title=f"Loss weight across {len(weights)} tasks", xlabel="optimizer step", ylabel="weight")
    names = sorted(plan or shares, key=lambda t: plan.get(t, shares.get(t, 0.0)))
    x = np.arange(len(names))
    if plan:
        right.plot(x, [plan[t] for t in names], color="0.3", linestyle=":", label="planned probability")
    if shares:
        right.scatter([i for i, t in enumerate(names) if t in shares], [shares[t] for t in names if t in shares],
                      s=10, label="realised share (mean over logs)")
    right.set(title="Sampling per task (tasks sorted by planned probability)", xlabel="task (sorted)",
              ylabel="share of micro-batches")
    for i in sorted({0, len(names) - 1}):
        right.annotate(names[i], (i, plan.get(names[i], shares.get(names[i], 0.0))), fontsize=7,
                       ha="left" if i == 0 else "right", va="bottom")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7)
    return Figure(_save(figure, folder, "weights_sampling.png"), "Task weights and sampling",
                  "Left: the middle half and the median of the tasks' `weight_<task>`. Right: each task's planned "
                  "sampling probability (dotted) and realised share of micro-batches (dots), tasks sorted by the "
                  "plan; the least and most sampled tasks are named. The task plan table lists every task.")


def draw_relative_update(data: RunData, folder: Path) -> Figure | str:
    """The heatmap of `figures.draw_relative_update` with the task heads (`head.<task>`) folded into two rows
    per step: the median and the largest relative update of the heads updated in that interval."""
    rows, heads = [], {}
    for row in data.monitor:
        if row["kind"] == "group" and row["group"].startswith("head."):
            if not (row["update_norm"] == 0 and row["grad_norm"] == 0):
                heads.setdefault(row["step"], []).append(row)
        else:
            rows.append(row)
    names = {r["group"] for r in data.monitor if r["kind"] == "group" and r["group"].startswith("head.")}
    for step, measured in sorted(heads.items()):
        values = [r["relative_update"] for r in measured]
        for label, value in ((f"heads: median of {len(names)}", float(np.median(values))),
                             (f"heads: max of {len(names)}", max(values))):
            rows.append({"step": step, "group": label, "kind": "group", "param_norm": math.nan,
                         "update_norm": math.nan, "relative_update": value, "grad_norm": math.nan})
    figure = _draw_relative_update(dataclasses.replace(data, monitor=sorted(rows, key=lambda r: r["step"])), folder)
    if isinstance(figure, Figure):
        figure.caption += (f" The {len(names)} task heads are folded into two rows: the median and the largest "
                           "relative update among the heads updated at that step (grey: none was).")
    return figure


def draw_conflict(data: RunData, folder: Path) -> Figure | str:
    if not data.conflict:
        return "No gradient-conflict measurements (set diagnostics.conflict_every)."
    last = data.conflict[-1]
    order = conflict_order(cosine_matrix(last))
    tasks = [last["tasks"][i] for i in order]
    matrix = cosine_matrix(last)[np.ix_(order, order)]
    n = len(tasks)
    side = min(12.0, 4.0 + 0.12 * n)
    figure = _figure(side + 5.5, side)
    grid = figure.add_gridspec(2, 2, width_ratios=[side, 5.5])
    ax = figure.add_subplot(grid[:, 0])
    image = ax.imshow(matrix, cmap=_matplotlib_cmap("RdBu"), vmin=-1, vmax=1, interpolation="nearest")
    if n <= LABELLED_TICKS:
        size = max(4.0, min(8.0, side * 72 * 0.65 / n))  # points per cell, a little less
        ax.set_xticks(range(n), tasks, rotation=90, fontsize=size)
        ax.set_yticks(range(n), tasks, fontsize=size)
    else:
        ax.set(xticks=[], yticks=[], xlabel=f"{n} tasks, clustered (names: the pairs table)")
    ax.set_title(f"Cosine of task gradients on the encoder, step {last['step']} (clustered order)")
    figure.colorbar(image, ax=ax, shrink=0.6)
    hist = figure.add_subplot(grid[0, 1])
    values = matrix[np.triu_indices(n, 1)]
    hist.hist(values[np.isfinite(values)], bins=40, range=(-1, 1), color="tab:gray")
    hist.axvline(0, color="tab:red", linewidth=1)
    hist.set(title=f"All {n * (n - 1) // 2} pairs at step {last['step']}", xlabel="cosine", ylabel="pairs")
    over = figure.add_subplot(grid[1, 1])
    steps = [r["step"] for r in data.conflict]
    stats = []
    for record in data.conflict:
        upper = cosine_matrix(record)[np.triu_indices(len(record["tasks"]), 1)]
        upper = upper[np.isfinite(upper)]
        stats.append((np.percentile(upper, [50, 25, 75]) if len(upper) else [np.nan] * 3,
                      float((upper < 0).mean()) if len(upper) else np.nan))
    over.fill_between(steps, [s[0][1] for s in stats], [s[0][2] for s in stats], alpha=0.2, label="25-75 % of pairs")
    over.plot(steps, [s[0][0] for s in stats], marker="o", markersize=3, label="median cosine")
    over.plot(steps, [s[1] for s in stats], marker="s", markersize=3, color="tab:red", label="share of pairs < 0")
    over.axhline(0, color="0.5", linewidth=1)
    over.set(title="Pairwise cosine over training", xlabel="optimizer step", ylim=(-1.05, 1.05))
    over.grid(alpha=0.3)
    over.legend(fontsize=7)
    pairs = len(conflicting_pairs(last))
    return Figure(_save(figure, folder, "gradient_conflict.png"), "Task-gradient conflict",
                  "Cosine similarity between the tasks' gradients on the shared encoder, on a fixed probe batch per "
                  "task (eval mode, unweighted losses); tasks ordered by average-linkage clustering of 1 - cosine, "
                  "so tasks that pull the same way sit together. Right: the distribution of all pairs and its "
                  f"course over training. The {pairs} most conflicting pairs are listed below.")


DRAWERS = (draw_train_loss, draw_eval_metrics, draw_weights_and_sampling, draw_relative_update, draw_conflict)

"""The report's PNG figures, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state).

Each `draw_*` returns a `Figure` description when it wrote its PNG, or a string saying why there is nothing to
draw (that text goes into the report instead of the figure).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import RunData


@dataclass
class Figure:
    file: str
    title: str
    caption: str


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure as MplFigure
    except ImportError:
        raise ImportError("manyheads report draws its figures with matplotlib, which is not installed: "
                          "pip install 'manyheads[report]' (or pip install matplotlib)") from None
    return MplFigure, FigureCanvasAgg


@contextlib.contextmanager
def plain_text() -> Iterator[None]:
    """Matplotlib reads "$...$" in any label as math (and raises on bad math): off while drawing a report."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def _new(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    figure_cls, canvas_cls = _matplotlib()
    figure = figure_cls(figsize=(width, height), dpi=100, layout="constrained")
    canvas_cls(figure)  # the Agg canvas: PNG output without any GUI backend
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _save(figure: Any, folder: Path, name: str) -> str:
    figure.savefig(folder / name, format="png")
    return name


def draw_train_loss(data: RunData, folder: Path) -> Figure | str:
    entries = data.train_logs()
    if not entries:
        return "No training log entries (no 'loss' key in the log history)."
    figure, axes = _new(8, 4.5)
    ax = axes[0][0]
    steps, values = data.series(entries, "loss")
    ax.plot(steps, values, color="0.6", linewidth=1.5, linestyle="--", label="loss (weighted, all tasks)")
    drawn = 0
    for task in data.tasks:
        steps, values = data.series(entries, f"loss_{task}")
        if steps:
            ax.plot(steps, values, marker="o", markersize=3, label=task)
            drawn += 1
    ax.set(xlabel="optimizer step", ylabel="training loss (unweighted, per task)", title="Training loss per task")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    caption = ("Mean unweighted loss of each task's micro-batches since the previous log (`loss_<task>`); a task "
               "with no micro-batch in a logging window has no point there.")
    if not drawn:
        caption += " This run logged no per-task losses."
    return Figure(_save(figure, folder, "train_loss.png"), "Training loss", caption)


def draw_eval_metrics(data: RunData, folder: Path) -> Figure | str:
    entries = data.eval_logs()
    metrics = {t: m for t, m in data.task_metrics().items() if m}
    if not entries or not metrics:
        return "No evaluation during training (set eval_strategy: steps to see metrics over time)."
    panels = [*metrics, "average"]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    figure, axes = _new(4.2 * cols, 3.3 * rows, rows, cols)
    flat = [ax for row in axes for ax in row]
    for ax, task in zip(flat, panels):
        keys = ["eval_average", "eval_loss"] if task == "average" else [f"eval_{task}_{m}" for m in metrics[task]]
        for key in keys:
            steps, values = data.series(entries, key)
            if steps:
                ax.plot(steps, values, marker="o", markersize=3, label=key[len("eval_"):].removeprefix(f"{task}_"))
        ax.set(title=task, xlabel="optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    return Figure(_save(figure, folder, "eval_metrics.png"), "Evaluation metrics per task",
                  "`eval_<task>_<metric>` at each evaluation during training; the last panel has `eval_average` "
                  "(mean of the tasks' main metrics) and `eval_loss`.")


def draw_weights_and_sampling(data: RunData, folder: Path) -> Figure | str:
    entries = data.train_logs()
    has_weights = any(k.startswith("weight_") for e in entries for k in e)
    has_shares = any(k.startswith("share_") for e in entries for k in e)
    plan = {row["task"]: row["probability"] for row in (data.info or {}).get("plan", [])}
    if not has_weights and not has_shares and not plan:
        return "No task weights (`weight_<task>`), sampling shares or sampling plan were logged."
    figure, axes = _new(11, 4, 1, 2)
    left, right = axes[0]
    for task in data.tasks:
        steps, values = data.series(entries, f"weight_{task}")
        if steps:
            left.plot(steps, values, label=task)
    left.set(title="Loss weight per task", xlabel="optimizer step", ylabel="weight")
    for task in data.tasks:
        steps, values = data.series(entries, f"share_{task}")
        line = right.plot(steps, values, marker="o", markersize=3, label=task)[0] if steps else None
        if task in plan:
            right.axhline(plan[task], linestyle=":", color=line.get_color() if line else None,
                          label=None if line else f"{task} (planned)")
    right.set(title="Sampling share per task", xlabel="optimizer step", ylabel="share of micro-batches",
              ylim=(0, 1))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    caption = "Left: `weight_<task>` from the training logs (the loss weighting in use). Right: "
    caption += ("`share_<task>`, the fraction of micro-batches of each task in each logging window; dotted: the "
                "planned sampling probability." if has_shares else
                "the planned sampling probability of each task (dotted; from the sampling strategy and the task "
                "sizes). The trainer logs no `share_<task>`, so the realised shares are not shown.")
    return Figure(_save(figure, folder, "weights_sampling.png"), "Task weights and sampling", caption)


def draw_relative_update(data: RunData, folder: Path) -> Figure | str:
    rows = data.monitor_groups()
    if not rows:
        return "No update monitor measurements (enable diagnostics.update_monitor)."
    steps = sorted({r["step"] for r in rows})
    groups = list(dict.fromkeys(r["group"] for r in rows))
    grid = np.full((len(groups), len(steps)), np.nan)
    column = {s: i for i, s in enumerate(steps)}
    for r in rows:
        idle = r["update_norm"] == 0 and r["grad_norm"] == 0
        if not idle and r["relative_update"] > 0 and math.isfinite(r["relative_update"]):
            grid[groups.index(r["group"]), column[r["step"]]] = math.log10(r["relative_update"])
    figure, axes = _new(min(14, 6 + 0.12 * len(steps)), 1.6 + 0.28 * len(groups))
    ax = axes[0][0]
    cmap = _matplotlib_cmap("viridis")
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ticks = list(range(0, len(steps), max(1, len(steps) // 12)))
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=8)
    ax.set(xlabel="optimizer step", title="log10 relative update ||Δθ|| / ||θ|| per parameter group")
    bar = figure.colorbar(image, ax=ax)
    bar.set_label("log10(||Δθ|| / ||θ||)")
    band = data.band()
    caption = ("Each cell: one measurement of one group (grey: the group had no gradient and no update at that "
               "step, e.g. the head of a task that was not sampled).")
    if band:
        low, high = (math.log10(edge) if edge > 0 else -math.inf for edge in band)
        outside = np.argwhere((grid < low) | (grid > high))  # NaN compares False: idle cells stay unmarked
        if len(outside):
            ax.scatter(outside[:, 1], outside[:, 0], marker="x", color="red", s=25, linewidths=1.2)
        bottom, top = image.get_clim()
        for edge in (low, high):
            if bottom <= edge <= top:
                bar.ax.axhline(edge, color="red", linewidth=1.5)
        caption += (f" Red crosses: outside the band [{band[0]:g}, {band[1]:g}] (diagnostics.relative_update_band; "
                    "a warning fires after band_patience such measurements in a row); red lines on the colour bar: "
                    "the band's edges within the colour range.")
    return Figure(_save(figure, folder, "relative_update.png"), "Relative update per parameter group", caption)


def _matplotlib_cmap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="0.85")  # grey: no measurement


def draw_conflict(data: RunData, folder: Path) -> Figure | str:
    if not data.conflict:
        return "No gradient-conflict measurements (set diagnostics.conflict_every)."
    last = data.conflict[-1]
    tasks = last["tasks"]
    matrix = np.array([[np.nan if v is None else v for v in row] for row in last["cosine"]], dtype=float)
    over_time = len(data.conflict) > 1 and len(tasks) > 1
    figure, axes = _new(11 if over_time else 5.5, 4.5, 1, 2 if over_time else 1)
    ax = axes[0][0]
    image = ax.imshow(matrix, cmap=_matplotlib_cmap("RdBu"), vmin=-1, vmax=1)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            if not np.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(matrix[i, j]) > 0.6 else "black")
    ax.set_title(f"Cosine of task gradients on the encoder, step {last['step']}")
    figure.colorbar(image, ax=ax)
    if over_time:
        right = axes[0][1]
        steps = [r["step"] for r in data.conflict]
        for i in range(len(tasks)):
            for j in range(i + 1, len(tasks)):
                values = [np.nan if r["cosine"][i][j] is None else r["cosine"][i][j] for r in data.conflict]
                right.plot(steps, values, marker="o", markersize=3, label=f"{tasks[i]} / {tasks[j]}")
        right.axhline(0, color="0.5", linewidth=1)
        right.set(title="Pairwise cosine over training", xlabel="optimizer step", ylim=(-1.05, 1.05))
        right.grid(alpha=0.3)
        right.legend(fontsize=7)
    return Figure(_save(figure, folder, "gradient_conflict.png"), "Task-gradient conflict",
                  "Cosine similarity between the tasks' gradients on the shared encoder, on a fixed probe batch per "
                  "task (eval mode, unweighted losses). Negative: the tasks pull the encoder in opposing "
                  "directions.")


DRAWERS = (draw_train_loss, draw_eval_metrics, draw_weights_and_sampling, draw_relative_update, draw_conflict)

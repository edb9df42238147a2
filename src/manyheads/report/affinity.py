"""The report's task-affinity section: a heatmap of `diagnostics/affinity.json` (`TaskAffinityCallback`, TAG) and
the recommended split of the tasks into two groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .data import RunData
from .figures import Figure, _matplotlib_cmap, _new, _save

NUMBERS_UP_TO = 16  # tasks; above this the cells carry no printed value


def split_text(affinity: dict[str, Any], groups: int = 2) -> str | None:
    """`Recommended split into 2 groups: {a, b} | {c} (mean score +0.012).`, or None without that option."""
    option = next((o for o in affinity.get("groupings", []) if o["groups"] == groups), None)
    if option is None:
        return None
    split = " | ".join("{" + ", ".join(group) + "}" for group in option["partition"])
    search = "" if option.get("exact", True) else ", greedy search"
    return f"Recommended split into {groups} groups: {split} (mean score {option['score']:+.3g}{search})."


def draw_affinity(data: RunData, folder: Path) -> Figure | str:
    affinity = data.affinity
    if not affinity or not affinity.get("matrix"):
        return ("No task-affinity measurements (run manyheads affinity CONFIG, or train with "
                "callbacks=[TaskAffinityCallback()]).")
    tasks = affinity["tasks"]
    n = len(tasks)
    matrix = np.array([[np.nan if v is None else v for v in row] for row in affinity["matrix"]], dtype=float)
    off = matrix.copy()
    np.fill_diagonal(off, np.nan)  # a task's affinity onto itself dwarfs the others: left out of the colours
    finite = off[np.isfinite(off)]
    scale = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    side = min(12.0, 4.5 + 0.25 * n)
    figure, axes = _new(side + 1, side)
    ax = axes[0][0]
    image = ax.imshow(off, cmap=_matplotlib_cmap("RdBu"), vmin=-scale, vmax=scale)
    ax.set_xticks(range(n), tasks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), tasks, fontsize=8)
    ax.set(xlabel="onto task (its loss)", ylabel="step on task")
    if n <= NUMBERS_UP_TO:
        for i in range(n):
            for j in range(n):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2g}", ha="center", va="center", fontsize=7,
                            color="white" if i != j and abs(matrix[i, j]) > 0.6 * scale else "black")
    ax.set_title(f"Lookahead task affinity, mean of {affinity.get('measurements', '?')} measurement(s)")
    figure.colorbar(image, ax=ax)
    caption = ("Inter-task affinity (Fifty et al., NeurIPS 2021): row i, column j is 1 - L_j(after an SGD step of "
               "the shared encoder on task i alone) / L_j(before), on fixed probe batches, averaged over the run. "
               "Positive (blue): training on task i helps task j. The diagonal (grey) is left out of the colour "
               "scale.")
    split = split_text(affinity)
    return Figure(_save(figure, folder, "task_affinity.png"), "Task affinity",
                  f"{caption} {split}" if split else caption)

"""`manyheads report RUN_DIR`: an offline HTML page with PNG figures of a training run.

```python
from manyheads.report import build_report
index = build_report("runs/glue")   # runs/glue/report/index.html
```

Figures: per-task training loss, per-task evaluation metrics over time, task weights and sampling shares,
a heatmap of the relative update per parameter group, the gradient-conflict matrix, the task-affinity matrix
(`diagnostics/affinity.json`) with the recommended split into two groups; tables of the last, best
and final metrics; the run's configuration. See `report.data` for the files it reads.

With more than `summary.MANY_TASKS` tasks the figures summarise (`report.many`): median and inter-quartile band
across tasks, the worst tasks named and drawn one by one, a clustered conflict heatmap without per-cell numbers;
the tables rank the tasks worst first, and the long ones fold into `<details>`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .affinity import draw_affinity
from .comparison import load_comparison
from .data import RunData, load_run
from .figures import DRAWERS, Figure, plain_text
from .html import render, render_comparison
from .many import DRAWERS as MANY_DRAWERS
from .summary import many_tasks

__all__ = ["Figure", "RunData", "build_report", "load_run", "stalled_lines"]

# Section titles, in the order of `DRAWERS` (and of `many.DRAWERS`, their summaries for a run with many tasks).
SECTIONS = ("Training loss", "Evaluation metrics", "Task weights and sampling", "Relative update per parameter group",
            "Task-gradient conflict", "Task affinity")


def build_report(run_dir: str | Path, output_dir: str | Path | None = None) -> Path:
    """Write `index.html` and its PNGs to `output_dir` (default `RUN_DIR/report`); return the page's path.

    Raises:
        ConfigError: `run_dir` is neither a run folder (no trainer_state.json there or in a checkpoint) nor a
            comparison folder (compare.json).
        ImportError: matplotlib is missing (install `manyheads[report]`).
    """
    comparison = load_comparison(run_dir)
    folder = Path(output_dir) if output_dir is not None else Path(run_dir) / "report"
    index = folder / "index.html"
    try:
        data = load_run(run_dir)
    except ConfigError:
        if comparison is None:
            raise
        # A comparison folder (`manyheads compare`) holds runs in subfolders, none of its own: its table only.
        folder.mkdir(parents=True, exist_ok=True)
        index.write_text(render_comparison(str(run_dir), comparison), encoding="utf-8")
        return index
    folder.mkdir(parents=True, exist_ok=True)
    with plain_text():  # task names and labels are text, never matplotlib math ("$x$" in a name)
        drawers = (*(MANY_DRAWERS if many_tasks(data) else DRAWERS), draw_affinity)
        figures = [(section, draw(data, folder)) for section, draw in zip(SECTIONS, drawers)]
    index.write_text(render(data, figures, str(folder), comparison), encoding="utf-8")
    return index


def stalled_lines(run_dir: str | Path) -> list[str]:
    """The stalled-head findings of a run (see `RunData.stalled_lines`), for the terminal; none for a comparison
    folder, which holds no run of its own (each run's report lists its own).

    Raises:
        ConfigError: `run_dir` is neither a run folder nor a comparison folder.
    """
    try:
        return load_run(run_dir).stalled_lines()
    except ConfigError:
        if load_comparison(run_dir) is None:
            raise
        return []

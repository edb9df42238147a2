"""Everything `manyheads report` reads from a run folder, in one `RunData`.

Sources, each optional but the log history:
- `trainer_state.json`: the run folder's own (written by `Trainer.save_state()`), else the newest checkpoint's;
- `config.json`: the saved `MultiTaskModel`'s tasks (names and types);
- `diagnostics/run.json`, `diagnostics/update_monitor.csv`, `diagnostics/gradient_conflict.jsonl`,
  `diagnostics/stalled_heads.jsonl`, `diagnostics/affinity.json` (see `manyheads.callbacks`);
- `eval_results.json`: the evaluation `manyheads train` runs after training.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..callbacks.affinity import AFFINITY_SUMMARY
from ..callbacks.base import CONFLICT_FILE, DIAGNOSTICS_DIR, MONITOR_FILE, RUN_FILE
from ..callbacks.stalled_heads import CONSTANT_KEY, STALLED_FILE
from ..errors import ConfigError
from ..tasks import TASK_TYPES
from ..training.checkpoints import checkpoints

STATE_FILE = "trainer_state.json"
# Per-task eval keys that are timings, not metrics.
NOT_METRICS = {"runtime", "samples_per_second", "steps_per_second", CONSTANT_KEY}


@dataclass
class RunData:
    """A run's logged history and diagnostics (see the module docstring for where each comes from)."""

    run_dir: Path
    state_path: Path
    log_history: list[dict[str, Any]]
    tasks: dict[str, str]  # name -> task type ("" when unknown)
    info: dict[str, Any] | None = None
    monitor: list[dict[str, Any]] = field(default_factory=list)
    conflict: list[dict[str, Any]] = field(default_factory=list)
    final_eval: dict[str, float] | None = None
    stalled: list[dict[str, Any]] = field(default_factory=list)
    main_metrics: dict[str, str] = field(default_factory=dict)  # a task's own `main_metric`, where it set one
    affinity: dict[str, Any] | None = None  # `TaskAffinityCallback`'s summary
    _found: dict[str, dict[str, list[str]]] = field(default_factory=dict, repr=False, compare=False)

    # ----- views of the log history -----
    def train_logs(self) -> list[dict[str, Any]]:
        return [e for e in self.log_history if "loss" in e]

    def eval_logs(self) -> list[dict[str, Any]]:
        return [e for e in self.log_history if "eval_average" in e or any(k.startswith("eval_") for k in e)]

    def series(self, entries: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
        points = [(e["step"], e[key]) for e in entries if isinstance(e.get(key), (int, float))]
        return [p[0] for p in points], [float(p[1]) for p in points]

    def task_metrics(self, prefix: str = "eval") -> dict[str, list[str]]:
        """Metric names per task found in the eval logs (`eval_<task>_<metric>`), loss last."""
        if prefix not in self._found:
            self._found[prefix] = self._task_metrics(prefix)
        return {t: list(m) for t, m in self._found[prefix].items()}

    def _task_metrics(self, prefix: str) -> dict[str, list[str]]:
        names = sorted(self.tasks, key=len, reverse=True)  # "sst2" before "sst" when both are tasks
        found: dict[str, list[str]] = {t: [] for t in self.tasks}
        keys = dict.fromkeys(k for e in self.eval_logs() for k in e)
        keys.update(dict.fromkeys(self.final_eval or {}))
        for key in keys:
            task = next((t for t in names if key.startswith(f"{prefix}_{t}_")), None)
            if task is None:
                continue
            metric = key[len(f"{prefix}_{task}_"):]
            if metric not in NOT_METRICS and metric not in found[task]:
                found[task].append(metric)
        return {t: sorted(m, key=lambda x: (x == "loss",)) for t, m in found.items()}

    def greater_is_better(self, task: str, metric: str) -> bool:
        task_type = TASK_TYPES.get(self.tasks.get(task, ""))
        if task_type is not None and metric in task_type.METRICS:
            return task_type.METRICS[metric]
        return not any(word in metric for word in ("loss", "mse", "mae", "error"))

    def main_metric(self, task: str) -> str | None:
        """The metric of `task` that enters `eval_average`: its own `main_metric`, else its type's first, else the
        first logged one that is not the loss."""
        logged = self.task_metrics().get(task, [])
        task_type = TASK_TYPES.get(self.tasks.get(task, ""))
        for metric in (self.main_metrics.get(task), next(iter(task_type.METRICS), None) if task_type else None):
            if metric and metric in logged:
                return metric
        return next((m for m in logged if m != "loss"), logged[0] if logged else None)

    def stalled_lines(self) -> list[str]:
        """One line per task that `StalledHeadsCallback` flagged: when, why, the fixes, and its encoder gradient
        norm next to the other tasks' where the gradient-conflict diagnostics measured them."""
        last_eval = max((e["step"] for e in self.eval_logs() if "step" in e), default=None)
        lines = []
        for task in dict.fromkeys(r["task"] for r in self.stalled):
            records = [r for r in self.stalled if r["task"] == task]
            steps = sorted({r["step"] for r in records})
            last = records[-1]
            still = last_eval is None or steps[-1] >= last_eval
            when = (f"at the last evaluation (step {steps[-1]})" if still else
                    f"at step(s) {', '.join(map(str, steps))}, not at the last evaluation (step {last_eval})")
            line = f"task '{task}' stalled {when}: {last['reason']}. Likely fixes: {last['fixes']}."
            if self.conflict and task in self.conflict[-1].get("grad_norm", {}):
                norms = self.conflict[-1]["grad_norm"]
                others = ", ".join(f"{t} {v:.3g}" for t, v in norms.items() if t != task and v is not None)
                if norms[task] is not None:
                    line += (f" Its encoder gradient norm at step {self.conflict[-1]['step']}: {norms[task]:.3g}"
                             + (f" (other tasks: {others})." if others else "."))
            lines.append(line)
        return lines

    def monitor_groups(self) -> list[dict[str, Any]]:
        return [r for r in self.monitor if r["kind"] == "group"]

    def band(self) -> tuple[float, float] | None:
        band = ((self.info or {}).get("config", {}).get("diagnostics") or {}).get("relative_update_band")
        return (float(band[0]), float(band[1])) if band else None


def find_state(run_dir: Path) -> Path:
    """The run's `trainer_state.json`, else the newest checkpoint's; a ConfigError saying what to do if none."""
    own = run_dir / STATE_FILE
    if own.is_file():
        return own
    with_state = [Path(p) for p in checkpoints(str(run_dir)) if (Path(p) / STATE_FILE).is_file()]
    if with_state:
        return with_state[-1] / STATE_FILE
    raise ConfigError(f"{run_dir}: no {STATE_FILE}, neither in the folder nor in a checkpoint-N/ folder. Point "
                      "at a run's output_dir, train with save_strategy 'steps' (or call trainer.save_state()), "
                      "then run the report again.")


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder (its `output_dir`). Raises ConfigError when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder. Give the output_dir of a training run.")
    state_path = find_state(run_dir)
    history = _read_json(state_path).get("log_history", [])
    info = _read_json(run_dir / DIAGNOSTICS_DIR / RUN_FILE) if (run_dir / DIAGNOSTICS_DIR / RUN_FILE).is_file() \
        else None
    final = run_dir / "eval_results.json"
    return RunData(run_dir=run_dir, state_path=state_path, log_history=history,
                   tasks=_tasks(run_dir, state_path, info, history), info=info,
                   monitor=_read_monitor(run_dir / DIAGNOSTICS_DIR / MONITOR_FILE),
                   conflict=_read_conflict(run_dir / DIAGNOSTICS_DIR / CONFLICT_FILE),
                   final_eval=_read_json(final) if final.is_file() else None,
                   stalled=_read_jsonl(run_dir / DIAGNOSTICS_DIR / STALLED_FILE),
                   main_metrics=_main_metrics(run_dir, state_path),
                   affinity=_read_json(run_dir / DIAGNOSTICS_DIR / AFFINITY_SUMMARY)
                   if (run_dir / DIAGNOSTICS_DIR / AFFINITY_SUMMARY).is_file() else None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read it as JSON ({err}). Remove or repair the file.") from None


def _tasks(run_dir: Path, state_path: Path, info: dict[str, Any] | None,
           history: list[dict[str, Any]]) -> dict[str, str]:
    """Task names and types: the saved model's config, the run info, the checkpoint's config, the logged keys."""
    for config in (run_dir / "config.json", state_path.parent / "config.json"):
        if config.is_file():
            specs = _read_json(config).get("tasks")
            if specs:
                return {t["name"]: t.get("type", "") for t in specs}
    if info and info.get("config", {}).get("tasks"):
        return {t["name"]: t.get("type", "") for t in info["config"]["tasks"]}
    return {k[len("loss_"):]: "" for e in history for k in e if k.startswith("loss_")}


def _main_metrics(run_dir: Path, state_path: Path) -> dict[str, str]:
    for config in (run_dir / "config.json", state_path.parent / "config.json"):
        if config.is_file():
            return {t["name"]: t["main_metric"] for t in _read_json(config).get("tasks") or [] if t.get("main_metric")}
    return {}


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _read_monitor(path: Path) -> list[dict[str, Any]]:
    """Monitor rows; a step written twice (a resumed run re-did it) keeps its last values."""
    if not path.is_file():
        return []
    rows: dict[tuple[int, str, str], dict[str, Any]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("step") in (None, "", "step"):
                continue
            record = {"step": int(row["step"]), "group": row["group"], "kind": row["kind"],
                      **{k: _number(row[k]) for k in ("param_norm", "update_norm", "relative_update", "grad_norm")}}
            rows[(record["step"], record["group"], record["kind"])] = record
    return sorted(rows.values(), key=lambda r: r["step"])


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_conflict(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["step"]] = record
    return [records[s] for s in sorted(records)]

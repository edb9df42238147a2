"""`StalledHeadsCallback`: warn when a task's head stays at its trivial baseline.

A head can fail silently in a multi-task run: on a rare-label multi-label task next to easier tasks it may
settle on the label frequencies, predict no label for any row, and score F1 0 while the other tasks look fine.
At each evaluation this callback flags a task whose predictions are constant (every row the same class, the
same label set, no label ever, a regression output with no spread: `Task.constant_predictions`, logged by
`MultiTaskTrainer.evaluate` as `eval_<task>_constant_predictions`) or whose main metric is what a constant
predictor scores (F1 0, MCC 0, correlation 0). It names the task and the usual fixes, logs a warning, and
appends one line per flagged task to `diagnostics/stalled_heads.jsonl`, which `manyheads report` shows.

`MultiTaskTrainer` adds it by default; remove it with `trainer.remove_callback(StalledHeadsCallback)`. It only
reads the evaluation's metrics and the model's task objects.
"""

from __future__ import annotations

from typing import Any

from transformers.utils import logging

from .base import DiagnosticCallback, unwrap

logger = logging.get_logger(__name__)

STALLED_FILE = "stalled_heads.jsonl"
# The per-task key `MultiTaskTrainer.evaluate` logs: 1.0 when every row got the same prediction.
CONSTANT_KEY = "constant_predictions"
# Main metrics whose value here is the constant predictor's: F1 0 (no positive predicted right), MCC and
# correlations 0 (a constant has none).
CONSTANT_SCORES = {"f1": 0.0, "micro_f1": 0.0, "macro_f1": 0.0, "mcc": 0.0, "pearson": 0.0, "spearman": 0.0}


def stall_reason(metrics: dict[str, float], prefix: str, task: Any) -> str | None:
    """Why `task` looks stalled in one evaluation's `metrics` (keys `<prefix>_<task>_<metric>`), else None."""
    if metrics.get(f"{prefix}_{task.name}_{CONSTANT_KEY}") == 1.0:
        return {"multilabel": "every row got the same label set (often none)",
                "regression": "its predictions have no spread"}.get(task.type, "every row got the same prediction")
    metric = task.main_metric_name
    value = metrics.get(f"{prefix}_{task.name}_{metric}")
    if metric in CONSTANT_SCORES and value is not None and abs(value - CONSTANT_SCORES[metric]) < 1e-12:
        return f"its main metric {metric} is {value:g}, what a constant prediction scores"
    return None


def advice(task: Any, several_tasks: bool) -> str:
    """The likely fixes for a stalled head of `task`'s type, most specific first."""
    fixes = []
    if task.type == "multilabel":
        fixes.append("threshold: tuned (per-label thresholds; needs an eval split) and pos_weight: sqrt")
    if task.type == "classification":
        fixes.append("class_weights: auto")
    if getattr(task, "pooling", None) in ("auto", "pooler"):
        fixes.append("pooling: mean (for sentence-transformers encoders such as all-MiniLM)")
    fixes.append("a higher learning_rate or more steps")
    if several_tasks:
        fixes.append("more batches for this task (sampling temperature, or a higher loss weight)")
    return "; ".join(fixes)


class StalledHeadsCallback(DiagnosticCallback):
    """Warn (and write `diagnostics/stalled_heads.jsonl`) when a task's head stays at its trivial baseline.

    Args:
        output_dir: folder of its file; default `<TrainingArguments.output_dir>/diagnostics`.
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(output_dir, log_to_trackers=False)
        self.warnings: list[str] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start_file(args, state, STALLED_FILE)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    model: Any = None, **kwargs: Any) -> None:
        tasks = getattr(unwrap(model), "tasks", None) or {}
        if not metrics or not state.is_world_process_zero:
            return
        for task in tasks.values():
            prefix = next((k[:-len(f"_{task.name}_{CONSTANT_KEY}")] for k in metrics
                           if k.endswith(f"_{task.name}_{CONSTANT_KEY}")), None)
            reason = stall_reason(metrics, prefix, task) if prefix is not None else None
            if reason is None:
                continue
            fixes = advice(task, len(tasks) > 1)
            message = (f"manyheads: task '{task.name}' looks stalled at step {state.global_step}: {reason}; its head "
                       f"has learnt nothing beyond a constant answer. Likely fixes: {fixes}.")
            self.warnings.append(message)
            logger.warning(message)
            self.append_jsonl(args, STALLED_FILE, {"step": state.global_step, "task": task.name, "type": task.type,
                                                   "reason": reason, "fixes": fixes})

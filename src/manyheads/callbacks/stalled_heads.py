"""`StalledHeadsCallback`: warn when a task's head stays at its trivial baseline.

A head can fail silently in a multi-task run: on a rare-label multi-label task next to easier tasks it may
settle on the label frequencies, predict no label for any row, and score F1 0 while the other tasks look fine.
At each evaluation this callback flags a task whose predictions are constant (every row the same class, the
same label set, no label ever, a regression output with no spread: `Task.constant_predictions`, logged by
`MultiTaskTrainer.evaluate` as `eval_<task>_constant_predictions`) or whose main metric is what a constant
predictor scores (F1 0, MCC 0, correlation 0). It names the task and the usual fixes, and appends one line per
flagged task and evaluation to `diagnostics/stalled_heads.jsonl`, which `manyheads report` shows. The warning is
one message per evaluation and kind of finding naming every newly flagged task (tasks with the same finding and
fixes together, as 50 stalled heads of one run usually are); a task is warned about once per kind of finding, not
at every evaluation.

A head can also score below a constant answer without being constant itself (a multilabel head whose rare labels
fire on most rows scores a lower micro-F1 than always answering the most frequent label). For a task type that
can say what the best constant answer scores on given labels (the `ConstantBaseline` capability: multilabel), the
callback compares the task's main metric with it on the same eval labels, warns once per task, and records it in
the same file at each evaluation where it holds. It reads those labels from the evaluation loaders Trainer hands
to `on_prediction_step` (one task's split per loader), the only way a callback sees them.

`MultiTaskTrainer` adds it by default; remove it with `trainer.remove_callback(StalledHeadsCallback)`. It only
reads the evaluation's metrics and the model's task objects.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from transformers.utils import logging

from ..tasks import LABEL_COLUMN, TASK_COLUMN, SequenceTask, higher_is_better, main_metric_of
from .base import DiagnosticCallback, unwrap

logger = logging.get_logger(__name__)

STALLED_FILE = "stalled_heads.jsonl"
# The per-task key `MultiTaskTrainer.evaluate` logs: 1.0 when every row got the same prediction.
CONSTANT_KEY = "constant_predictions"
# Main metrics whose value here is the constant predictor's: F1 0 (no positive predicted right), MCC and
# correlations 0 (a constant has none).
CONSTANT_SCORES = {"f1": 0.0, "micro_f1": 0.0, "macro_f1": 0.0, "mcc": 0.0, "pearson": 0.0, "spearman": 0.0}


@runtime_checkable
class ConstantBaseline(Protocol):
    """A task type that knows the best constant answer: `constant_baseline(labels)` gives the main metric that
    answer scores on these labels (as the eval loop collects them) and the answer in words, or None."""

    def constant_baseline(self, labels: Any) -> tuple[float, str] | None: ...


def stall_reason(metrics: dict[str, float], prefix: str, task: Any) -> str | None:
    """Why `task` looks stalled in one evaluation's `metrics` (keys `<prefix>_<task>_<metric>`), else None."""
    if metrics.get(f"{prefix}_{task.name}_{CONSTANT_KEY}") == 1.0:
        return {"multilabel": "every row got the same label set (often none)",
                "regression": "its predictions have no spread"}.get(task.type, "every row got the same prediction")
    metric = main_metric_of(task)
    value = metrics.get(f"{prefix}_{task.name}_{metric}")
    if metric in CONSTANT_SCORES and value is not None and abs(value - CONSTANT_SCORES[metric]) < 1e-12:
        return f"its main metric {metric} is {value:g}, what a constant prediction scores"
    return None


def below_constant_reason(metrics: dict[str, float], prefix: str, task: ConstantBaseline, labels: Any) -> str | None:
    """Why `task`'s main metric in `metrics` is worse than the best constant answer on `labels`, else None."""
    baseline = task.constant_baseline(labels)
    metric = main_metric_of(task)
    value = metrics.get(f"{prefix}_{task.name}_{metric}")
    if baseline is None or value is None:
        return None
    score, answer = baseline
    # A margin of rounding only: equal to the constant is the stall check's business, not this one's.
    worse = value < score - 1e-9 if higher_is_better(task, metric) else value > score + 1e-9
    if not worse:
        return None
    return (f"its main metric {metric} is {value:.4g}, {'below' if higher_is_better(task, metric) else 'above'} the "
            f"{score:.4g} that a constant answer scores on the same eval labels ({answer})")


def advice(task: Any, several_tasks: bool) -> str:
    """The likely fixes for a stalled head of `task`'s type, most specific first."""
    fixes = []
    if task.type == "multilabel":
        fixes.append("threshold: tuned (per-label thresholds; needs an eval split) and pos_weight: sqrt")
    if task.type == "classification":
        fixes.append("class_weights: auto")
    if isinstance(task, SequenceTask) and task.pooling in ("auto", "pooler"):
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
        self._warned: set[tuple[str, str]] = set()  # (task, kind of finding) already in a warning
        self._loader: Any = None  # the evaluation loader of the last prediction step
        self._eval_sets: dict[str, Any] = {}  # task name -> its split in the evaluation under way

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start_file(args, state, STALLED_FILE)

    def on_prediction_step(self, args: Any, state: Any, control: Any, eval_dataloader: Any = None,
                           **kwargs: Any) -> None:
        # `MultiTaskTrainer.evaluate` runs Trainer's evaluation loop once per task; each loop's loader holds that
        # task's split (with its `task` column). Looked at once per loader, not per batch.
        if eval_dataloader is None or eval_dataloader is self._loader:
            return
        self._loader = eval_dataloader
        dataset = getattr(eval_dataloader, "dataset", None)
        columns = getattr(dataset, "column_names", None) or []
        # Map-style splits only: an iterable one cannot be read again without running it through.
        if TASK_COLUMN in columns and LABEL_COLUMN in columns and hasattr(dataset, "__len__") and len(dataset):
            self._eval_sets[dataset[0][TASK_COLUMN]] = dataset

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    model: Any = None, **kwargs: Any) -> None:
        tasks = getattr(unwrap(model), "tasks", None) or {}
        eval_sets, self._eval_sets, self._loader = self._eval_sets, {}, None
        if not metrics or not state.is_world_process_zero:
            return
        several = len(tasks) > 1
        # Findings not warned about yet, grouped by what was found (kind, reason, fixes): one warning per
        # evaluation names every task of a group at once.
        groups: dict[tuple[str, str, str], list[str]] = {}
        for task in tasks.values():
            prefix = next((k[:-len(f"_{task.name}_{CONSTANT_KEY}")] for k in metrics
                           if k.endswith(f"_{task.name}_{CONSTANT_KEY}")), None)
            if prefix is None:
                continue
            found = None
            reason = stall_reason(metrics, prefix, task)
            if reason is not None:
                found = ("stalled", reason)
            elif isinstance(task, ConstantBaseline) and task.name in eval_sets:
                labels = np.asarray(list(eval_sets[task.name][LABEL_COLUMN]))
                reason = below_constant_reason(metrics, prefix, task, labels)
                found = ("below", reason) if reason is not None else None
            if found is None:
                continue
            kind, reason = found
            fixes = advice(task, several)
            self.append_jsonl(args, STALLED_FILE, {"step": state.global_step, "task": task.name, "type": task.type,
                                                   "reason": reason, "fixes": fixes})
            if (task.name, kind) not in self._warned:
                self._warned.add((task.name, kind))
                groups.setdefault((kind, reason, fixes), []).append(task.name)
        for kind in ("stalled", "below"):  # one warning per kind of finding
            of_kind = {key: names for key, names in groups.items() if key[0] == kind}
            if of_kind:
                message = warning_text(of_kind, state.global_step)
                self.warnings.append(message)
                logger.warning(message)


def warning_text(groups: dict[tuple[str, str, str], list[str]], step: int) -> str:
    """One warning for the new findings of one evaluation: each (kind, reason, fixes) with the tasks it names."""
    parts = []
    for (kind, reason, fixes), names in groups.items():
        one = len(names) == 1
        who = f"task '{names[0]}'" if one else f"tasks {', '.join(repr(n) for n in names)}"
        if kind == "stalled":
            what = (f"{'looks' if one else 'look'} stalled at step {step}: {reason}; "
                    f"{'its head has' if one else 'their heads have'} learnt nothing beyond a constant answer")
        else:
            what = f"{'scores' if one else 'score'} below a constant answer at step {step}: {reason}"
        parts.append(f"{who} {what}. Likely fixes: {fixes}.")
    count = sum(len(names) for names in groups.values())
    if len(parts) == 1:
        return f"manyheads: {parts[0]}"
    what = "look stalled" if next(iter(groups))[0] == "stalled" else "score below a constant answer"
    return (f"manyheads: {count} tasks {what} at step {step} (each named once; later evaluations only record "
            f"them in {STALLED_FILE}):\n" + "\n".join(f"  - {p}" for p in parts))

"""Metrics shared across tasks: the run's average, and a user's `compute_metrics` per task.

`compute_metrics` given to `MultiTaskTrainer` is either one callable for every task or `{task: callable}`. A
callable takes the task's `EvalPrediction` (logits and labels as `Trainer` gives them; regression in the
target's units) and, when it accepts a second argument, the `Task`. Its results are logged as
`eval_<task>_<name>` beside the task type's own metrics and can be named by `metric_for_best_model`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from difflib import get_close_matches
from typing import Any

from transformers import EvalPrediction

from ..errors import shown
from .capabilities import MetricInputs

logger = logging.getLogger(__name__)
MetricFunction = Callable[..., dict[str, float]]


def aggregate_score(main_scores: dict[str, tuple[float, bool]]) -> float:
    """Mean of each task's main metric, negated where lower is better (so higher is always better).

    Args:
        main_scores: `{task: (value, greater_is_better)}`.
    """
    if not main_scores:
        return float("nan")
    signed = [value if greater else -value for value, greater in main_scores.values()]
    return float(sum(signed) / len(signed))


def metric_function_for(compute_metrics: MetricFunction | dict[str, MetricFunction] | None,
                        task: str) -> MetricFunction | None:
    if isinstance(compute_metrics, dict):
        return compute_metrics.get(task)
    return compute_metrics


def check_metric_functions(compute_metrics: Any, tasks: list[str]) -> None:
    """Raises ValueError for a dict naming unknown tasks, or a value that is not callable."""
    if compute_metrics is None:
        return
    functions = compute_metrics if isinstance(compute_metrics, dict) else {"(all tasks)": compute_metrics}
    unknown = [name for name in functions if isinstance(compute_metrics, dict) and name not in tasks]
    if unknown:
        raise ValueError(f"compute_metrics has entries for {unknown}, which are not tasks of the model ({tasks}).")
    for name, function in functions.items():
        if not callable(function):
            raise ValueError(f"compute_metrics[{shown(name)}] is {shown(function)}; give a function "
                             "(EvalPrediction[, task]) -> dict of metric values.")


def _takes_task(function: MetricFunction) -> bool:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def user_metrics(function: MetricFunction, task: Any, predictions: Any, labels: Any) -> dict[str, float]:
    """Run a user's metric function on one task's evaluation output."""
    if isinstance(task, MetricInputs):
        predictions, labels = task.metric_inputs(predictions, labels)
    prediction = EvalPrediction(predictions=predictions, label_ids=labels)
    result = function(prediction, task) if _takes_task(function) else function(prediction)
    if not isinstance(result, dict):
        raise TypeError(f"compute_metrics for task '{task.name}' returned {type(result).__name__}; it must return a "
                        "dict {metric name: value}.")
    values = {str(k): float(v) for k, v in result.items()}
    replaced = sorted(set(values) & set(task.METRICS))
    if replaced and (task.name, tuple(replaced)) not in _WARNED:
        # Allowed (a ported script's own f1 is what its metric_for_best_model means), but never silently.
        _WARNED.add((task.name, tuple(replaced)))
        logger.warning("manyheads: compute_metrics returned %s for task '%s', which it also reports built in; "
                       "eval_%s_<name> holds your value, not the built-in one. Rename yours (e.g. 'my_%s') to keep "
                       "both.", replaced, task.name, task.name, replaced[0])
    return values


_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def valid_metric_names(tasks: list[Any]) -> set[str]:
    """Metric names (without the `eval_` prefix) that an evaluation of these tasks reports built in."""
    names = {"average", "loss"}
    for task in tasks:
        names.add(f"{task.name}_loss")
        names.update(f"{task.name}_{m}" for m in task.METRICS)
    return names


def shared_metric(metric: str | None, tasks: list[Any]) -> str | None:
    """`metric_for_best_model="accuracy"` (a metric name without a task, as a single-task script writes it): the
    name when some task reports it built in. Evaluation then logs `eval_accuracy`, the mean of that metric over
    the tasks that report it."""
    if metric is None:
        return None
    name = metric[len("eval_"):] if metric.startswith("eval_") else metric
    return name if name not in ("average", "loss") and any(name in t.METRICS for t in tasks) else None


def best_metric_problem(metric: str | None, tasks: list[Any], user_defined: bool) -> str | None:
    """Why `metric_for_best_model` names no metric of the run, or None. With user metrics, any
    `<task>_<name>` of a known task is accepted (its names are known only once it has run)."""
    if metric is None:
        return None
    name = metric[len("eval_"):] if metric.startswith("eval_") else metric
    valid = valid_metric_names(tasks)
    if (name in valid or shared_metric(name, tasks)
            or (user_defined and any(name.startswith(f"{t.name}_") for t in tasks))):
        return None
    close = get_close_matches(name, list(valid), n=1, cutoff=0.6)
    hint = f" Did you mean 'eval_{close[0]}'?" if close else ""
    return (f"metric_for_best_model={shown(metric)} names no metric of this run.{hint} Valid: "
            f"{', '.join('eval_' + v for v in sorted(valid))}"
            + (", or eval_<task>_<name> of your compute_metrics." if user_defined else "."))

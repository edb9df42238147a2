"""One task's evaluation inside `MultiTaskTrainer.evaluate`: Trainer's own `evaluation_loop` on the task's split,
then the task's metrics (generated text for generation tasks), the user's metric function, and whether every row
got the same prediction.

On the run's own eval split of a model the trainer trained, a task first fits what it fits on its eval predictions
(`Task.fit_on_predictions`: multilabel thresholds); never on other data (a test split) nor in a trainer that only
evaluates a saved model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .metrics import metric_function_for, user_metrics
from .text_generation import generate_split


@dataclass
class TaskEvaluation:
    metrics: dict[str, float]  # "<prefix>_<task>_<metric>" for the task's and the user's metrics
    constant: bool  # every row got the same prediction
    loss: float | None  # the task's eval loss, when the loop computed one
    main: tuple[float, bool]  # (main metric value, greater is better), for `<prefix>_average`


def evaluate_task(trainer: Any, name: str, dataset: Any, override: bool, ignore_keys: list[str] | None,
                  prefix: str) -> TaskEvaluation:
    """Evaluate task `name` on `dataset` (`override`: a dataset given to `evaluate`, not the run's own split)."""
    task = trainer.tasks[name]
    loader = trainer.get_eval_dataloader(dataset if override else name)
    # Generation tasks: the teacher-forced loss here (their logits are vocabulary-sized), the text below.
    output = trainer.evaluation_loop(loader, description=f"Evaluation {name}", prediction_loss_only=task.generates,
                                     ignore_keys=ignore_keys, metric_key_prefix=f"{prefix}_{name}")
    if task.generates:
        predictions, references, cost = generate_split(trainer, name, loader)
        scores = {**task.compute_metrics(predictions, references, dataset), **cost}
        output = output._replace(predictions=predictions, label_ids=references)
    else:
        if not override and trainer.state.global_step > 0:
            task.fit_on_predictions(output.predictions, output.label_ids)
        scores = task.compute_metrics(output.predictions, output.label_ids, dataset)
    function = metric_function_for(trainer.task_metrics, name)
    if function is not None:
        scores.update(user_metrics(function, task, output.predictions, output.label_ids))
    loss = output.metrics.get(f"{prefix}_{name}_loss")
    return TaskEvaluation(metrics={f"{prefix}_{name}_{k}": v for k, v in scores.items()},
                          constant=bool(task.constant_predictions(output.predictions, output.label_ids)),
                          loss=None if loss is None else float(loss),
                          main=(scores[task.main_metric_name], task.greater_is_better(task.main_metric_name)))

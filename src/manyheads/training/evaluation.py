"""One task's evaluation inside `MultiTaskTrainer.evaluate`: Trainer's own `evaluation_loop` on the task's split,
then the task's metrics (generated text for generation tasks), the user's metric function, and whether every row
got the same prediction.

On the run's own eval split of a model the trainer trained, a task first fits what it fits on its eval predictions
(the `FitsOnPredictions` capability: multilabel thresholds); never on other data (a test split) nor in a trainer
that only evaluates a saved model. A generation task (one with a decoder, `MultiTaskModel.task_decoder`) is scored on
the text its decoder generates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers.trainer_utils import PredictionOutput

from ..callbacks.stalled_heads import CONSTANT_KEY
from ..tasks import TASK_COLUMN, DetectsConstant, FitsOnPredictions, higher_is_better, main_metric_of
from ..tasks.metrics import aggregate_score, metric_function_for, shared_metric, user_metrics
from .generation import generate_split


@dataclass
class TaskEvaluation:
    metrics: dict[str, float]  # "<prefix>_<task>_<metric>" for the task's and the user's metrics
    constant: bool  # every row got the same prediction
    loss: float | None  # the task's eval loss, when the loop computed one
    main: tuple[float, bool]  # (main metric value, greater is better), for `<prefix>_average`
    predictions: Any = None  # what Trainer's evaluation loop returned (generated text for generation tasks)
    label_ids: Any = None


def by_task(datasets: Any) -> dict[str, Any]:
    """`{task: dataset}`; one dataset is keyed by the task name its rows carry."""
    return datasets if isinstance(datasets, dict) else {datasets[0][TASK_COLUMN]: datasets}


def evaluate_task(trainer: Any, name: str, dataset: Any, override: bool, ignore_keys: list[str] | None,
                  prefix: str, module: Any = None) -> TaskEvaluation:
    """Evaluate task `name` on `dataset` (`override`: a dataset given to `evaluate`, not the run's own split).
    `module`: the unwrapped model, when the caller has it (unwrapping walks every module of the model, which with
    hundreds of heads costs more than evaluating a small task)."""
    task = trainer.tasks[name]
    module = module if module is not None else trainer.accelerator.unwrap_model(trainer.model)
    decoder = module.task_decoder(name)
    loader = trainer.get_eval_dataloader(dataset if override else name)
    # Generation tasks: the teacher-forced loss here (their logits are vocabulary-sized), the text below.
    output = trainer.evaluation_loop(loader, description=f"Evaluation {name}",
                                     prediction_loss_only=decoder is not None, ignore_keys=ignore_keys,
                                     metric_key_prefix=f"{prefix}_{name}")
    if decoder is not None:
        predictions, references, cost = generate_split(trainer, decoder, loader)
        scores = {**task.compute_metrics(predictions, references, dataset), **cost}
        output = output._replace(predictions=predictions, label_ids=references)
    else:
        if not override and trainer.state.global_step > 0 and isinstance(task, FitsOnPredictions):
            task.fit_on_predictions(output.predictions, output.label_ids)
        scores = task.compute_metrics(output.predictions, output.label_ids, dataset)
    function = metric_function_for(trainer.task_metrics, name)
    if function is not None:
        scores.update(user_metrics(function, task, output.predictions, output.label_ids))
    loss = output.metrics.get(f"{prefix}_{name}_loss")
    return TaskEvaluation(metrics={f"{prefix}_{name}_{k}": v for k, v in scores.items()},
                          constant=isinstance(task, DetectsConstant)
                          and bool(task.constant_predictions(output.predictions, output.label_ids)),
                          loss=None if loss is None else float(loss),
                          main=(scores[main_metric_of(task)], higher_is_better(task, main_metric_of(task))),
                          predictions=output.predictions, label_ids=output.label_ids)


def evaluate_tasks(trainer: Any, datasets: dict[str, Any], override: bool, ignore_keys: list[str] | None,
                   prefix: str) -> dict[str, float]:
    """Every task's metrics, `<prefix>_<task>_constant_predictions`, `<prefix>_average`, `<prefix>_loss` (mean of
    the task losses) and `<prefix>_runtime`."""
    start = time.time()
    metrics: dict[str, float] = {}
    main_scores, losses = {}, []
    module = trainer.accelerator.unwrap_model(trainer.model)  # once, not once per task
    for name, dataset in datasets.items():
        result = evaluate_task(trainer, name, dataset, override, ignore_keys, prefix, module)
        metrics.update(result.metrics)
        # Read by StalledHeadsCallback: 1.0 when every row got the same prediction.
        metrics[f"{prefix}_{name}_{CONSTANT_KEY}"] = float(result.constant)
        if result.loss is not None:
            metrics[f"{prefix}_{name}_loss"] = result.loss
            losses.append(result.loss)
        main_scores[name] = result.main
    metrics[f"{prefix}_average"] = aggregate_score(main_scores)
    shared = shared_metric(trainer.args.metric_for_best_model, [trainer.tasks[n] for n in datasets])
    reported = [metrics[key] for n in datasets if (key := f"{prefix}_{n}_{shared}") in metrics]
    if shared and reported:  # metric_for_best_model="accuracy": its mean over the tasks that report it
        metrics[f"{prefix}_{shared}"] = float(np.mean(reported))
    if losses:
        metrics[f"{prefix}_loss"] = float(np.mean(losses))
    metrics[f"{prefix}_runtime"] = round(time.time() - start, 4)
    return metrics


def predict_task(trainer: Any, dataset: Any, ignore_keys: list[str] | None, prefix: str) -> PredictionOutput:
    """`MultiTaskTrainer.predict`: one task's split, evaluated as `evaluate` does, with its predictions and labels."""
    datasets = by_task(dataset)
    if len(datasets) != 1:
        raise ValueError(f"MultiTaskTrainer.predict takes one task's dataset, got {list(datasets)}: call it per "
                         "task, or use evaluate() for all tasks' metrics.")
    (name, split), = datasets.items()
    result = evaluate_task(trainer, name, split, True, ignore_keys, prefix)
    metrics = dict(result.metrics)
    if result.loss is not None:
        metrics[f"{prefix}_{name}_loss"] = metrics[f"{prefix}_loss"] = result.loss
    return PredictionOutput(predictions=result.predictions, label_ids=result.label_ids, metrics=metrics)

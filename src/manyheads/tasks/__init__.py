"""Task types. A built-in type is one module with a `Task` subclass plus one line in `TASK_TYPES`; a user's own
type is a subclass in their code, used as it is and saved by its import path (`Task.type`). What only some types
can do is a capability (`capabilities.py`)."""

from __future__ import annotations

from typing import Any

from ..errors import shown
from ..importing import import_object
from .base import (
    GROUP_COLUMN,
    LABEL_COLUMN,
    TASK_COLUMN,
    SequenceTask,
    Task,
    TokenizedTask,
    head_name,
    higher_is_better,
    main_metric_of,
    task_settings,
    type_name,
)
from .capabilities import (
    DetectsConstant,
    FitsOnPredictions,
    MetricInputs,
    OwnPredictionEncoding,
    StockExport,
    StockLayout,
    TextGeneration,
    WordLevel,
)
from .classification import Classification
from .multilabel import MultiLabel
from .pooling import apply_checkpoint_pooling, checkpoint_pooling
from .question_answering import QuestionAnswering
from .regression import Regression
from .seq2seq import Seq2Seq
from .token_classification import TokenClassification

TASK_TYPES: dict[str, type[Task]] = {
    "classification": Classification,
    "multilabel": MultiLabel,
    "regression": Regression,
    "token_classification": TokenClassification,
    "question_answering": QuestionAnswering,
    "seq2seq": Seq2Seq,
}

# Fitted values that the first saved format kept among the options.
_OLD_FITTED = {"class_weights": "class_weights", "pos_weight": "pos_weight", "mean": "mean", "std": "std"}


def resolve_task_type(name: str) -> type[Task]:
    """A registered type name, or the import path (`package.module.Class`) of a `Task` subclass.

    Raises:
        ValueError: naming the value, the registered types and the fix.
    """
    if name in TASK_TYPES:
        return TASK_TYPES[name]
    try:
        cls = import_object(name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"task type {shown(name)} cannot be imported ({err}); valid: {', '.join(TASK_TYPES)}, or the "
                         "import path of a Task subclass that is importable here (install or add its package "
                         "to PYTHONPATH).") from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"unknown task type {shown(name)}; valid: {', '.join(TASK_TYPES)}, or the import path of a "
                         "manyheads Task subclass ('my_package.tasks.MyTask').")
    return cls


def task_from_spec(spec: dict[str, Any]) -> Task:
    """Rebuild a task (settings and fitted state) from `Task.spec()`, as stored in a saved model's config."""
    spec = dict(spec)
    cls = resolve_task_type(spec.pop("type"))
    fitted = dict(spec.pop("fitted", None) or {})
    options = spec.pop("options", None)
    if options is not None:  # the first saved format: type options nested, fitted values among them
        for key, target in _OLD_FITTED.items():
            if key in options and not isinstance(options[key], str):
                fitted[target] = options.pop(key)
        spec.update(options)
        if spec.get("labels"):
            fitted.setdefault("labels", spec["labels"])
    task = cls(**spec)
    task.fitted = fitted
    return task


__all__ = ["GROUP_COLUMN", "LABEL_COLUMN", "TASK_COLUMN", "TASK_TYPES", "Classification", "DetectsConstant",
           "FitsOnPredictions", "MetricInputs", "MultiLabel", "OwnPredictionEncoding", "QuestionAnswering",
           "Regression", "Seq2Seq", "SequenceTask", "StockExport", "StockLayout", "Task", "TextGeneration",
           "TokenClassification", "TokenizedTask", "WordLevel", "apply_checkpoint_pooling", "checkpoint_pooling",
           "head_name", "higher_is_better", "main_metric_of", "resolve_task_type", "task_from_spec", "task_settings",
           "type_name"]

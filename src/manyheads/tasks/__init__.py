"""Task types. Adding one is a new module with a `Task` subclass plus one line in `TASK_TYPES`."""

from .base import Task
from .classification import ClassificationTask
from .multilabel import MultilabelTask
from .question_answering import QuestionAnsweringTask
from .regression import RegressionTask
from .token_classification import TokenClassificationTask

TASK_TYPES: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "multilabel": MultilabelTask,
    "regression": RegressionTask,
    "token_classification": TokenClassificationTask,
    "question_answering": QuestionAnsweringTask,
}

__all__ = ["TASK_TYPES", "Task", "ClassificationTask", "MultilabelTask", "RegressionTask", "TokenClassificationTask",
           "QuestionAnsweringTask"]

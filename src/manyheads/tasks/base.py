"""The task interface: everything specific to one kind of task lives behind it.

A task type is one module with one `Task` subclass, registered by one line in `TASK_TYPES`. It owns
its options, data checks, label inference, tokenization, head, loss, metrics and the post-processing
of predictions. The rest of manyheads (sampler, collator, model, trainer, CLI) only calls this interface,
so token classification and extractive QA plug in without changes elsewhere.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..modeling.heads import POOLING, SequenceHead, resolve_pooling

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from ..config import TaskConfig

TASK_COLUMN = "task"
# Key of a task-group micro-batch (gradient aggregation): {task name: that task's sub-batch}.
GROUP_COLUMN = "task_groups"
LABEL_COLUMN = "labels"


@dataclass
class NoOptions:
    """A task type without options of its own."""


@dataclass
class SequenceOptions:
    """Options shared by sequence-level task types (one prediction per text or pair)."""

    # How one vector is pooled from the encoder: auto | pooler | cls | mean (see modeling/heads.py).
    pooling: str = "auto"


class Task:
    """Base class of a task type. Subclasses set `type_name`, `Options` and override the hooks below."""

    type_name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    # Metric names this type reports and whether higher is better, in the order they are printed.
    METRICS: ClassVar[dict[str, bool]] = {}
    DEFAULT_MAIN_METRIC: ClassVar[str] = ""

    def __init__(self, config: TaskConfig):
        self.config = config
        self.name = config.name
        self.options = config.options

    # ----- config-time checks (no data, no weights) -----
    @classmethod
    def check_config(cls, config: TaskConfig) -> list[str]:
        """Problems in a task's keys, each one line; the base checks text columns and `main_metric`."""
        problems = []
        if not 1 <= len(config.text) <= 2:
            problems.append(
                f"text: got {config.text!r}; give one column (single text) or two (a pair), "
                "e.g. 'text: [sentence1, sentence2]'."
            )
        metrics = cls.metric_names(config)
        if config.main_metric is not None and config.main_metric not in metrics:
            problems.append(
                f"main_metric: {config.main_metric!r} is not a metric of type '{cls.type_name}'; "
                f"valid: {', '.join(metrics)}."
            )
        pooling = getattr(config.options, "pooling", "auto")
        if pooling not in POOLING:
            problems.append(f"pooling: got {pooling!r}; valid choices: {', '.join(POOLING)}.")
        if config.weight < 0 or not math.isfinite(config.weight):
            problems.append(f"weight: got {config.weight}; a loss weight must be a finite number >= 0.")
        return problems

    @classmethod
    def metric_names(cls, config: TaskConfig) -> list[str]:
        return list(cls.METRICS)

    @property
    def main_metric(self) -> str:
        return self.config.main_metric or self.DEFAULT_MAIN_METRIC

    def greater_is_better(self, metric: str) -> bool:
        return self.METRICS[metric]

    @property
    def labels(self) -> list[str]:
        return list(self.config.labels or [])

    @property
    def num_outputs(self) -> int:
        """Width of the head's output layer."""
        return len(self.labels)

    # ----- data -----
    def required_columns(self) -> list[str]:
        return list(self.config.text) + ([self.config.label] if self.config.label else [])

    def check_data(self, split: str, dataset: Dataset, source: str) -> list[str]:
        """Problems in one labelled split, each naming the file, row, column and value. Base: text cells."""
        return self.check_text(split, dataset, source)

    def check_text(self, split: str, dataset: Dataset, source: str) -> list[str]:
        """Problems in the input columns only (for unlabelled test splits too)."""
        problems = []
        for column in self.config.text:
            for row, value in enumerate(dataset[column]):
                if not isinstance(value, str):
                    problems.append(
                        f"{source}: data row {row + 1}, column '{column}': text cell is "
                        f"{value!r}, not a string. Fill or drop that row."
                    )
                    break
        return problems

    def setup_labels(self, train: Dataset | None) -> None:
        """Infer the label list from the training split when not declared, and resolve auto weights."""

    def encode(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> Any:
        """Tokenize a batch of raw rows (no padding: the collator pads per batch)."""
        texts = [batch[c] for c in self.config.text]
        return tokenizer(*texts, truncation=True, max_length=self.config.max_length)

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        """Labels in the form `collate_labels` expects, one per encoded row (`encoded`: a BatchEncoding)."""
        raise NotImplementedError

    def preprocess(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, with_labels: bool = True) -> Dataset:
        """Tokenized dataset with model inputs, `labels` (when `with_labels`) and the task name per row."""

        def _map(batch: dict[str, list]) -> dict[str, list]:
            encoding = self.encode(batch, tokenizer)
            encoded = dict(encoding)
            if with_labels:
                # The encoding itself, not a dict: token tasks need its word_ids() to align labels.
                encoded[LABEL_COLUMN] = self.encode_labels(batch, encoding)
            encoded[TASK_COLUMN] = [self.name] * len(encoded["input_ids"])
            return encoded

        return dataset.map(_map, batched=True, remove_columns=dataset.column_names,
                           desc=f"Tokenizing {self.name}")

    def collate_labels(self, labels: list, sequence_length: int) -> torch.Tensor:
        """Stack the labels of one micro-batch (`sequence_length` is the padded input length)."""
        return torch.tensor(labels)

    # ----- model -----
    def build_head(self, hidden_size: int, dropout: float, has_pooler: bool) -> nn.Module:
        """The head; the default pools one vector per sequence as `options.pooling` says."""
        try:
            pooling = resolve_pooling(self.options.pooling, has_pooler)
        except ValueError as err:
            raise ValueError(f"task '{self.name}': {err}") from None
        return SequenceHead(hidden_size, self.num_outputs, dropout, pooling)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ----- evaluation and prediction -----
    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        """Metrics of one evaluation; `features` is the tokenized eval set (QA needs its offsets)."""
        raise NotImplementedError

    # ----- export to a stock transformers model -----
    stock_auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    stock_problem_type: ClassVar[str | None] = None

    def export_head_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head's weights as the stock model should hold them (regression folds its target scaling in)."""
        return state

    def stock_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """This head's logits in the stock model's units (to check an export)."""
        return logits

    # Whether `postprocess` needs each row's text and token-to-word map (token-level tasks).
    needs_word_ids: ClassVar[bool] = False

    def prediction_encoding(self) -> str:
        """Tasks with equal keys (and input columns and max_length) share one encoder pass at prediction."""
        return "plain"

    def encode_for_prediction(self, columns: list[list[str]], tokenizer: Any,
                              with_words: bool) -> tuple[Any, list[dict]]:
        """Padded model inputs for raw rows (one text list per input column) and one meta dict per feature,
        whose "row" is the index of the row the feature comes from."""
        encoded = tokenizer(*columns, truncation=True, max_length=self.config.max_length, padding=True,
                            return_tensors="pt", return_offsets_mapping=with_words)
        offsets = encoded.pop("offset_mapping", None)
        metas = []
        for k, text in enumerate(columns[0]):
            meta: dict[str, Any] = {"row": k}
            if with_words:
                meta.update(text=text, word_ids=word_ids_from_offsets(text, offsets[k].tolist()))
            metas.append(meta)
        return encoded, metas

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """One JSON-serialisable prediction per row of `logits` (`inputs`: per-row text and word_ids)."""
        raise NotImplementedError


_WORD = re.compile(r"\S+")


def words_with_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace words of raw text and their character spans."""
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def word_ids_from_offsets(text: str, offsets: list[list[int]]) -> list[int | None]:
    """Whitespace-word index of each token from its character offsets (None for special/padding tokens)."""
    starts = [s for s, _ in words_with_spans(text)[1]]
    ids: list[int | None] = []
    for begin, end in offsets:
        word = bisect.bisect_right(starts, begin) - 1 if begin != end else -1
        ids.append(word if word >= 0 else None)
    return ids


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))

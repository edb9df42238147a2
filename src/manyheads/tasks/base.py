"""The task interface: everything specific to one kind of task lives behind it.

A task type is one module with one `Task` subclass (a dataclass of its settings), registered by one line in
`TASK_TYPES`, or defined in user code and used as it is. It owns its settings checks, the state it fits on
the training split (label list, class weights, target scaling: `fitted`, kept apart from the settings), data
checks, tokenization, head, loss, metrics and the post-processing of predictions. The rest of manyheads
(trainer, collator, model, predictor) only calls this interface.

```python
from manyheads import Classification
task = Classification(name="sst2", text="sentence", label="label")
```

A new type subclasses `Task` (or `SequenceTask`, or a built-in type) as a `@dataclass(kw_only=True)` and
implements four methods: `encode_labels` (raw labels -> what the loss takes), `loss`, `compute_metrics` and
`postprocess` (logits -> a JSON prediction); it declares `METRICS`. Everything else has a default that fits
sequence-level tasks and is overridden only when the type differs: `check` (settings), `fit` (state from the
training split), `check_data`, `required_columns`, `encode` / `collate_labels` (token- or span-level inputs),
`build_head`, `metric_inputs`, and the prediction / export hooks (`prediction_encoding`,
`encode_for_prediction`, `export_head_state`, `stock_logits`).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, shown
from .heads import POOLING, SequenceHead, resolve_pooling
from .labels import LabelReader, label_key, read_label_names

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

TASK_COLUMN = "task"
# Key of a task-group micro-batch (gradient aggregation): {task name: that task's sub-batch}.
GROUP_COLUMN = "task_groups"
LABEL_COLUMN = "labels"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


@dataclass(kw_only=True)
class Task:
    """Base class of a task type: its settings are the dataclass fields, its fitted state is `fitted`.

    Args:
        name: the task's name (letters, digits, `_`, `-`); metrics are logged as `eval_<name>_<metric>`.
        text: the input column, or two columns for a pair.
        label: the label column.
        labels: the label names in head order; inferred from the training split when absent.
        label_names: names of integer labels (0 -> first name), as a list or a file with one name per line.
        max_length: tokens per input (longer inputs are truncated).
        weight: static loss weight (used by the `static` weighting).
        main_metric: the metric that enters `eval_average` (default: the type's first).
        adapter: with soft or hybrid sharing (`Sharing`), whether this task gets its own LoRA adapter; False runs
            it on the shared encoder alone.
    """

    name: str
    text: list[str] | str = "text"
    label: str | None = "label"
    labels: list[str] | None = None
    label_names: list[str] | str | None = None
    max_length: int = 128
    weight: float = 1.0
    main_metric: str | None = None
    adapter: bool = True

    type_name: ClassVar[str] = ""
    # Metric names this type reports and whether higher is better, in the order they are printed.
    METRICS: ClassVar[dict[str, bool]] = {}
    # Whether `postprocess` needs each row's text and token-to-word map (token-level tasks).
    needs_word_ids: ClassVar[bool] = False
    # Whether the task generates text with a decoder instead of reading a head's logits (`seq2seq`).
    generates: ClassVar[bool] = False
    stock_auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    stock_problem_type: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        if isinstance(self.text, str):
            self.text = [self.text]
        self.label_names = read_label_names(self.label_names)
        if self.labels is not None:
            bad = [v for v in self.labels if isinstance(v, bool) or not isinstance(v, (str, int, float))]
            if bad:
                raise ConfigError(f"labels: {shown(bad[0])} is not a label name; give names (strings) or numbers.",
                                  where=f"{type(self).__name__}(name={self.name!r})")
            self.labels = [label_key(v) for v in self.labels]
        # What `fit` learns from the training split; saved with the settings, never written into them.
        self.fitted: dict[str, Any] = {}
        problems = self.check()
        if problems:
            raise ConfigError(problems, where=f"{type(self).__name__}(name={self.name!r})")

    # ----- settings -----
    def check(self) -> list[str]:
        """Problems in the settings, one line each (the base checks name, text columns, metric, weight)."""
        problems = []
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            problems.append(f"name: got {self.name!r}; use letters, digits, '_' or '-' (it becomes part of "
                            "metric names such as eval_<name>_accuracy).")
        if not 1 <= len(self.text) <= 2:
            problems.append(f"text: got {self.text!r}; give one column (single text) or two (a pair), "
                            "e.g. 'text: [sentence1, sentence2]'.")
        if self.main_metric is not None and self.main_metric not in self.METRICS:
            problems.append(f"main_metric: {self.main_metric!r} is not a metric of type '{self.type_name}'; "
                            f"valid: {', '.join(self.METRICS)}.")
        if self.weight < 0 or not math.isfinite(self.weight):
            problems.append(f"weight: got {self.weight}; a loss weight must be a finite number >= 0.")
        if self.max_length < 1:
            problems.append(f"max_length: got {self.max_length}; it must be >= 1.")
        if not isinstance(self.adapter, bool):
            problems.append(f"adapter: got {shown(self.adapter)}; give true or false (a YAML string such as \"yes\" "
                            "is not read as a switch).")
        for key in ("labels", "label_names"):
            values = getattr(self, key)
            if not isinstance(values, list):
                continue
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                problems.append(f"{key}: {shown(repeated)} appear more than once; each label once, in head order.")
        return problems

    def settings(self) -> dict[str, Any]:
        """The user's settings (the dataclass fields) as plain data."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def spec(self) -> dict[str, Any]:
        """What a saved model needs to rebuild this task: its type, settings and fitted state."""
        return {"type": self.type_key(), **self.settings(), "fitted": dict(self.fitted)}

    @classmethod
    def type_key(cls) -> str:
        """The registry name of a built-in type; the import path (`module.Class`) of a user-defined one."""
        # Built-in types are the classes of this package that set `type_name` themselves; a user's subclass of
        # one inherits the name but not the registry entry, so it is saved by its import path.
        if "type_name" in cls.__dict__ and cls.__module__.startswith(__package__ + "."):
            return cls.type_name
        return f"{cls.__module__}.{cls.__qualname__}"

    @property
    def type(self) -> str:
        """The type as a config names it (registry name or import path)."""
        return self.type_key()

    @property
    def main_metric_name(self) -> str:
        return self.main_metric or next(iter(self.METRICS))

    def greater_is_better(self, metric: str) -> bool:
        return self.METRICS.get(metric, True)

    @property
    def label_list(self) -> list[str]:
        """The label names in head order: declared, else fitted, else `label_names`."""
        return list(self.labels or self.fitted.get("labels") or self.label_names or [])

    @property
    def num_outputs(self) -> int | None:
        """Width of the head's output layer; None until the labels are known (declared or fitted)."""
        return len(self.label_list) or None

    # ----- data -----
    @property
    def reader(self) -> LabelReader:
        return LabelReader(self.label_names, getattr(self, "label_separator", None))

    def required_columns(self) -> list[str]:
        return list(self.text) + ([self.label] if self.label else [])

    def check_data(self, split: str, dataset: Dataset, source: str) -> list[str]:
        """Problems in one labelled split, each naming the file, row, column and value. Base: text cells."""
        return self.check_text(split, dataset, source)

    def check_text(self, split: str, dataset: Dataset, source: str) -> list[str]:
        """Problems in the input columns only (for unlabelled test splits too)."""
        for column in self.text:
            for row, value in enumerate(dataset[column]):
                if not isinstance(value, str):
                    return [f"{source}: data row {row + 1}, column '{column}': text cell is {shown(value)}, not a "
                            "string. Fill or drop that row."]
        return []

    def fit(self, train: Dataset | None) -> None:
        """Learn the fitted state (labels, weights, scaling) from the training split; the base learns nothing."""

    def fit_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Learn what the task needs from the tokenizer (a generation task: its special tokens); base: nothing."""

    def encode(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> Any:
        """Tokenize a batch of raw rows (no padding: the collator pads per batch)."""
        return tokenizer(*[batch[c] for c in self.text], truncation=True, max_length=self.max_length)

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

        return dataset.map(_map, batched=True, remove_columns=dataset.column_names, desc=f"Tokenizing {self.name}")

    def collate_labels(self, labels: list, sequence_length: int) -> torch.Tensor:
        """Stack the labels of one micro-batch (`sequence_length` is the padded input length)."""
        return torch.tensor(labels)

    # ----- model -----
    def build_head(self, hidden_size: int, dropout: float, has_pooler: bool) -> nn.Module:
        """The head; the default pools one vector per sequence as `pooling` says."""
        try:
            pooling = resolve_pooling(getattr(self, "pooling", "auto"), has_pooler)
        except ValueError as err:
            raise ValueError(f"task '{self.name}': {err}") from None
        return SequenceHead(hidden_size, self.num_outputs, dropout, pooling)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ----- evaluation and prediction -----
    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        """Metrics of one evaluation; `features` is the tokenized eval set (QA needs its offsets)."""
        raise NotImplementedError

    def fit_on_predictions(self, predictions: Any, labels: Any) -> None:
        """Fit state on the model's predictions for the run's eval split, at each evaluation of a trained model
        (multilabel: its decision thresholds); the base fits nothing."""

    def constant_predictions(self, predictions: Any, labels: Any) -> bool:
        """Whether every row got the same prediction (the head learnt nothing); the base cannot tell: False."""
        return False

    def metric_inputs(self, predictions: Any, labels: Any) -> tuple[Any, Any]:
        """Predictions and labels as a user's `compute_metrics` receives them (regression: in target units)."""
        return predictions, labels

    def export_head_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head's weights as the stock model should hold them (regression folds its target scaling in)."""
        return state

    def stock_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """This head's logits in the stock model's units (to check an export)."""
        return logits

    def prediction_encoding(self) -> str:
        """Tasks with equal keys (and input columns and max_length) share one encoder pass at prediction."""
        return "plain"

    def encode_for_prediction(self, columns: list[list[str]], tokenizer: Any,
                              with_words: bool) -> tuple[Any, list[dict]]:
        """Padded model inputs for raw rows (one text list per input column) and one meta dict per feature,
        whose "row" is the index of the row the feature comes from."""
        encoded = tokenizer(*columns, truncation=True, max_length=self.max_length, padding=True,
                            return_tensors="pt", return_offsets_mapping=with_words)
        offsets = encoded.pop("offset_mapping", None)
        metas = []
        for k, text in enumerate(columns[0]):
            meta: dict[str, Any] = {"row": k}
            if with_words:
                words, spans = split_words(text, tokenizer)
                meta.update(text=text, words=words, spans=spans,
                            word_ids=word_ids_from_spans(spans, offsets[k].tolist()))
            metas.append(meta)
        return encoded, metas

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """One JSON-serialisable prediction per row of `logits` (`inputs`: per-row text and word_ids)."""
        raise NotImplementedError


@dataclass(kw_only=True)
class SequenceTask(Task):
    """A task with one prediction per text or pair; `pooling` picks how one vector is pooled from the encoder:
    auto | pooler | cls | mean (see `heads.py`)."""

    pooling: str = "auto"

    def check(self) -> list[str]:
        problems = super().check()
        if self.pooling not in POOLING:
            problems.append(f"pooling: got {self.pooling!r}; valid choices: {', '.join(POOLING)}.")
        return problems


# Runs of letters/digits, or one punctuation mark: how BERT-style tokenizers (and CoNLL files) split words.
_WORD = re.compile(r"\w+|[^\w\s]")


def unknown_label_message(task: Task, kind: str, value: Any) -> str:
    """Why a row's label is refused: not among the labels the user declared, or (nothing declared) absent from the
    training split the labels were fitted on: the user never declared any, so do not say they did."""
    known = list(task.label_list)
    if task.labels or task.label_names:
        return f"{kind} {shown(value)} is not in the declared labels {known}. Add it to 'labels' or fix the row."
    return (f"{kind} {shown(value)} does not occur in the training split (labels found there: {known}), so the head "
            "has no output for it. Declare every label in 'labels', or move such rows into the training split.")


class SplitText(str):
    """Text joined with spaces from words the caller had already split (a list of words as input): it keeps those
    words, so a token task answers one tag per given word ("spider-man" stays one word), never a re-split."""

    words: list[str]

    def __new__(cls, words: Sequence[str]) -> SplitText:
        text = super().__new__(cls, " ".join(words))
        text.words = list(words)
        return text


def split_words(text: str, tokenizer: Any = None) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of raw text and their character spans, split as the tokenizer splits words (its pre-tokenizer),
    so "Chicago." is "Chicago" and "." as in training data; a pre-tokenizer that rewrites words (byte-level
    BPE's "Ġ") or none gives the same rule by regular expression. Words given already split (`SplitText`) are
    kept as they are."""
    if isinstance(text, SplitText):
        spans, start = [], 0
        for word in text.words:
            spans.append((start, start + len(word)))
            start += len(word) + 1
        return list(text.words), spans
    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if pre is not None:
        pieces = pre.pre_tokenize_str(text)
        if all(text[start:end] == word for word, (start, end) in pieces):
            return [word for word, _ in pieces], [tuple(span) for _, span in pieces]
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def word_ids_from_spans(spans: list[tuple[int, int]], offsets: list[list[int]]) -> list[int | None]:
    """Word index of each token from its character offsets (None for special/padding tokens)."""
    starts = [s for s, _ in spans]
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


def all_same(values: np.ndarray) -> bool:
    """Whether two or more predictions (class ids, tags, label rows) are all equal to the first: a constant head."""
    values = np.asarray(values)
    return len(values) > 1 and bool((values == values[0]).all())

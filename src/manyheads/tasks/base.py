"""The task interface: a small core that every type has, plus opt-in capabilities for what only some have.

A task type is one module with one `Task` subclass (a dataclass of its settings), registered by one line in
`TASK_TYPES`, or defined in user code and used as it is (saved by its import path). It owns its settings checks,
the state it fits on the training split (label list, class weights, target scaling: `fitted`, kept apart from
the settings), data checks, tokenization, head, loss, metrics and the post-processing of predictions. The rest of
manyheads (trainer, collator, model, evaluation, predictor, export) only calls this interface.

```python
from manyheads import Classification
task = Classification(name="sst2", text="sentence", label="label")
```

**The core** (`Task`), besides the settings fields:

- `type`: the type's one name (the registry name of a built-in type, the import path of a user's class);
  `METRICS`: the metrics it reports, and whether higher is better;
- `check()` (settings), `spec()` (type, settings and fitted state, what a saved model stores), `fit(train)`;
- `preprocess(dataset, tokenizer)` and `collate_labels(labels, length)`: training rows to padded batches;
- `build_head(...)` and `loss(logits, labels)`; `compute_metrics(predictions, labels)`;
- `encode_for_prediction(columns, tokenizer, with_words)` and `postprocess(logits, inputs)`: raw rows to JSON.

Every task also answers a few plain questions the rest of the library asks about any task: `label_list` and
`num_outputs` (its labels and head width), and the data checks `required_columns()` and `check_data(...)`.
Questions answered from the settings alone are functions of this module, not members: `task_settings(task)`,
`main_metric_of(task)`, `higher_is_better(task, metric)`.

**Capabilities** (`capabilities.py`): what only some types need is a protocol (or a marker class) that a type
implements and a caller checks with `isinstance`: `WordLevel` (predictions per word), `OwnPredictionEncoding`
(windows, prefixes), `TextGeneration` (a decoder instead of a head), `StockExport` (the stock `AutoModelFor...`
layout of its head), `FitsOnPredictions` (multilabel thresholds), `DetectsConstant`, `MetricInputs`.

**Defaults** for types that tokenize rows and encode their labels row by row live in `TokenizedTask` (`encode`,
`encode_labels`, `reader`) and, for one prediction per text or pair, in `SequenceTask` (`pooling`, the
`SequenceHead`, its stock layout). A new type subclasses one of them (or a built-in type) as a
`@dataclass(kw_only=True)`, implements `encode_labels`, `loss`, `compute_metrics` and `postprocess`, declares
`METRICS`, and opts into capabilities as it needs.
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
from .capabilities import StockLayout
from .fingerprint import map_fingerprint
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


def type_name(cls: type) -> str:
    """The one name of a task type: its key in `TASK_TYPES` for a registered class, else its import path
    (`module.Class`), which `resolve_task_type` imports back (a user's subclass of a built-in type included)."""
    from . import TASK_TYPES  # the registry imports every type module, this one included

    for name, registered in TASK_TYPES.items():
        if registered is cls:
            return name
    return f"{cls.__module__}.{cls.__qualname__}"


class _TypeName:
    """`Task.type` on the class and on its instances (a descriptor, so that both read the same name)."""

    def __get__(self, task: Any, owner: type) -> str:
        return type_name(owner)


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
        head: the name of the head this task trains (default: its own head, named after the task). Datasets of the
            same task (an RTE-like and an MNLI-like set with `head: nli`) train ONE head: each keeps its own
            sampling, loss and metrics, and the saved model, `predict`, `export` and `serve` have one head `nli`.
            They must be of one type with the same labels after fitting.
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
    head: str | None = None

    # The type's one name, on the class and its instances: the registry name of a built-in type, the import path
    # of any other (see `type_name`). Not annotated: a dataclass reads annotated class attributes while the class
    # is built, before the registry exists.
    type = _TypeName()
    # Metric names this type reports and whether higher is better, in the order they are printed.
    METRICS: ClassVar[dict[str, bool]] = {}

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
            problems.append(f"main_metric: {self.main_metric!r} is not a metric of type '{self.type}'; "
                            f"valid: {', '.join(self.METRICS)}.")
        if self.weight < 0 or not math.isfinite(self.weight):
            problems.append(f"weight: got {self.weight}; a loss weight must be a finite number >= 0.")
        if self.head is not None and (not isinstance(self.head, str) or not _NAME.match(self.head)):
            problems.append(f"head: got {shown(self.head)}; name the shared head with letters, digits, '_' or '-' "
                            "(tasks with the same head name train one head).")
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

    def spec(self) -> dict[str, Any]:
        """What a saved model needs to rebuild this task: its type, settings and fitted state."""
        return {"type": self.type, **task_settings(self), "fitted": dict(self.fitted)}

    @property
    def label_list(self) -> list[str]:
        """The label names in head order: declared, else fitted, else `label_names`."""
        return list(self.labels or self.fitted.get("labels") or self.label_names or [])

    @property
    def num_outputs(self) -> int | None:
        """Width of the head's output layer; None until the labels are known (declared or fitted), and for a task
        without a head (text generation)."""
        return len(self.label_list) or None

    # ----- data -----
    def required_columns(self) -> list[str]:
        """The columns a labelled split must have."""
        return list(self.text) + ([self.label] if self.label else [])

    def check_data(self, split: str, dataset: Dataset, source: str, labelled: bool = True) -> list[str]:
        """Problems in one split, each naming the file, row, column and value: the input columns, and the labels
        when `labelled` (an unlabelled test split has none). Base: text cells."""
        for column in self.text:
            for row, value in enumerate(dataset[column]):
                if not isinstance(value, str):
                    return [f"{source}: data row {row + 1}, column '{column}': text cell is {shown(value)}, not a "
                            "string. Fill or drop that row."]
        return []

    def fit(self, train: Dataset | None) -> None:
        """Learn the fitted state (labels, weights, scaling) from the training split; the base learns nothing."""

    def preprocess(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, with_labels: bool = True) -> Dataset:
        """Tokenized dataset with model inputs, `labels` (when `with_labels`) and the task name per row (see
        `TokenizedTask` for the usual implementation)."""
        raise NotImplementedError

    def collate_labels(self, labels: list, sequence_length: int) -> torch.Tensor:
        """Stack the labels of one micro-batch (`sequence_length` is the padded input length)."""
        return torch.tensor(labels)

    # ----- model -----
    def build_head(self, hidden_size: int, dropout: float, has_pooler: bool) -> nn.Module:
        """The head: a module `(token states, pooled state or None, attention mask) -> logits`."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ----- evaluation and prediction -----
    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        """Metrics of one evaluation; `features` is the tokenized eval set (QA needs its offsets)."""
        raise NotImplementedError

    def encode_for_prediction(self, columns: list[list[str]], tokenizer: Any,
                              with_words: bool) -> tuple[Any, list[dict]]:
        """Padded model inputs for raw rows (one text list per input column) and one meta dict per feature,
        whose "row" is the index of the row the feature comes from; `with_words` (a `WordLevel` task reads the
        pass) adds each row's text, words, word spans and word ids per token."""
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
        """One JSON-serialisable prediction per row of `logits` (`inputs`: the metas of `encode_for_prediction`)."""
        raise NotImplementedError



def task_settings(task: Task) -> dict[str, Any]:
    """A task's settings (its dataclass fields) as plain data."""
    return {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}


def head_name(task: Task) -> str:
    """The head `task` trains: its `head` setting, else its own name."""
    return task.head or task.name


def main_metric_of(task: Task) -> str:
    """The metric of `task` that enters `eval_average`: its `main_metric`, else its type's first."""
    return task.main_metric or next(iter(task.METRICS))


def higher_is_better(task: Task, metric: str) -> bool:
    """Whether a higher value of `metric` is better (a metric the type does not declare: yes)."""
    return task.METRICS.get(metric, True)

@dataclass(kw_only=True)
class TokenizedTask(Task):
    """Defaults of a type that tokenizes each row (`encode`) and encodes its labels row by row (`encode_labels`);
    `preprocess` is built from the two."""

    @property
    def reader(self) -> LabelReader:
        """Reads raw label cells as label names (`label_names` maps integers to names)."""
        return LabelReader(self.label_names, None)

    def encode(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> Any:
        """Tokenize a batch of raw rows (no padding: the collator pads per batch)."""
        return tokenizer(*[batch[c] for c in self.text], truncation=True, max_length=self.max_length)

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        """Labels in the form `collate_labels` expects, one per encoded row (`encoded`: a BatchEncoding)."""
        raise NotImplementedError

    def preprocess(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, with_labels: bool = True) -> Dataset:
        def _map(batch: dict[str, list]) -> dict[str, list]:
            encoding = self.encode(batch, tokenizer)
            encoded = dict(encoding)
            if with_labels:
                # The encoding itself, not a dict: token tasks need its word_ids() to align labels.
                encoded[LABEL_COLUMN] = self.encode_labels(batch, encoding)
            encoded[TASK_COLUMN] = [self.name] * len(encoded["input_ids"])
            return encoded

        # The fingerprint is given: datasets would pickle the tokenizer in `_map`'s closure for every task.
        fingerprint = map_fingerprint(dataset, tokenizer, self, with_labels, _map.__code__)
        return dataset.map(_map, batched=True, remove_columns=dataset.column_names, desc=f"Tokenizing {self.name}",
                           new_fingerprint=fingerprint)


@dataclass(kw_only=True)
class SequenceTask(TokenizedTask):
    """A task with one prediction per text or pair; `pooling` picks how one vector is pooled from the encoder:
    auto | pooler | cls | mean | max (see `heads.py`). Exportable as a stock `AutoModelForSequenceClassification`
    (`StockExport`) when its pooling has a stock equivalent."""

    pooling: str = "auto"

    def check(self) -> list[str]:
        problems = super().check()
        if self.pooling not in POOLING:
            problems.append(f"pooling: got {self.pooling!r}; valid choices: {', '.join(POOLING)}.")
        return problems

    def build_head(self, hidden_size: int, dropout: float, has_pooler: bool) -> nn.Module:
        try:
            pooling = resolve_pooling(self.pooling, has_pooler)
        except ValueError as err:
            raise ValueError(f"task '{self.name}': {err}") from None
        return SequenceHead(hidden_size, self.num_outputs, dropout, pooling)

    def stock_layout(self, head: nn.Module) -> StockLayout:
        return StockLayout("AutoModelForSequenceClassification", head.stock_key_maps())


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

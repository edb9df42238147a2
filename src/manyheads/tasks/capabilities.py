"""What only some task types can do: opt-in capabilities, checked with `isinstance` by the code that needs them.

The `Task` core (`base.py`) is what every type has. A type that can do more says so by implementing one of these
protocols (or, for a capability without methods, by subclassing its marker class), and the caller asks
`isinstance(task, Capability)` instead of reading a flag:

| capability            | who has it                           | who checks it                                      |
|-----------------------|--------------------------------------|----------------------------------------------------|
| `WordLevel`           | token_classification                 | serving/predictor.py (words and token offsets)     |
| `OwnPredictionEncoding` | question_answering, seq2seq        | serving/predictor.py (which tasks share a pass)    |
| `TextGeneration`      | seq2seq                              | modeling/decoders.py (`TaskDecoder`), recipe (no   |
|                       |                                      | labels to fit); the rest reaches generation only   |
|                       |                                      | through `MultiTaskModel.task_decoder(name)`        |
| `StockExport`         | the built-in types with a head; a    | export/stock.py                                    |
|                       | user type that has `stock_layout`    |                                                    |
| `FitsOnPredictions`   | multilabel (decision thresholds)     | training/evaluation.py                             |
| `DetectsConstant`     | every built-in type but QA           | training/evaluation.py                             |
| `MetricInputs`        | regression (target units)            | tasks/metrics.py (a user's compute_metrics)        |
| `ConstantBaseline`    | classification, multilabel           | callbacks/stalled_heads.py (declared there)        |

A user-defined type opts in the same way: implement the methods, nothing to register.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


class WordLevel:
    """Marker: the type predicts per word of the input (token classification). Prediction then gives
    `postprocess` each row's text, words, word spans and the word index of every token, and accepts a row's
    words as a list of strings."""


@runtime_checkable
class OwnPredictionEncoding(Protocol):
    """A type whose `encode_for_prediction` differs from the plain tokenization (windows, a prefix): tasks with
    equal keys (and input columns and max_length) share one encoder pass at prediction; a type without this
    capability encodes as "plain"."""

    def prediction_encoding(self) -> str: ...


@runtime_checkable
class TextGeneration(Protocol):
    """A type that generates text with a decoder instead of reading a head's logits (`seq2seq`).

    The model builds a `manyheads.modeling.decoders.TaskDecoder` for such a task, and the trainer, evaluation,
    prediction and export only talk to that object.
    """

    # Rows of an eval split that evaluation generates for the metrics (None: all).
    max_eval_samples: int | None

    def decoder_key(self) -> str:
        """The name of the decoder module the task uses on an encoder-only backbone (tasks may share one)."""
        ...

    def generation_options(self) -> dict[str, Any]:
        """Keyword arguments of `generate()`."""
        ...

    def fit_tokenizer(self, tokenizer: Any) -> None:
        """Learn the special tokens around a target from the tokenizer."""
        ...

    def decode(self, sequences: Any, tokenizer: Any) -> list[str]:
        """Generated token ids (rows) as the texts `compute_metrics` and `postprocess` take."""
        ...


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class StockLayout:
    """How one task maps onto a stock `transformers` model of its kind (for `manyheads export` and its check).

    Attributes:
        auto_class: the stock class's name in `transformers`, e.g. "AutoModelForSequenceClassification".
        key_maps: our head's state-dict keys -> the stock model's head keys, one map per encoder family; the one
            whose stock keys are exactly the stock model's head keys is used (BERT's classifier, RoBERTa's
            classification head, ...).
        problem_type: the stock config's `problem_type`, if the stock model needs one.
        head_state: our head's weights as the stock model should hold them (regression folds its target
            scaling in).
        our_logits: our head's logits in the stock model's units (to check the export).
        stock_logits: the stock model's output as one logits tensor shaped as ours.
    """

    auto_class: str
    key_maps: tuple[dict[str, str], ...]
    problem_type: str | None = None
    head_state: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = field(default=_same)
    our_logits: Callable[[torch.Tensor], torch.Tensor] = field(default=_same)
    stock_logits: Callable[[Any], torch.Tensor] = field(default=lambda output: output.logits)


@runtime_checkable
class StockExport(Protocol):
    """A type that can be exported as a stock `AutoModelFor...` folder (one task: encoder + its head)."""

    def stock_layout(self, head: torch.nn.Module) -> StockLayout:
        """The layout of this task's `head` (the module `build_head` made). Raises ValueError, saying why, when
        this head has no stock equivalent (mean pooling, for example)."""
        ...


@runtime_checkable
class FitsOnPredictions(Protocol):
    """A type that fits state on the model's predictions for the run's eval split at each evaluation of a trained
    model (multilabel: its decision thresholds)."""

    def fit_on_predictions(self, predictions: Any, labels: Any) -> None: ...


@runtime_checkable
class DetectsConstant(Protocol):
    """A type that can tell whether every row got the same prediction (the head learnt nothing); logged as
    `eval_<task>_constant_predictions` for `StalledHeadsCallback`."""

    def constant_predictions(self, predictions: Any, labels: Any) -> bool: ...


@runtime_checkable
class MetricInputs(Protocol):
    """A type whose predictions and labels reach a user's `compute_metrics` transformed (regression: in the
    target's units, not the normalised ones the head is trained on)."""

    def metric_inputs(self, predictions: Any, labels: Any) -> tuple[Any, Any]: ...


__all__ = ["DetectsConstant", "FitsOnPredictions", "MetricInputs", "OwnPredictionEncoding", "StockExport",
           "StockLayout", "TextGeneration", "WordLevel"]

"""Task heads. Each takes the encoder's token states and pooled state and returns logits.

`SequenceHead` pools one vector per sequence, three ways:
- `pooler`: the encoder's own pooler output, then dropout + linear (as `BertForSequenceClassification`);
- `cls`: dense + tanh on the first token, then dropout + linear (as `RobertaClassificationHead`);
- `mean`: masked mean of the token states (how sentence-transformers models such as all-MiniLM-L6-v2
  were trained), then dropout + linear;
- `max`: masked max of the token states per dimension (sentence-transformers' `pooling_mode_max_tokens`), then
  dropout + linear: one token standing out can decide, where a mean dilutes it over the sentence.
`auto` picks `pooler` when the encoder has one, else `cls`, so a one-task model matches the stock
`AutoModelForSequenceClassification` and can be exported as one.

Each head says how its weights map onto the stock model of its kind (`stock_key_maps`: our state-dict keys -> the
stock head's, one map per encoder family); the task's `stock_layout` (the `StockExport` capability) hands them to
the export, which uses the map whose keys the stock model has.
"""

from __future__ import annotations

import torch
from torch import nn

POOLING = ("auto", "pooler", "cls", "mean", "max")

_LINEAR = {"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}
# RoBERTa-family `...ClassificationHead`: dense + tanh on the first token, then `out_proj`.
_DENSE_THEN_LINEAR = {"dense.weight": "classifier.dense.weight", "dense.bias": "classifier.dense.bias",
                      "classifier.weight": "classifier.out_proj.weight", "classifier.bias": "classifier.out_proj.bias"}


def resolve_pooling(pooling: str, has_pooler: bool) -> str:
    if pooling == "auto":
        return "pooler" if has_pooler else "cls"
    if pooling == "pooler" and not has_pooler:
        raise ValueError("pooling 'pooler' needs an encoder with a pooler layer; use 'cls' or 'mean'")
    return pooling


class SequenceHead(nn.Module):
    """One vector per sequence -> `num_outputs` logits."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, pooling: str):
        super().__init__()
        self.pooling = pooling
        if pooling == "cls":
            self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_outputs)

    def forward(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor | None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "pooler":
            features = pooled_output
        elif self.pooling == "cls":
            features = torch.tanh(self.dense(self.dropout(sequence_output[:, 0])))
        else:
            if attention_mask is None:
                attention_mask = torch.ones(sequence_output.shape[:2], device=sequence_output.device)
            mask = attention_mask.unsqueeze(-1).to(sequence_output.dtype)
            if self.pooling == "max":
                # Padding can never be the max: it is pushed to the dtype's lowest value (finite, so an all-padding
                # row, which real batches do not have, gives a finite value rather than -inf).
                lowest = torch.finfo(sequence_output.dtype).min
                features = sequence_output.masked_fill(mask == 0, lowest).amax(1)
            else:
                features = (sequence_output * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.classifier(self.dropout(features))

    def stock_key_maps(self) -> tuple[dict[str, str], ...]:
        """Pooler heads are BERT's classifier, cls heads RoBERTa's classification head; mean and max pooling have
        no stock sequence classifier (ValueError)."""
        if self.pooling in ("mean", "max"):
            raise ValueError(f"uses {self.pooling} pooling, which no stock AutoModelForSequenceClassification has; "
                             "train it with 'pooling: pooler' (BERT family) or 'cls' (RoBERTa family) to export")
        return (_LINEAR, _DENSE_THEN_LINEAR)


class TokenHead(nn.Module):
    """One vector per token -> `num_outputs` logits per token (as `BertForTokenClassification`)."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_outputs)

    def forward(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor | None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(sequence_output))

    def stock_key_maps(self) -> tuple[dict[str, str], ...]:
        return (_LINEAR,)


class SpanHead(nn.Module):
    """Start and end logits per token (as `BertForQuestionAnswering.qa_outputs`): output [..., 2]."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.qa_outputs = nn.Linear(hidden_size, 2)

    def forward(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor | None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.qa_outputs(sequence_output)

    def stock_key_maps(self) -> tuple[dict[str, str], ...]:
        return ({"qa_outputs.weight": "qa_outputs.weight", "qa_outputs.bias": "qa_outputs.bias"},)

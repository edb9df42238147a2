"""A user-defined task type, in a module of its own: pair ranking, with its own head module and stock layout.

Nothing in manyheads knows this module. The type subclasses `TokenizedTask` (tokenize rows, encode labels row by
row), and opts into two capabilities by implementing their methods: `StockExport` (`stock_layout`: the head's
`ranker` layer is a stock `BertForSequenceClassification`'s `classifier`) and `DetectsConstant`. A saved model
names the type by its import path, `user_tasks.pair_ranking.PairRanking`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from manyheads.tasks import StockLayout, TokenizedTask

LABELS = ["irrelevant", "relevant"]


class PairRankingHead(nn.Module):
    """The encoder's pooled [CLS] state of a (query, passage) pair -> (irrelevant, relevant) logits."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.ranker = nn.Linear(hidden_size, len(LABELS))

    def forward(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor | None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.ranker(self.dropout(pooled_output))


@dataclass(kw_only=True)
class PairRanking(TokenizedTask):
    """Is the passage relevant to the query? `label` holds 0/1 (or true/false) per pair.

    Args:
        margin: only here to show a setting of the type's own (saved and reloaded with the model).
    """

    text: list[str] | str = field(default_factory=lambda: ["query", "passage"])
    label: str | None = "relevant"
    margin: float = 0.5

    METRICS = {"accuracy": True, "mean_relevance_gap": True}

    def check(self) -> list[str]:
        problems = super().check()
        if len(self.text) != 2:
            problems.append(f"text: got {self.text!r}; give [query column, passage column].")
        return problems

    @property
    def label_list(self) -> list[str]:
        return list(LABELS)

    @property
    def num_outputs(self) -> int:
        return len(LABELS)

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        return [int(bool(v)) for v in batch[self.label]]

    def build_head(self, hidden_size: int, dropout: float, has_pooler: bool) -> nn.Module:
        if not has_pooler:
            raise ValueError(f"task '{self.name}': pair ranking reads the encoder's pooler output")
        return PairRankingHead(hidden_size, dropout)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), labels.long())

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        predictions, labels = np.asarray(predictions), np.asarray(labels)
        gap = predictions[:, 1] - predictions[:, 0]
        relevant, irrelevant = gap[labels == 1], gap[labels == 0]
        spread = (relevant.mean() if len(relevant) else 0.0) - (irrelevant.mean() if len(irrelevant) else 0.0)
        return {"accuracy": float((predictions.argmax(-1) == labels).mean()), "mean_relevance_gap": float(spread)}

    def constant_predictions(self, predictions: Any, labels: Any) -> bool:
        chosen = np.asarray(predictions).argmax(-1)
        return len(chosen) > 1 and bool((chosen == chosen[0]).all())

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        logits = np.asarray(logits, dtype=np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return [{"label": LABELS[int(p.argmax())], "relevance": float(p[1])} for p in probs]

    # The StockExport capability: where this head's weights go in a stock model.
    def stock_layout(self, head: nn.Module) -> StockLayout:
        return StockLayout("AutoModelForSequenceClassification",
                           ({"ranker.weight": "classifier.weight", "ranker.bias": "classifier.bias"},),
                           problem_type="single_label_classification")

"""`question_answering`: extractive QA (SQuAD v1.1); start/end cross-entropy; exact match and F1.

Rows give a question, a context and the answers (`answers: {text: [...], answer_start: [...]}` as in
SQuAD, which `format: squad` produces from the official JSON; or flat `answer_text_column` /
`answer_start_column`). Long contexts are split into overlapping windows (`max_length`, `doc_stride`);
a window that does not hold the whole answer is labelled with the [CLS] position, as in the reference
SQuAD recipe. At evaluation and prediction, every valid span of every window (inside the context,
end >= start, at most `max_answer_length` tokens) is scored, the most probable one is kept and mapped back
to characters of the original context.
"""

from __future__ import annotations

import collections
import re
import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.special import logsumexp
from torch import nn

from ..errors import shown
from .base import TokenizedTask
from .capabilities import StockLayout
from .heads import SpanHead

if TYPE_CHECKING:
    from datasets import Dataset

NO_OFFSET = [-1, -1]


# ----- official SQuAD v1.1 evaluation, re-implemented from its definition -----
def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, articles (a, an, the) and extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(predicted) & collections.Counter(gold)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: list[list[int]],
              max_answer_length: int) -> tuple[float, int, int] | None:
    """(probability, first char, last char + 1) of the best valid span of one window, or None.

    Start and end are softmax-normalised over the window's context tokens only, so probabilities of spans
    from different windows of one example are comparable; every valid span is scored (end >= start, at most
    `max_answer_length` tokens), which is exact where a top-n-best search can miss the best pair.
    """
    length = min(len(offsets), len(start_logits))
    context = np.array([o != NO_OFFSET for o in offsets[:length]], dtype=bool)
    if not context.any():
        return None
    starts = np.where(context, start_logits[:length].astype(np.float64), -np.inf)
    ends = np.where(context, end_logits[:length].astype(np.float64), -np.inf)
    starts -= logsumexp(starts[context])
    ends -= logsumexp(ends[context])
    upper = np.triu(np.ones((length, length), dtype=bool))
    band = upper & ~np.triu(upper, k=max_answer_length)
    scores = np.where(band, starts[:, None] + ends[None, :], -np.inf)
    s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)
    if not np.isfinite(scores[s, e]):
        return None
    return float(np.exp(scores[s, e])), offsets[s][0], offsets[e][1]


@dataclass(kw_only=True)
class QuestionAnswering(TokenizedTask):
    """Extractive question answering.

    Args:
        text: [question column, context column].
        label: the SQuAD-style answers column (`{text: [...], answer_start: [...]}`).
        doc_stride: overlap, in tokens, of the windows a long context is split into.
        max_answer_length: longest answer span, in tokens.
        answer_text_column, answer_start_column: flat answer columns instead of `label`.
        (and every `Task` argument)
    """

    text: list[str] | str = field(default_factory=lambda: ["question", "context"])
    label: str | None = "answers"
    doc_stride: int = 128
    max_answer_length: int = 30
    answer_text_column: str | None = None
    answer_start_column: str | None = None

    METRICS = {"f1": True, "exact_match": True}

    def check(self) -> list[str]:
        problems = super().check()
        if len(self.text) != 2:
            problems.append(f"text: got {self.text!r}; give [question column, context column].")
        if self.doc_stride >= self.max_length:
            problems.append(f"doc_stride: {self.doc_stride} must be smaller than max_length ({self.max_length}).")
        if bool(self.answer_text_column) != bool(self.answer_start_column):
            problems.append("answer_text_column and answer_start_column go together; give both or neither.")
        return problems

    @property
    def num_outputs(self) -> int:
        return 2

    def required_columns(self) -> list[str]:
        answers = [self.answer_text_column, self.answer_start_column] if self.answer_text_column \
            else [self.label]
        return list(self.text) + answers

    def _answers(self, batch: dict[str, list], row: int) -> tuple[list[str], list[int]]:
        if self.answer_text_column:
            return [batch[self.answer_text_column][row]], [int(batch[self.answer_start_column][row])]
        answers = batch[self.label][row]
        return list(answers["text"]), [int(s) for s in answers["answer_start"]]

    def check_data(self, split: str, dataset: Dataset, source: str, labelled: bool = True) -> list[str]:
        problems = super().check_data(split, dataset, source, labelled)
        if problems or not labelled:
            return problems
        batch = dataset[:]
        context_col = self.text[1]
        for row, context in enumerate(batch[context_col]):
            texts, starts = self._answers(batch, row)
            if not texts:
                return [f"{source}: data row {row + 1}: no answer. Extractive QA needs one per question."]
            if context[starts[0]:starts[0] + len(texts[0])] != texts[0]:
                found = context[starts[0]:starts[0] + len(texts[0])]
                return [f"{source}: data row {row + 1}: answer {shown(texts[0])} not found at offset {starts[0]} "
                        f"of the context (found {shown(found)}). Fix answer_start."]
        return problems

    # ----- features -----
    def encode(self, batch: dict[str, list], tokenizer: Any) -> Any:
        question_col, context_col = self.text
        # Leading spaces in questions waste window tokens on some tokenizers (as in the reference recipe).
        questions = [q.lstrip() for q in batch[question_col]]
        encoded = tokenizer(questions, batch[context_col], truncation="only_second", max_length=self.max_length,
                            stride=self.doc_stride, return_overflowing_tokens=True,
                            return_offsets_mapping=True)
        rows = encoded.pop("overflow_to_sample_mapping")
        # Offsets only for context tokens: spans can never start in the question or on special tokens.
        encoded["offset_mapping"] = [
            [list(o) if seq == 1 else NO_OFFSET for o, seq in zip(offsets, encoded.sequence_ids(i))]
            for i, offsets in enumerate(encoded["offset_mapping"])
        ]
        encoded["example_index"] = [batch["example_index"][r] for r in rows] if "example_index" in batch else rows
        encoded["context"] = [batch[context_col][r] for r in rows]
        encoded["row_in_batch"] = rows
        return encoded

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        labels = []
        for i, row in enumerate(encoded["row_in_batch"]):
            texts, starts = self._answers(batch, row)
            first, last = starts[0], starts[0] + len(texts[0])
            offsets = encoded["offset_mapping"][i]
            context = [k for k, o in enumerate(offsets) if o != NO_OFFSET]
            if not context or offsets[context[0]][0] > first or offsets[context[-1]][1] < last:
                labels.append([0, 0])  # answer not wholly in this window: point at [CLS]
                continue
            start = next(k for k in context if offsets[k][1] > first)
            end = next(k for k in reversed(context) if offsets[k][0] < last)
            labels.append([start, end])
        return labels

    def preprocess(self, dataset: Dataset, tokenizer: Any, with_labels: bool = True) -> Dataset:
        """Windows of each example, keeping `example_index`, `context` and token offsets for evaluation."""
        indexed = dataset.map(lambda b, idx: {"example_index": idx}, with_indices=True, batched=True)
        features = super().preprocess(indexed, tokenizer, with_labels)
        if with_labels:
            rows = indexed[:]  # materialise once: indexing a Dataset per row is slow
            gold = [self._answers(rows, r)[0] for r in range(len(indexed))]
            features = features.add_column("gold", [gold[i] for i in features["example_index"]])
        return features.remove_columns(["row_in_batch"])

    def prediction_encoding(self) -> str:
        return f"windows-{self.doc_stride}"

    def encode_for_prediction(self, columns: list[list[str]], tokenizer: Any,
                              with_words: bool) -> tuple[Any, list[dict]]:
        questions, contexts = columns
        encoded = tokenizer([q.lstrip() for q in questions], contexts, truncation="only_second",
                            max_length=self.max_length, stride=self.doc_stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True, padding=True,
                            return_tensors="pt")
        rows = encoded.pop("overflow_to_sample_mapping").tolist()
        offsets = encoded.pop("offset_mapping").tolist()
        metas = [{"row": r, "context": contexts[r],
                  "offsets": [o if seq == 1 else NO_OFFSET for o, seq in zip(offsets[i], encoded.sequence_ids(i))]}
                 for i, r in enumerate(rows)]
        return encoded, metas

    def collate_labels(self, labels: list, sequence_length: int) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.long)

    def build_head(self, hidden_size: int, dropout: float, has_pooler: bool) -> nn.Module:
        return SpanHead(hidden_size)

    def stock_layout(self, head: nn.Module) -> StockLayout:
        return StockLayout("AutoModelForQuestionAnswering", head.stock_key_maps(),
                           stock_logits=lambda output: torch.stack([output.start_logits, output.end_logits], -1))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        start = nn.functional.cross_entropy(logits[..., 0], labels[:, 0])
        end = nn.functional.cross_entropy(logits[..., 1], labels[:, 1])
        return (start + end) / 2

    # ----- evaluation and prediction -----
    def _best_per_example(self, logits: list[np.ndarray], offsets: list[list[list[int]]], examples: list[int],
                          contexts: list[str]) -> dict[int, dict[str, Any]]:
        """The most probable answer of each example over all of its windows."""
        best: dict[int, dict[str, Any]] = {}
        for window, offs, example, context in zip(logits, offsets, examples, contexts):
            span = best_span(window[:, 0], window[:, 1], offs, self.max_answer_length)
            if span is not None and (example not in best or span[0] > best[example]["score"]):
                best[example] = {"answer": context[span[1]:span[2]], "start": span[1], "end": span[2],
                                 "score": span[0]}
        return best

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        if features is None:
            raise ValueError("question answering metrics need the evaluation features (offsets, contexts)")
        best = self._best_per_example(list(predictions), features["offset_mapping"], features["example_index"],
                                      features["context"])
        golds = dict(zip(features["example_index"], features["gold"]))
        em = [max(exact_match(best.get(e, {}).get("answer", ""), g) for g in gold) for e, gold in golds.items()]
        f1 = [max(token_f1(best.get(e, {}).get("answer", ""), g) for g in gold) for e, gold in golds.items()]
        return {"f1": float(np.mean(f1)), "exact_match": float(np.mean(em))}

    def postprocess(self, logits: Any, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Best answer per input row from all of its windows (`inputs`: one dict per window)."""
        if inputs is None:
            raise ValueError("question answering needs each window's offsets and context")
        best = self._best_per_example(list(logits), [m["offsets"] for m in inputs], [m["row"] for m in inputs],
                                      [m["context"] for m in inputs])
        rows = max((m["row"] for m in inputs), default=-1) + 1
        empty = {"answer": "", "start": 0, "end": 0, "score": 0.0}
        return [best.get(r, empty) for r in range(rows)]

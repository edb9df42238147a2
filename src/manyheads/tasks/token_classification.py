"""`token_classification`: one tag per word (NER, POS); cross-entropy per token; seqeval entity F1.

Tags that are not entity spans (POS, `NN`/`VBZ`) take `scheme: none`: f1/precision/recall are then averaged over
tags (macro) and `accuracy` is per word; entity spans are neither scored nor predicted.

Input is a list of words and a list of tags per row (`text: tokens`, `label: tags`): CoNLL column files
(`format: conll`) are read into exactly these two columns. Words are split into sub-word tokens; the first
sub-token of a word carries its tag and the others are ignored by the loss (`label_all_subtokens: true`
tags them too, with `B-` turned into `I-`). Predictions come back as one tag per ORIGINAL word plus the
entity spans, with character offsets into the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2, IOBES
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from ..errors import shown
from .base import TokenizedTask, all_same, softmax, unknown_label_message
from .capabilities import StockLayout, WordLevel
from .heads import TokenHead
from .labels import sorted_labels

if TYPE_CHECKING:
    from datasets import Dataset

IGNORE = -100
SCHEMES = ("IOB2", "IOBES", "none")
PREFIXES = {"IOB2": ("B", "I"), "IOBES": ("B", "I", "E", "S")}


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word + 1) of each entity in IOB2 or IOBES tags."""
    entities, start, kind = [], None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix in ("I", "E") and kind == label and start is not None
        if start is not None and not continues:
            entities.append((kind, start, i))
            start, kind = None, None
        if prefix in ("B", "S") or (prefix in ("I", "E") and start is None):
            start, kind = i, label
        if prefix in ("E", "S") and start is not None:
            entities.append((kind, start, i + 1))
            start, kind = None, None
    return entities


def first_tokens(meta: dict[str, Any]) -> list[tuple[int, int]]:
    """(word, position of its first token) for each word of a prediction row; kept in the row's meta dict, which
    every token head of one prediction reads (worked out once per row, not once per head)."""
    firsts = meta.get("_first_tokens")
    if firsts is None:
        seen: set[int] = set()
        firsts = meta["_first_tokens"] = [(word, position) for position, word in enumerate(meta["word_ids"])
                                          if word is not None and not (word in seen or seen.add(word))]
    return firsts


def macro_scores(true_rows: list[list[str]], pred_rows: list[list[str]]) -> dict[str, float]:
    """Per-tag precision, recall and F1 averaged over the tags seen in either sequence (sklearn's macro)."""
    true = [t for row in true_rows for t in row]
    pred = [p for row in pred_rows for p in row]
    if not true:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    precision, recall, f1, _ = precision_recall_fscore_support(true, pred, average="macro", zero_division=0)
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall)}


@dataclass(kw_only=True)
class TokenClassification(TokenizedTask, WordLevel):
    """One tag per word.

    Args:
        text: the column holding a list of words per row.
        label: the column holding one tag per word (names, or indices with `label_names`).
        label_all_subtokens: train continuation sub-tokens too (`B-` becomes `I-`).
        scheme: `IOB2` or `IOBES`, for entity-level metrics; `none` for tags that are not spans (POS).
        (and every `Task` argument)

    A `WordLevel` type: prediction gives `postprocess` each row's words and the word of every token.
    """

    text: list[str] | str = "tokens"
    label: str | None = "tags"
    label_all_subtokens: bool = False
    scheme: str = "IOB2"

    METRICS = {"f1": True, "precision": True, "recall": True, "accuracy": True}

    def check(self) -> list[str]:
        problems = super().check()
        if len(self.text) != 1:
            problems.append(f"text: got {self.text!r}; a token task reads one column holding a list of words.")
        if self.scheme not in SCHEMES:
            problems.append(f"scheme: got {self.scheme!r}; valid choices: {', '.join(SCHEMES)}.")
        return problems

    def check_data(self, split: str, dataset: Dataset, source: str, labelled: bool = True) -> list[str]:
        column = self.text[0]
        for row, words in enumerate(dataset[column]):
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                return [f"{source}: data row {row + 1}, column '{column}': expected a list of words, got "
                        f"{shown(words)}."]
        if not labelled:
            return []
        words_col, tags_col = self.text[0], self.label
        declared = self.label_list or None
        for row, (words, tags) in enumerate(zip(dataset[words_col], dataset[tags_col])):
            where = f"{source}: data row {row + 1}"
            if not isinstance(tags, list) or len(tags) != len(words):
                count = len(tags) if isinstance(tags, list) else tags
                return [f"{where}: {len(words)} words but {count} tags in '{tags_col}'. Give one tag per word."]
            try:
                names = [self.reader.name(t) for t in tags]
            except ValueError as err:
                return [f"{where}, column '{tags_col}': {err}. Fix the row or label_names."]
            unknown = [t for t in names if declared is not None and t not in declared]
            if unknown:
                return [f"{where}, column '{tags_col}': {unknown_label_message(self, 'tag', unknown[0])}"]
            outside = [t for t in names if not self._in_scheme(t)]
            if outside:
                return [f"{where}, column '{tags_col}': tag {outside[0]!r} is not an {self.scheme} tag (O, "
                        f"{', '.join(p + '-TYPE' for p in PREFIXES[self.scheme])}). For tags that are not entity "
                        "spans (POS tags) set scheme: none; f1 is then averaged over tags and entities are not "
                        "predicted."]
        return []

    def _in_scheme(self, tag: str) -> bool:
        if self.scheme == "none" or tag == "O":
            return True
        prefix, dash, kind = tag.partition("-")
        return bool(dash and kind) and prefix in PREFIXES[self.scheme]

    def fit(self, train: Dataset | None) -> None:
        labels = self.labels or self.label_names
        if labels is None and train is not None:
            tags = sorted_labels([self.reader.name(t) for row in train[self.label] for t in row])
            # "O" first, then entity tags grouped by type: stable, readable id2label.
            labels = sorted(tags, key=lambda t: (t != "O", t.partition("-")[2], t))
        if labels is not None:
            self.fitted["labels"] = list(labels)

    def encode(self, batch: dict[str, list], tokenizer: Any) -> Any:
        return tokenizer(batch[self.text[0]], is_split_into_words=True, truncation=True,
                         max_length=self.max_length)

    def encode_labels(self, batch: dict[str, list], encoded: Any) -> list:
        index = {tag: i for i, tag in enumerate(self.label_list)}
        out = []
        for row, raw_tags in enumerate(batch[self.label]):
            tags = [self.reader.name(t) for t in raw_tags]
            labels, previous = [], None
            for word in encoded.word_ids(row):
                if word is None:
                    labels.append(IGNORE)
                elif word != previous:
                    labels.append(index[tags[word]])
                elif self.label_all_subtokens:
                    tag = tags[word]
                    inside = "I-" + tag[2:] if tag.startswith("B-") else tag
                    labels.append(index.get(inside, index[tag]))
                else:
                    labels.append(IGNORE)
                previous = word
            out.append(labels)
        return out

    def collate_labels(self, labels: list, sequence_length: int) -> torch.Tensor:
        return torch.tensor([row + [IGNORE] * (sequence_length - len(row)) for row in labels])

    def build_head(self, hidden_size: int, dropout: float, has_pooler: bool) -> nn.Module:
        return TokenHead(hidden_size, self.num_outputs, dropout)

    def stock_layout(self, head: nn.Module) -> StockLayout:
        return StockLayout("AutoModelForTokenClassification", head.stock_key_maps())

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    def _tag_sequences(self, predictions: np.ndarray, labels: np.ndarray) -> tuple[list[list[str]], list[list[str]]]:
        predicted = predictions.argmax(-1)
        true_rows, pred_rows = [], []
        for p_row, l_row in zip(predicted, labels):
            keep = l_row != IGNORE
            true_rows.append([self.label_list[i] for i in l_row[keep]])
            pred_rows.append([self.label_list[i] for i in p_row[keep]])
        return true_rows, pred_rows

    def constant_predictions(self, predictions: np.ndarray, labels: np.ndarray) -> bool:
        # The same tag on every labelled token (typically all "O").
        return all_same(np.asarray(predictions).argmax(-1)[np.asarray(labels) != IGNORE])

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray, features: Any = None) -> dict[str, float]:
        true_rows, pred_rows = self._tag_sequences(predictions, labels)
        total = sum(len(r) for r in true_rows)
        correct = sum(t == p for tr, pr in zip(true_rows, pred_rows) for t, p in zip(tr, pr))
        if self.scheme == "none":
            return {**macro_scores(true_rows, pred_rows), "accuracy": correct / total if total else 0.0}
        scheme = {"IOB2": IOB2, "IOBES": IOBES}[self.scheme]
        kwargs = {"mode": "strict", "scheme": scheme, "zero_division": 0}
        return {
            "f1": float(f1_score(true_rows, pred_rows, **kwargs)),
            "precision": float(precision_score(true_rows, pred_rows, **kwargs)),
            "recall": float(recall_score(true_rows, pred_rows, **kwargs)),
            "accuracy": correct / total if total else 0.0,
        }

    def postprocess(self, logits: np.ndarray, inputs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Per row: one tag per original word and the entity spans (`inputs` give text and token offsets)."""
        if inputs is None:
            raise ValueError("token classification needs the text and token offsets of each row")
        # Softmax and argmax once over every row's tokens (rows differ in length): per row, they and np.mean per
        # entity cost more than the encoder pass once a model has tens of token heads.
        lengths = [len(row) for row in logits]
        probs = softmax(np.concatenate([np.asarray(row, dtype=np.float64) for row in logits])) if logits else None
        ends = np.cumsum(lengths).tolist()
        best = probs.argmax(-1).tolist() if probs is not None else []
        best_prob = probs.max(-1).tolist() if probs is not None else []
        labels = self.label_list
        results = []
        for row, meta in enumerate(inputs):
            words, spans = meta["words"], meta["spans"]
            word_tags, word_scores = ["O"] * len(words), [0.0] * len(words)
            start = ends[row] - lengths[row]
            for word, position in first_tokens(meta):
                if position < lengths[row]:
                    word_tags[word], word_scores[word] = labels[best[start + position]], best_prob[start + position]
            entities = [
                {"type": kind, "text": meta["text"][spans[a][0]:spans[b - 1][1]], "start": spans[a][0],
                 "end": spans[b - 1][1], "score": sum(word_scores[a:b]) / (b - a)}
                for kind, a, b in (entity_spans(word_tags) if self.scheme != "none" else [])
            ]
            results.append({"words": words, "tags": word_tags, "entities": entities})
        return results

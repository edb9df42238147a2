"""Predict every task from ONE encoder pass per batch.

Tasks that read the same input columns with the same `max_length` share one encoder pass; the heads of
all of them run on that pass. Batches are sorted by length and padded dynamically.
"""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from .modeling.model import MultiTaskModel


def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class MultiTaskPredictor:
    """All-heads inference for a trained `MultiTaskModel`.

    Args:
        model: a `MultiTaskModel`, or the folder it was saved to (with its tokenizer).
        tokenizer: required when `model` is an object.
        device: defaults to CUDA when available, else CPU.
        batch_size: rows per encoder pass.
    """

    def __init__(self, model: MultiTaskModel | str | os.PathLike, tokenizer: Any = None,
                 device: str | torch.device | None = None, batch_size: int = 32):
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = MultiTaskModel.from_pretrained(model)
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with an in-memory model")
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @property
    def tasks(self) -> list[str]:
        return list(self.model.tasks)

    def _columns(self, task: str, available: set[str]) -> tuple[str, ...] | None:
        """The input columns `task` reads from these records, or None when it cannot run on them."""
        columns = tuple(self.model.tasks[task].config.text)
        if set(columns) <= available:
            return columns
        # A single-text task also accepts a plain "text" field.
        if len(columns) == 1 and "text" in available:
            return ("text",)
        return None

    def predict(self, records: list[dict[str, Any]], tasks: list[str] | None = None) -> list[dict[str, Any]]:
        """Predictions per record: `{task: {label/score...}}` for each task that accepts the record's fields."""
        names = tasks or self.tasks
        unknown = [t for t in names if t not in self.model.tasks]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this model has {self.tasks}")
        results: list[dict[str, Any]] = [{} for _ in records]
        if not records:
            return results
        available = set.intersection(*(set(r) for r in records))
        groups: dict[tuple, list[str]] = defaultdict(list)
        for name in names:
            columns = self._columns(name, available)
            if columns is not None:
                groups[(columns, self.model.tasks[name].config.max_length)].append(name)
        for (columns, max_length), group in groups.items():
            needs_words = any(self.model.tasks[name].needs_word_ids for name in group)
            logits, inputs = self._run_group(records, columns, max_length, group, needs_words)
            for name in group:
                for row, prediction in zip(results, self.model.tasks[name].postprocess(logits[name], inputs)):
                    row[name] = prediction
        return results

    @torch.inference_mode()
    def _run_group(self, records: list[dict[str, Any]], columns: tuple[str, ...], max_length: int,
                   tasks: list[str], needs_words: bool) -> tuple[dict[str, list[np.ndarray]], list[dict] | None]:
        """Per-task logits, one array per record in input order (token-level rows trimmed to their length),
        and, for token-level tasks, each record's text and token-to-word map."""
        texts = [[_as_text(r[c]) for c in columns] for r in records]
        lengths = [sum(len(t) for t in row) for row in texts]
        order = np.argsort(lengths, kind="stable")  # similar lengths together: less padding
        outputs: dict[str, list[np.ndarray | None]] = {t: [None] * len(records) for t in tasks}
        inputs: list[dict] | None = [{} for _ in records] if needs_words else None
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            columns_of_chunk = [[texts[i][c] for i in rows] for c in range(len(columns))]
            encoded = self.tokenizer(*columns_of_chunk, truncation=True, max_length=max_length, padding=True,
                                     return_tensors="pt", return_offsets_mapping=needs_words)
            offsets = encoded.pop("offset_mapping", None)
            logits = self.model.forward_all(**encoded.to(self.device), tasks=tasks)
            real = encoded["attention_mask"].sum(1).tolist()
            for name, value in logits.items():
                value = value.float().cpu().numpy()
                for k, i in enumerate(rows):
                    outputs[name][i] = value[k, : real[k]] if value.ndim == 3 else value[k]
            if inputs is not None:
                for k, i in enumerate(rows):
                    inputs[i] = {"text": texts[i][0], "word_ids": _word_ids(texts[i][0], offsets[k].tolist())}
        return outputs, inputs


def _as_text(value: Any) -> str:
    """A cell as text: pre-split words (a list) are joined with spaces."""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _word_ids(text: str, offsets: list[list[int]]) -> list[int | None]:
    """Whitespace-word index of each token from its character offsets (None for special/padding tokens)."""
    from .tasks.token_classification import words_with_spans

    _, spans = words_with_spans(text)
    starts = [s for s, _ in spans]
    ids: list[int | None] = []
    for begin, end in offsets:
        if begin == end:
            ids.append(None)
            continue
        word = bisect.bisect_right(starts, begin) - 1
        ids.append(word if word >= 0 else None)
    return ids


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV/JSONL/JSON file as dicts."""
    import csv
    import json

    path = str(path)
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in handle if line.strip()]
        if path.endswith(".json"):
            data = json.load(handle)
            return data if isinstance(data, list) else [data]
        delimiter = "\t" if path.endswith((".tsv", ".txt")) else ","
        return list(csv.DictReader(handle, delimiter=delimiter))

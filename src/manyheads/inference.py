"""Predict every task from ONE encoder pass per batch.

Tasks that read the same input columns with the same `max_length` share one encoder pass; the heads of
all of them run on that pass. Batches are sorted by length and padded dynamically.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

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
        columns = tuple(self.model.tasks[task].text)
        if set(columns) <= available:
            return columns
        # A single-text task also accepts a plain "text" field.
        if len(columns) == 1 and "text" in available:
            return ("text",)
        return None

    def predict(self, records: list[dict[str, Any]], tasks: list[str] | None = None) -> list[dict[str, Any]]:
        """Predictions per record: `{task: {label/score...}}`.

        Without `tasks`, every task whose input columns the records have runs (the others are left out);
        a task named in `tasks` that cannot read the records is an error.
        """
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
            if columns is None and tasks is not None:
                # Asked for by name: say why it cannot run instead of leaving it out.
                raise ValueError(f"task {name!r} reads columns {self.model.tasks[name].text}; the records "
                                 f"have {sorted(available)}")
            if columns is not None:
                task = self.model.tasks[name]
                groups[(columns, task.max_length, task.prediction_encoding())].append(name)
        for (columns, _, _), group in groups.items():
            logits, inputs = self._run_group(records, columns, group)
            for name in group:
                for row, prediction in zip(results, self.model.tasks[name].postprocess(logits[name], inputs)):
                    row[name] = prediction
        return results

    @torch.inference_mode()
    def _run_group(self, records: list[dict[str, Any]], columns: tuple[str, ...],
                   tasks: list[str]) -> tuple[dict[str, list[np.ndarray]], list[dict]]:
        """Per-task logits, one array per feature (token-level arrays trimmed to the feature's length), and
        one meta dict per feature, both ordered by input row (a QA row may have several window features)."""
        encoder_task = self.model.tasks[tasks[0]]  # same encoding key: any member encodes for all
        with_words = any(self.model.tasks[name].needs_word_ids for name in tasks)
        texts = [[_as_text(r[c]) for c in columns] for r in records]
        order = np.argsort([sum(len(t) for t in row) for row in texts], kind="stable")  # less padding
        logits: dict[str, list[np.ndarray]] = {name: [] for name in tasks}
        metas: list[dict] = []
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            columns_of_chunk = [[texts[i][c] for i in rows] for c in range(len(columns))]
            encoded, chunk_metas = encoder_task.encode_for_prediction(columns_of_chunk, self.tokenizer, with_words)
            outputs = self.model.forward_all(**encoded.to(self.device), tasks=tasks)
            real = encoded["attention_mask"].sum(1).tolist()
            for name, value in outputs.items():
                value = value.float().cpu().numpy()
                logits[name].extend(v[:n] if v.ndim == 2 else v for v, n in zip(value, real))
            for meta in chunk_metas:
                metas.append({**meta, "row": int(rows[meta["row"]])})
        by_row = sorted(range(len(metas)), key=lambda f: metas[f]["row"])  # stable: windows keep their order
        return {name: [values[f] for f in by_row] for name, values in logits.items()}, [metas[f] for f in by_row]


def _as_text(value: Any) -> str:
    """A cell as text: pre-split words (a list) are joined with spaces."""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV/JSONL/JSON file as dicts."""
    path = str(path)
    with open(path, encoding="utf-8") as handle:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in handle if line.strip()]
        if path.endswith(".json"):
            data = json.load(handle)
            return data if isinstance(data, list) else [data]
        delimiter = "\t" if path.endswith((".tsv", ".txt")) else ","
        return list(csv.DictReader(handle, delimiter=delimiter))

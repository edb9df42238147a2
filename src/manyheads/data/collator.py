"""Pads each micro-batch to its own longest sequence and keeps the task name in the batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..tasks.base import GROUP_COLUMN, LABEL_COLUMN, TASK_COLUMN

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..tasks import Task

# Token-level inputs padded with the tokenizer's pad id; every other per-token input is padded with 0.
_PAD_WITH_TOKEN = {"input_ids"}


class MultiTaskCollator:
    """Dynamic padding per batch (never to `max_length` unless `pad_to_multiple_of` asks for a multiple).

    Args:
        tokenizer: gives the pad id and padding side.
        tasks: task objects by name; each stacks its own labels (`Task.collate_labels`).
        pad_to_multiple_of: round the padded length up (8 helps tensor cores on GPU).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, tasks: dict[str, Task],
                 pad_to_multiple_of: int | None = None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.left = tokenizer.padding_side == "left"
        self.input_names = list(tokenizer.model_input_names)
        self.tasks = tasks
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        names = list(dict.fromkeys(f[TASK_COLUMN] for f in features))
        if len(names) > 1:
            # A task-group step (gradient aggregation): one padded sub-batch per task.
            return {GROUP_COLUMN: {n: self._collate([f for f in features if f[TASK_COLUMN] == n], n) for n in names}}
        return self._collate(features, names[0])

    def _collate(self, features: list[dict[str, Any]], task: str) -> dict[str, Any]:
        # Only model inputs are padded; tasks may keep other per-row columns (QA offsets) for evaluation.
        keys = [k for k in self.input_names if k in features[0]]
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, Any] = {}
        for key in keys:
            pad = self.pad_id if key in _PAD_WITH_TOKEN else 0
            rows = []
            for f in features:
                filler = [pad] * (length - len(f[key]))
                rows.append(filler + f[key] if self.left else f[key] + filler)
            batch[key] = torch.tensor(rows, dtype=torch.long)
        if LABEL_COLUMN in features[0]:
            batch[LABEL_COLUMN] = self.tasks[task].collate_labels([f[LABEL_COLUMN] for f in features], length)
        batch[TASK_COLUMN] = task
        return batch

"""From the user's `{task: Dataset}` to what the sampler and collator read.

Raw (untokenized) datasets are fitted and preprocessed by their task (tokenized, labels encoded, the task
column added); already tokenized datasets only get the task column when they lack it. Every mistake a user can
make here (one dataset instead of a dict, an unknown task, a missing column, raw text without a tokenizer)
is one clear error.
"""

from __future__ import annotations

import bisect
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset as TorchDataset

from ..tasks import LABEL_COLUMN, TASK_COLUMN, Task

if TYPE_CHECKING:
    from datasets import Dataset


class MultiTaskDataset(TorchDataset):
    """The tasks' tokenized training sets side by side; index i maps to (task, row) by offsets.

    Kept as a view rather than `concatenate_datasets`, because task types have different label features.
    """

    def __init__(self, datasets: dict[str, Any]):
        self.datasets = dict(datasets)
        self.names = list(self.datasets)
        self.sizes = {name: len(ds) for name, ds in self.datasets.items()}
        self.offsets = np.cumsum([0] + [self.sizes[n] for n in self.names]).tolist()
        self._lengths: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        task = bisect.bisect_right(self.offsets, index) - 1
        return self.datasets[self.names[task]][index - self.offsets[task]]

    def lengths(self) -> dict[str, np.ndarray]:
        """Token count of every row per task, read once: length grouping is on by default and the sampler is
        rebuilt for every dataloader."""
        if self._lengths is None:
            self._lengths = {name: _row_lengths(ds) for name, ds in self.datasets.items()}
        return self._lengths


def _row_lengths(dataset: Any) -> np.ndarray:
    """Lengths of `input_ids` rows, read in chunks through Arrow where the dataset is a `datasets.Dataset` (no
    Python list of every token).

    PRIVATE datasets API: `Dataset._indices` (an index mapping left by `select`/`shuffle`, under which the Arrow
    table's row order is not the dataset's). Upgrade risk: if renamed, this reads None and takes the Arrow path on a
    re-indexed dataset, giving lengths in the wrong order (slower batches, never wrong training).
    tests/test_pins.py checks the attribute."""
    table = getattr(getattr(dataset, "data", None), "table", None)
    if table is not None and getattr(dataset, "_indices", None) is None and "input_ids" in table.column_names:
        import pyarrow.compute as pc

        return np.asarray(pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False))
    return np.asarray([len(ids) for ids in dataset["input_ids"]])


def _stock_label_column(dataset: Any) -> Any:
    """A dataset tokenized by the user keeps GLUE's `label` (or `label_ids`) column; stock `Trainer`'s collators
    rename it to `labels`, and so does manyheads, so that the same tokenized dataset trains in both."""
    columns = dataset.column_names
    if LABEL_COLUMN not in columns:
        for old in ("label", "label_ids"):
            if old in columns:
                return dataset.rename_column(old, LABEL_COLUMN)
    return dataset


def is_tokenized(dataset: Any) -> bool:
    return "input_ids" in (getattr(dataset, "column_names", None) or [])


def as_task_dict(datasets: Any, argument: str, tasks: dict[str, Task]) -> dict[str, Any] | None:
    """`{task: Dataset}` checked against the model's tasks.

    Raises:
        ValueError: a single dataset, a list, or a name the model has no task for.
    """
    if datasets is None:
        return None
    if not isinstance(datasets, dict):
        single = next(iter(tasks)) if len(tasks) == 1 else "<task name>"
        raise ValueError(f"{argument} must be a dict {{task name: Dataset}}, one entry per task; got "
                         f"{type(datasets).__name__}. Wrap it: {argument}={{'{single}': dataset}} (the model's tasks "
                         f"are {list(tasks)}).")
    unknown = [name for name in datasets if name not in tasks]
    if unknown:
        raise ValueError(f"{argument} has datasets for {unknown}, which the model has no task for; the model's tasks "
                         f"are {list(tasks)}. Rename the keys or add the tasks to the model.")
    return dict(datasets)


def check_columns(task: Task, dataset: Any, argument: str) -> None:
    """A raw dataset must hold the task's input and label columns.

    Raises:
        ValueError: naming the task, the missing column and the columns the dataset has.
    """
    missing = [c for c in task.required_columns() if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{argument}['{task.name}'] has no column '{missing[0]}' (task '{task.name}' reads "
                         f"{task.required_columns()}); its columns are {dataset.column_names}. Rename the column "
                         f"(dataset.rename_column) or set the task's text/label to the column names.")


def cap_rows(datasets: dict[str, Any] | None, cap: int | None, seed: int) -> dict[str, Any] | None:
    """Each dataset longer than `cap` cut to `cap` rows: a random subset, in the dataset's order, that depends only on
    `seed` and the task's name (not on the other tasks, so adding a task leaves the others' rows alone)."""
    if datasets is None or cap is None:
        return datasets
    out = {}
    for name, dataset in datasets.items():
        if len(dataset) > cap:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
            dataset = dataset.select(np.sort(rng.choice(len(dataset), size=cap, replace=False)).tolist())
        out[name] = dataset
    return out


def fit_tasks(tasks: dict[str, Task], train: dict[str, Any] | None) -> None:
    """Fit every task that has no fitted state yet on its raw training split (labels, weights, scaling)."""
    for name, task in tasks.items():
        dataset = (train or {}).get(name)
        if not task.fitted and dataset is not None and not is_tokenized(dataset):
            task.fit(dataset)


def prepare_split(tasks: dict[str, Task], datasets: dict[str, Any] | None, tokenizer: Any,
                  argument: str) -> dict[str, Dataset] | None:
    """Tokenize raw datasets through their task; add the task column to tokenized ones that lack it."""
    if datasets is None:
        return None
    out = {}
    for name, dataset in datasets.items():
        task = tasks[name]
        if is_tokenized(dataset):
            dataset = _stock_label_column(dataset)
            out[name] = dataset if TASK_COLUMN in dataset.column_names else dataset.add_column(
                TASK_COLUMN, [name] * len(dataset))
            continue
        if tokenizer is None:
            raise ValueError(f"{argument}['{name}'] is raw text (no input_ids column), so MultiTaskTrainer needs the "
                             "tokenizer to preprocess it: pass processing_class=tokenizer.")
        check_columns(task, dataset, argument)
        problems = task.check_data(argument, dataset, f"{argument}['{name}']")
        if problems:
            raise ValueError("; ".join(problems))
        out[name] = task.preprocess(dataset, tokenizer)
    return out

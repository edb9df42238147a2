"""Predict every task from ONE encoder pass per batch (PyTorch, or an ONNX export: `onnx_runtime.py`).

Tasks that read the same input columns with the same `max_length` share one encoder pass; the heads of
all of them run on that pass. Batches are sorted by length and padded dynamically.

`records.iter_records` reads CSV/TSV/JSONL row by row (a JSON list whole) and names each row's file and line, so a
caller can stream a file of any size through `MultiTaskPredictor.plan_row` and `predict_rows` in chunks.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import AutoTokenizer

from ..errors import ConfigError, shown
from ..modeling.model import MultiTaskModel
from ..records import kind_of
from ..tasks import OwnPredictionEncoding, Task, WordLevel
from ..tasks.base import SplitText

if TYPE_CHECKING:
    from ..export.onnx_runtime import OnnxMultiTaskModel


def _encoding_key(task: Task) -> str:
    """Tasks with equal keys (and input columns and max_length) share one encoder pass at prediction."""
    return task.prediction_encoding() if isinstance(task, OwnPredictionEncoding) else "plain"


def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class RowPlan:
    """What to predict on one record: the tasks that can read it, and why the others cannot.

    Attributes:
        tasks: tasks to predict, in the model's order.
        errors: `{task: message}` for a task that should run on the row but cannot (a field missing, or not
            text); each message names the row and the field.
        error: set when no task reads any of the row's fields (and no task was asked for by name).
    """

    tasks: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def problems(self) -> list[str]:
        return [self.error] if self.error else list(self.errors.values())


class MultiTaskPredictor:
    """All-heads inference for a trained `MultiTaskModel`, in PyTorch or from its ONNX export.

    Args:
        model: a `MultiTaskModel`, or the folder it was saved to (with its tokenizer); with `backend="onnx"`,
            a folder written by `manyheads export --format onnx` (its config.json gives tasks and labels).
        tokenizer: required when `model` is an object.
        device: defaults to CUDA when available, else CPU (the ONNX backend: CPU unless given cuda[:N]).
        batch_size: rows per encoder pass.
        backend: "torch" or "onnx" (ONNX Runtime; `pip install "manyheads[onnx]"`).
        onnx_file: the ONNX folder's graph to run, e.g. "model_int8.onnx" (default "model.onnx").
    """

    def __init__(self, model: MultiTaskModel | str | os.PathLike, tokenizer: Any = None,
                 device: str | torch.device | None = None, batch_size: int = 32, backend: str = "torch",
                 onnx_file: str | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size: got {batch_size}; give the number of rows per encoder pass (>= 1).")
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend: got {backend!r}; valid: 'torch', 'onnx'.")
        self.backend, self.batch_size = backend, batch_size
        self.model: MultiTaskModel | OnnxMultiTaskModel
        if backend == "onnx":
            from ..export.onnx_runtime import load_onnx_folder  # here: onnxruntime is optional for `import manyheads`

            self.model, self.tokenizer = load_onnx_folder(model, tokenizer, onnx_file, device)
            self.device = torch.device("cpu")  # ONNX Runtime takes its inputs from host memory
            return
        if onnx_file is not None:
            raise ValueError("onnx_file: only the ONNX backend reads a graph file; pass backend='onnx'.")
        if isinstance(model, (str, os.PathLike)):
            if os.path.isfile(os.path.join(model, "manyheads_onnx.json")) and not os.path.isfile(
                    os.path.join(model, "model.safetensors")):  # else a missing-weights error would mislead
                raise ConfigError(f"MODEL_DIR: {model} is an ONNX export without PyTorch weights; predict from it "
                                  "with backend='onnx' (--backend onnx).")
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = MultiTaskModel.from_pretrained(model)
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with an in-memory model")
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer

    @functools.cached_property
    def heads(self) -> dict[str, Task]:
        """`{output name: the task that reads it}`: one per head, so datasets that share a head (`head: nli`) give
        one output `nli`, read with its first task's settings (an ONNX export is written that way already)."""
        reader = getattr(self.model, "prediction_tasks", None)
        return reader() if reader is not None else dict(self.model.tasks)

    @property
    def tasks(self) -> list[str]:
        """The names predictions are keyed by: one per head (a task's own name unless it shares a head)."""
        return list(self.heads)

    def passes_note(self, tasks: Sequence[str] | None = None) -> str | None:
        """With per-task adapters (soft or hybrid sharing), how many encoder passes a row predicted for `tasks`
        (default: all) costs; None when all of them share one pass."""
        passes = getattr(self.model, "encoder_passes", None)
        groups = passes(tasks) if passes is not None else [list(tasks or self.tasks)]
        if len(groups) <= 1:
            return None
        return (f"sharing '{self.model.sharing.mode}': each task's adapter needs its own encoder pass, so every "
                f"row costs {len(groups)} passes ({' | '.join(', '.join(g) for g in groups)}) instead of one")

    def _columns(self, task: str, available: Iterable[str]) -> tuple[str, ...] | None:
        """The input columns `task` reads from these fields, or None when it cannot run on them."""
        columns = tuple(self.heads[task].text)
        if set(columns) <= set(available):
            return columns
        # A single-text task also accepts a plain "text" field.
        if len(columns) == 1 and "text" in available:
            return ("text",)
        return None

    def _check_names(self, names: Sequence[str]) -> None:
        unknown = [t for t in names if t not in self.heads]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; this model has {self.tasks}")

    def predict(self, records: list[dict[str, Any]], tasks: list[str] | None = None) -> list[dict[str, Any]]:
        """Predictions per record: `{task: {label/score...}}`.

        Without `tasks`, every task whose input columns the records have runs (the others are left out);
        a task named in `tasks` that cannot read the records is an error, and so is a value that is not text.
        """
        names = tasks or self.tasks
        self._check_names(names)
        results: list[dict[str, Any]] = [{} for _ in records]
        if not records:
            return results
        available = set.intersection(*(set(r) for r in records))
        groups: dict[tuple, list[str]] = defaultdict(list)
        for name in names:
            columns = self._columns(name, available)
            if columns is None and tasks is not None:
                # Asked for by name: say why it cannot run instead of leaving it out.
                raise ValueError(f"task {name!r} reads columns {self.heads[name].text}; the records "
                                 f"have {sorted(available)}")
            if columns is not None:
                task = self.heads[name]
                groups[(columns, task.max_length, _encoding_key(task))].append(name)
        for (columns, _, _), group in groups.items():
            for i, record in enumerate(records):
                problem = self._value_problems(record, columns, group, f"records[{i}]")
                if problem:
                    raise ValueError(problem)
            self._predict_group(records, range(len(records)), columns, group, results)
        return results

    def plan_row(self, record: Mapping[str, Any], tasks: Sequence[str] | None = None,
                 where: str = "row") -> RowPlan:
        """Which tasks run on `record` and the problems of the others; `where` prefixes every message
        (e.g. `rows.jsonl:7`).

        With `tasks`, each of them must read the row: a missing field is an error. Without, every task whose
        fields the row has runs (a single-text task also reads a plain `text` field), and a row that has the
        fields of no task is an error. A field that is there but is not text (null, a number, a list where a
        string is expected) is an error of the tasks that read it.
        """
        names = list(dict.fromkeys(tasks)) if tasks else self.tasks
        self._check_names(names)
        plan = RowPlan()
        for name in names:
            columns = self._columns(name, record)
            if columns is None:
                if tasks:
                    plan.errors[name] = self._missing(record, name, where)
                continue
            problem = self._value_problems(record, columns, [name], where)
            if problem:
                plan.errors[name] = problem
            else:
                plan.tasks.append(name)
        if not plan.tasks and not plan.errors:
            reads = "; ".join(f"{n}: {' + '.join(map(repr, self.heads[n].text))}" for n in names)
            plan.error = (f"{where}: no task can read this row: its fields are {shown(sorted(record))}; the tasks read "
                          f"{reads} (a single-text task also reads a plain 'text' field)")
        return plan

    def predict_rows(self, records: Sequence[Mapping[str, Any]],
                     row_tasks: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
        """Predictions for rows that each name their own tasks (e.g. `plan_row(record).tasks`): one
        `{task: prediction}` per row, tasks in the model's order.

        Each task reads each row's own fields (its `text` columns, or a plain `text` field); the rows that
        read the same columns for the same tasks share encoder passes. Values are not checked here: use
        `plan_row` first.
        """
        jobs: dict[tuple, list[int]] = defaultdict(list)
        # Rows with the same tasks and fields group the same way: worked out once per kind of row, not per row
        # (this loop runs for every input row; the rest runs per batch).
        plans: dict[tuple, list[tuple]] = {}
        for i, (record, names) in enumerate(zip(records, row_tasks)):
            key = (tuple(names), tuple(record))
            if key not in plans:
                plans[key] = self._encoding_groups(record, names, f"row {i}")
            for job in plans[key]:
                jobs[job].append(i)
        results: list[dict[str, Any]] = [{} for _ in records]
        for (columns, group), rows in jobs.items():
            self._predict_group([records[i] for i in rows], rows, columns, list(group), results)
        order = {name: k for k, name in enumerate(self.heads)}
        return [dict(sorted(row.items(), key=lambda item: order[item[0]])) for row in results]

    def _encoding_groups(self, record: Mapping[str, Any], names: Sequence[str], where: str) -> list[tuple]:
        """(columns, tasks) of each encoder pass that `names` need on a row with `record`'s fields."""
        self._check_names(names)
        by_encoding: dict[tuple, list[str]] = defaultdict(list)
        for name in names:
            columns = self._columns(name, record)
            if columns is None:
                raise ValueError(self._missing(record, name, where))
            task = self.heads[name]
            by_encoding[(columns, task.max_length, _encoding_key(task))].append(name)
        return [(columns, tuple(group)) for (columns, _, _), group in by_encoding.items()]

    def _missing(self, record: Mapping[str, Any], name: str, where: str) -> str:
        columns = self.heads[name].text
        missing = [c for c in columns if c not in record]
        what = f"field {missing[0]!r}" if len(missing) == 1 else "fields " + ", ".join(map(repr, missing))
        alternative = " (a plain 'text' field would do too)" if len(columns) == 1 else ""
        return (f"{where}: {what} (task {name!r}) {'is' if len(missing) == 1 else 'are'} missing{alternative}; "
                f"the row has {shown(sorted(record))}")

    def _value_problems(self, record: Mapping[str, Any], columns: Sequence[str], tasks: Sequence[str],
                        where: str) -> str | None:
        """The first field of `columns` that is not text for these tasks, as a message; None when all are."""
        for column in columns:
            value = record[column]
            if isinstance(value, str):
                continue  # the usual case, checked first: this runs for every row of a prediction
            # Token tasks (word-level output) also take the words of a row as a list, as in their training data.
            words = all(isinstance(self.heads[name], WordLevel) for name in tasks)
            problem = _text_problem(value, words)
            if problem:
                names = ("task " if len(tasks) == 1 else "tasks ") + ", ".join(map(repr, tasks))
                return f"{where}: field {column!r} ({names}) {problem}"
        return None

    def _predict_group(self, records: Sequence[Mapping[str, Any]], rows: Iterable[int], columns: tuple[str, ...],
                       group: list[str], results: list[dict[str, Any]]) -> None:
        """Run one encoder-sharing group on `records` and put each task's predictions into `results[rows]`."""
        logits, inputs = self._run_group(records, columns, group)
        for name in group:
            task = self.heads[name]
            # A generation task's outputs are token ids (one row each), decoded to text before post-processing.
            decoder = self.model.task_decoder(name)
            values = logits[name] if decoder is None else decoder.decode(
                [v.astype(np.int64).tolist() for v in logits[name]], self.tokenizer)
            for row, prediction in zip(rows, task.postprocess(values, inputs)):
                results[row][name] = prediction

    @torch.inference_mode()
    def _run_group(self, records: Sequence[Mapping[str, Any]], columns: tuple[str, ...],
                   tasks: list[str]) -> tuple[dict[str, list[np.ndarray]], list[dict]]:
        """Per-task logits, one array per feature (token-level arrays trimmed to the feature's length), and
        one meta dict per feature, both ordered by input row (a QA row may have several window features)."""
        encoder_task = self.heads[tasks[0]]  # same encoding key: any member encodes for all
        with_words = any(isinstance(self.heads[name], WordLevel) for name in tasks)
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
                value = value if isinstance(value, np.ndarray) else value.float().cpu().numpy()  # ONNX: numpy
                logits[name].extend(v[:n] if v.ndim == 2 else v for v, n in zip(value, real))
            for meta in chunk_metas:
                metas.append({**meta, "row": int(rows[meta["row"]])})
        by_row = sorted(range(len(metas)), key=lambda f: metas[f]["row"])  # stable: windows keep their order
        return {name: [values[f] for f in by_row] for name, values in logits.items()}, [metas[f] for f in by_row]


def _as_text(value: Any) -> str:
    """A cell as text: pre-split words (a list) are joined with spaces and kept as the words (`SplitText`)."""
    return SplitText([str(w) for w in value]) if isinstance(value, list) else str(value)


def _text_problem(value: Any, words_ok: bool) -> str | None:
    """Why `value` is not text (None when it is); `words_ok`: a list of strings (pre-split words) is text too."""
    wanted = "give a string or a list of words" if words_ok else "give a string"
    if isinstance(value, str):
        return None
    if isinstance(value, list) and words_ok:
        bad = next((w for w in value if not isinstance(w, str)), None)
        if bad is None:
            return None
        return f"is a list of words holding {kind_of(bad)}; every word must be a string"
    return f"is {kind_of(value)}; {wanted}"

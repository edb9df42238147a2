"""Predict every task from ONE encoder pass per batch, and read the rows to predict from a file lazily.

Tasks that read the same input columns with the same `max_length` share one encoder pass; the heads of
all of them run on that pass. Batches are sorted by length and padded dynamically.

`iter_records` reads CSV/TSV/JSONL row by row (a JSON list whole) and names each row's file and line, so a
caller can stream a file of any size through `MultiTaskPredictor.plan_row` and `predict_rows` in chunks.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from .errors import ConfigError, shown
from .modeling.model import MultiTaskModel


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
    """All-heads inference for a trained `MultiTaskModel`.

    Args:
        model: a `MultiTaskModel`, or the folder it was saved to (with its tokenizer).
        tokenizer: required when `model` is an object.
        device: defaults to CUDA when available, else CPU.
        batch_size: rows per encoder pass.
    """

    def __init__(self, model: MultiTaskModel | str | os.PathLike, tokenizer: Any = None,
                 device: str | torch.device | None = None, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size: got {batch_size}; give the number of rows per encoder pass (>= 1).")
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

    def _columns(self, task: str, available: Iterable[str]) -> tuple[str, ...] | None:
        """The input columns `task` reads from these fields, or None when it cannot run on them."""
        columns = tuple(self.model.tasks[task].text)
        if set(columns) <= set(available):
            return columns
        # A single-text task also accepts a plain "text" field.
        if len(columns) == 1 and "text" in available:
            return ("text",)
        return None

    def _check_names(self, names: Sequence[str]) -> None:
        unknown = [t for t in names if t not in self.model.tasks]
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
                raise ValueError(f"task {name!r} reads columns {self.model.tasks[name].text}; the records "
                                 f"have {sorted(available)}")
            if columns is not None:
                task = self.model.tasks[name]
                groups[(columns, task.max_length, task.prediction_encoding())].append(name)
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
            reads = "; ".join(f"{n}: {' + '.join(map(repr, self.model.tasks[n].text))}" for n in names)
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
        order = {name: k for k, name in enumerate(self.model.tasks)}
        return [dict(sorted(row.items(), key=lambda item: order[item[0]])) for row in results]

    def _encoding_groups(self, record: Mapping[str, Any], names: Sequence[str], where: str) -> list[tuple]:
        """(columns, tasks) of each encoder pass that `names` need on a row with `record`'s fields."""
        self._check_names(names)
        by_encoding: dict[tuple, list[str]] = defaultdict(list)
        for name in names:
            columns = self._columns(name, record)
            if columns is None:
                raise ValueError(self._missing(record, name, where))
            task = self.model.tasks[name]
            by_encoding[(columns, task.max_length, task.prediction_encoding())].append(name)
        return [(columns, tuple(group)) for (columns, _, _), group in by_encoding.items()]

    def _missing(self, record: Mapping[str, Any], name: str, where: str) -> str:
        columns = self.model.tasks[name].text
        missing = [c for c in columns if c not in record]
        what = f"field {missing[0]!r}" if len(missing) == 1 else "fields " + ", ".join(map(repr, missing))
        alternative = " (a plain 'text' field would do too)" if len(columns) == 1 else ""
        return (f"{where}: {what} (task {name!r}) {'is' if len(missing) == 1 else 'are'} missing{alternative}; "
                f"the row has {shown(sorted(record))}")

    def _value_problems(self, record: Mapping[str, Any], columns: Sequence[str], tasks: Sequence[str],
                        where: str) -> str | None:
        """The first field of `columns` that is not text for these tasks, as a message; None when all are."""
        # Token tasks (word-level output) also take the words of a row as a list, as in their training data.
        words = all(self.model.tasks[name].needs_word_ids for name in tasks)
        for column in columns:
            problem = _text_problem(record[column], words)
            if problem:
                names = ("task " if len(tasks) == 1 else "tasks ") + ", ".join(map(repr, tasks))
                return f"{where}: field {column!r} ({names}) {problem}"
        return None

    def _predict_group(self, records: Sequence[Mapping[str, Any]], rows: Iterable[int], columns: tuple[str, ...],
                       group: list[str], results: list[dict[str, Any]]) -> None:
        """Run one encoder-sharing group on `records` and put each task's predictions into `results[rows]`."""
        logits, inputs = self._run_group(records, columns, group)
        for name in group:
            for row, prediction in zip(rows, self.model.tasks[name].postprocess(logits[name], inputs)):
                results[row][name] = prediction

    @torch.inference_mode()
    def _run_group(self, records: Sequence[Mapping[str, Any]], columns: tuple[str, ...],
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


def _text_problem(value: Any, words_ok: bool) -> str | None:
    """Why `value` is not text (None when it is); `words_ok`: a list of strings (pre-split words) is text too."""
    wanted = "give a string or a list of words" if words_ok else "give a string"
    if isinstance(value, str):
        return None
    if isinstance(value, list) and words_ok:
        bad = next((w for w in value if not isinstance(w, str)), None)
        if bad is None:
            return None
        return f"is a list of words holding {_kind(bad)}; every word must be a string"
    return f"is {_kind(value)}; {wanted}"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({shown(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


# ----- reading rows from a file -----
def iter_records(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(where, record)` for each row of a CSV/TSV/JSONL/JSON file, read lazily; `where` is `file:line` (the
    line the row starts on, the CSV header being line 1) or `file: item N` for a JSON list.

    JSONL is read line by line (blank lines are skipped), CSV/TSV (`.tsv` and `.txt` are tab-separated) row by
    row; a `.json` file (a list of records, or one record) is read whole. The file must be UTF-8. A line that
    cannot be decoded or parsed, or a CSV row with the wrong number of fields, raises `ConfigError` naming
    the file and line.
    """
    name = str(path)
    if name.endswith(".jsonl"):
        return _jsonl_records(name)
    if name.endswith(".json"):
        return _json_records(name)
    return _csv_records(name, "\t" if name.endswith((".tsv", ".txt")) else ",")


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV/JSONL/JSON file as dicts (all of them in memory; `iter_records` streams)."""
    return [record for _, record in iter_records(path)]


def _lines(handle: Iterable[bytes], path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a binary file, decoded one line at a time so that an error names its line."""
    for number, raw in enumerate(handle, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(_not_utf8(path, number, raw, err.start)) from None
        yield number, text.removeprefix("\ufeff") if number == 1 else text  # a byte-order mark is no data


def _not_utf8(path: str, number: int, raw: bytes, offset: int) -> str:
    column = len(raw[:offset].decode("utf-8", errors="replace")) + 1
    stem, ext = os.path.splitext(path)
    return (f"{path}:{number}: not UTF-8 text (byte {raw[offset]:#04x} at column {column}); the input must be "
            f"UTF-8: convert it, e.g. `iconv -f latin1 -t utf-8 {path} > {stem}.utf8{ext}` (latin1/cp1252 is "
            "the usual encoding of such files; `file -i` guesses it)")


def _record(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a JSON object of fields, e.g. {{\"text\": \"...\"}}; got "
                          f"{_kind(value)}")
    return value


def _jsonl_records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as handle:
        for number, line in _lines(handle, path):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = json.loads(line.rstrip("\r\n"))  # so that a column of the error is on this line
            except json.JSONDecodeError as err:
                raise ConfigError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); each line of a "
                                  "JSONL file holds one JSON object, e.g. {\"text\": \"...\"}") from None
            yield where, _record(value, where)


def _json_records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = raw.rfind(b"\n", 0, err.start) + 1
        end = raw.find(b"\n", err.start)
        line = raw[start:end if end >= 0 else len(raw)]
        raise ConfigError(_not_utf8(path, raw.count(b"\n", 0, err.start) + 1, line, err.start - start)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno}); a .json input "
                          "holds one list of records, e.g. [{\"text\": \"...\"}]") from None
    for number, value in enumerate(data if isinstance(data, list) else [data], start=1):
        where = f"{path}: item {number}"
        yield where, _record(value, where)


def _csv_records(path: str, delimiter: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, "rb") as handle:
        # One decoded line per item, so `reader.line_num` is the file's line number.
        reader = csv.reader((text for _, text in _lines(handle, path)), delimiter=delimiter)
        header: list[str] | None = None
        end = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise ConfigError(f"{path}:{reader.line_num}: {err}") from None
            start, end = end + 1, reader.line_num
            if not row:  # a blank line
                continue
            if header is None:
                header, header_line = row, start
                twice = sorted({name for name in header if header.count(name) > 1})
                if twice:
                    raise ConfigError(f"{path}:{start}: the header names {shown(twice)} more than once; give each "
                                      "column its own name")
                continue
            where = f"{path}:{start}"
            if len(row) != len(header):
                fix = ("every row needs one value per column" if len(row) < len(header) else
                       f"quote a value that holds the delimiter {delimiter!r}")
                raise ConfigError(f"{where}: values in this row: {len(row)}; columns in the header (line "
                                  f"{header_line}): {len(header)} {shown(header)}; {fix}")
            yield where, dict(zip(header, row))

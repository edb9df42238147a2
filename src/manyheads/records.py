"""Reading the rows to predict from a file, lazily: JSONL line by line, CSV/TSV row by row (a JSON list whole).

Each row comes with where it stands (`file:line`, the line a row starts on, the CSV header being line 1), so
an error about a row can name it. Undecodable bytes, a malformed JSON line or a CSV row with the wrong number
of fields stop the reading with a `ConfigError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import ConfigError, shown


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
                          f"{kind_of(value)}")
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


def kind_of(value: Any) -> str:
    """What a non-text value is, for messages ("null", "a number (3)", ...)."""
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
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


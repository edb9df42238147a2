"""Loading each task's splits with `datasets`: local CSV/TSV/JSON/JSONL/parquet files or a Hub dataset.

Every problem (missing file, unreadable file, missing column, empty split, bad cell) is collected with the
file and row it comes from, so `validate` can report all of them at once.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProblemCollector, shown

if TYPE_CHECKING:
    from datasets import Dataset

    from ..tasks import Task

_QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE, "all": csv.QUOTE_ALL,
            "nonnumeric": csv.QUOTE_NONNUMERIC}
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet",
               ".txt": "tsv", ".conll": "conll"}


def read_squad(path: Path, encoding: str = "utf-8") -> Dataset:
    """Official SQuAD v1.1 JSON -> one row per question: id, title, context, question, answers, and `answer` (the
    first answer's text: the second source column of question generation, `text: [answer, context]`)."""
    from datasets import Dataset

    with open(path, encoding=encoding) as handle:
        articles = json.load(handle)["data"]
    rows: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": [], "answer": []}
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article.get("title", ""))
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append({"text": [a["text"] for a in qa["answers"]],
                                        "answer_start": [int(a["answer_start"]) for a in qa["answers"]]})
                rows["answer"].append(qa["answers"][0]["text"] if qa["answers"] else "")
    return Dataset.from_dict(rows)


def split_by_group(dataset: Dataset, column: str | None, fraction: float) -> tuple[Dataset, Dataset]:
    """(train, eval): the last `fraction` of groups in file order go to eval (rows when no column)."""
    keys = dataset[column] if column else list(range(len(dataset)))
    groups = list(dict.fromkeys(keys))
    held_out = set(groups[len(groups) - max(1, round(len(groups) * fraction)):])
    train = [i for i, k in enumerate(keys) if k not in held_out]
    evaluation = [i for i, k in enumerate(keys) if k in held_out]
    return dataset.select(train), dataset.select(evaluation)
SPLITS = ("train", "eval", "test")
# What `format:` accepts (the extension decides when it is absent; .txt reads as TSV).
FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "conll", "squad")
QUOTING = tuple(_QUOTING)


@dataclass
class DataConfig:
    """Where a task's data comes from: local files (CSV/TSV/JSON/JSONL/parquet/CoNLL/SQuAD) or a Hub dataset."""

    train: str | None = None
    eval: str | None = None
    test: str | None = None
    format: str | None = None  # inferred from the file extension when absent
    delimiter: str | None = None
    quoting: str = "minimal"
    encoding: str = "utf-8"
    header: bool = True
    column_names: list[str] | None = None
    tag_column: int = -1  # conll: which whitespace-separated column holds the tag (words are column 0)
    hub: str | None = None
    hub_config: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # Without an eval file: hold out the last `eval_fraction` of the train file's groups (rows sharing a
    # `split_by` value, e.g. a SQuAD article title) so no group is in both splits.
    split_by: str | None = None
    eval_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"'format' is {self.format!r}; valid choices: {', '.join(FORMATS)}")
        if self.quoting not in QUOTING:
            raise ValueError(f"'quoting' is {self.quoting!r}; valid choices: {', '.join(QUOTING)}")
        if self.train is None and self.hub is None:
            raise ValueError("neither 'train' (a file) nor 'hub' (a dataset name) is given; add one")
        if self.eval_fraction is not None and not 0 < self.eval_fraction < 1:
            raise ValueError(f"'eval_fraction' is {self.eval_fraction}; it must be between 0 and 1")
        if self.eval_fraction is not None and self.eval is not None:
            raise ValueError("give either 'eval' (a file) or 'eval_fraction' (held out from train), not both")
        for key in ("max_train_samples", "max_eval_samples"):
            if (getattr(self, key) or 1) < 1:
                raise ValueError(f"'{key}' is {getattr(self, key)}; it must be >= 1")


@dataclass
class DataRoot:
    """Where relative data paths start: `data_dir` when given (then local files win over a Hub name), else the
    config file's folder."""

    data_dir: str | None = None
    config_dir: str = "."



@dataclass
class TaskSplits:
    """A task's raw splits and where each came from (for messages)."""

    splits: dict[str, Dataset] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def uses_local_files(data: DataConfig, root: DataRoot) -> bool:
    """Local files when a data folder is given or no Hub name exists; the Hub name otherwise."""
    return data.train is not None and (root.data_dir is not None or data.hub is None)


def resolve_path(path: str, root: DataRoot) -> Path:
    base = Path(root.data_dir) if root.data_dir is not None else Path(root.config_dir)
    candidate = Path(os.path.expanduser(path))
    return candidate if candidate.is_absolute() else base / candidate


def _file_format(data: DataConfig, path: Path) -> str | None:
    return data.format or _EXTENSIONS.get(path.suffix.lower())


class ConllError(ValueError):
    """A CoNLL line that cannot be read (the message names the line, its content and the fix)."""


_CONLL_FIX = ("Give every token line the same whitespace-separated columns (word first, tag in 'tag_column'), with "
              "a blank line between sentences")


def read_conll(path: Path, tag_column: int = -1, encoding: str = "utf-8") -> Dataset:
    """CoNLL column file -> rows of `tokens` and `tags` (blank line between sentences, -DOCSTART- skipped).

    Raises:
        ConllError: naming the line (and its content) that has a single column, a column count other than the
            first token line's, or no column `tag_column`.
    """
    from datasets import Dataset

    sentences: dict[str, list] = {"tokens": [], "tags": []}
    words: list[str] = []
    tags: list[str] = []
    width, first = None, None
    with open(path, encoding=encoding) as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    sentences["tokens"].append(words)
                    sentences["tags"].append(tags)
                words, tags = [], []
                continue
            if len(fields) < 2:
                raise ConllError(f"line {number} has 1 column ({shown(line.strip())}); a token line holds the word "
                                 f"and its tag. {_CONLL_FIX}")
            if width is None:
                width, first = len(fields), number
                # Checked once, on the first token line: every other line has its width.
                if not -width <= tag_column < width:
                    columns = "1" if width == 2 else f"1 to {width - 1}"
                    raise ConllError(f"tag_column {tag_column} is not a column of line {number}, which has {width} "
                                     f"columns ({shown(line.strip())}). Set the task's data.tag_column to {columns} "
                                     "(0 is the word), or -1 for the last column")
            if len(fields) != width:
                raise ConllError(f"line {number} has {len(fields)} columns, expected {width} as on line {first} (the "
                                 f"first token line): {shown(line.strip())}. {_CONLL_FIX}")
            words.append(fields[0])
            tags.append(fields[tag_column])
    if words:
        sentences["tokens"].append(words)
        sentences["tags"].append(tags)
    return Dataset.from_dict(sentences)


def _has_blank_lines(path: Path, encoding: str) -> bool:
    with open(path, encoding=encoding) as handle:
        return any(not line.strip() for line in handle)


def text_problem(path: Path, fmt: str, encoding: str) -> str | None:
    """The first line of a text file that does not decode with `encoding`, or (JSONL) is not one JSON value;
    None when the file is fine. Read line by line: the file is read again by the loader anyway."""
    if fmt == "parquet":
        return None
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as err:
                return (f"{path}: line {number} is not valid {encoding} (byte {raw[err.start]:#04x}). Set the "
                        f"task's data.encoding to the file's encoding (e.g. latin-1), or convert the file to UTF-8.")
            except LookupError:
                return f"{path}: unknown encoding {encoding!r} in data.encoding. Use e.g. utf-8 or latin-1."
            if fmt == "jsonl" and line.strip():
                try:
                    json.loads(line)
                except ValueError as err:
                    return (f"{path}: line {number} is not valid JSON ({err.msg} at column {err.colno}): "
                            f"{shown(line.strip())}. Fix or remove that line.")
    return None


def _read_file(data: DataConfig, path: Path, fmt: str) -> Dataset:
    from datasets import Dataset, load_dataset

    if fmt == "conll":
        return read_conll(path, data.tag_column, data.encoding)
    if fmt == "squad":
        return read_squad(path, data.encoding)

    if fmt in ("csv", "tsv"):
        kwargs = {
            "delimiter": data.delimiter or ("\t" if fmt == "tsv" else ","),
            "quoting": _QUOTING[data.quoting],
            "encoding": data.encoding,
        }
        if data.column_names:
            kwargs["column_names"] = list(data.column_names)
        # pandas treats a header row as data once names are given, unless told the header's row number.
        kwargs["header"] = 0 if data.header else None
        # Keep text cells as text: pandas would turn "NA"/"null" sentences into NaN.
        kwargs["keep_default_na"] = False
        return load_dataset("csv", data_files=str(path), split="train", **kwargs)
    if fmt == "jsonl" and _has_blank_lines(path, data.encoding):
        # datasets' JSON reader fails on blank lines with a message that names neither file nor line.
        with open(path, encoding=data.encoding) as handle:
            return Dataset.from_list([json.loads(line) for line in handle if line.strip()])
    if fmt in ("json", "jsonl"):
        return load_dataset("json", data_files=str(path), split="train", encoding=data.encoding)
    return load_dataset("parquet", data_files=str(path), split="train")


def _load_local(name: str, data: DataConfig, split: str, root: DataRoot,
                problems: ProblemCollector) -> tuple[Dataset, str] | None:
    path = resolve_path(getattr(data, split), root)
    where = f"tasks.{name}.data.{split}"
    if not path.is_file():
        problems.add(f"{where}: file not found: {path}. Check the path (relative paths start at data_dir "
                     "or the config's folder).")
        return None
    if path.stat().st_size == 0:
        problems.add(f"{path}: the {split} file of task '{name}' is empty. Point it at a file with rows.")
        return None
    fmt = _file_format(data, path)
    if fmt is None:
        problems.add(f"{where}: cannot tell the format of {path.name}; set 'format' to one of "
                     f"{', '.join(FORMATS)}.")
        return None
    problem = text_problem(path, fmt, data.encoding)
    if problem:
        problems.add(problem)
        return None
    if fmt in ("csv", "tsv") and data.header and _count_lines(path, data.encoding, 2) < 2:
        # datasets reports a header-only file as 'Instruction "train" corresponds to no data!'.
        problems.add(f"{path}: the {split} file of task '{name}' has a header but no rows. Point it at a "
                     "file with rows.")
        return None
    try:
        return _read_file(data, path, fmt), str(path)
    except ConllError as err:
        problems.add(f"{path}: cannot read as conll: {err}.")
        return None
    except Exception as err:  # datasets wraps parser errors in many types; report the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        problems.add(f"{path}: cannot read as {fmt}: {first}. Check delimiter, quoting, encoding and header.")
        return None


def _count_lines(path: Path, encoding: str, limit: int) -> int:
    """Non-blank lines of a text file, counting no further than `limit`."""
    count = 0
    with open(path, encoding=encoding, errors="replace") as handle:
        for line in handle:
            count += bool(line.strip())
            if count >= limit:
                break
    return count


def _load_hub(name: str, data: DataConfig, split: str, problems: ProblemCollector) -> tuple[Dataset, str] | None:
    from datasets import load_dataset

    hub_split = {"train": data.train_split, "eval": data.eval_split, "test": data.test_split}[split]
    source = f"{data.hub}" + (f"/{data.hub_config}" if data.hub_config else "") + f"[{hub_split}]"
    try:
        return load_dataset(data.hub, data.hub_config, split=hub_split), source
    except Exception as err:  # network, missing split, missing config: all reported the same way
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        problems.add(f"tasks.{name}.data.hub: cannot load {source}: {first}. Without network, give local "
                     "files and --data_dir.")
        return None


def load_task_splits(name: str, task: Task, data: DataConfig | None, root: DataRoot, problems: ProblemCollector,
                     splits: tuple[str, ...] = SPLITS) -> TaskSplits:
    """Load the splits of one task and check their columns; problems go to `problems` (file and row named)."""
    out = TaskSplits()
    if data is None:
        problems.add(f"tasks.{name}: no 'data' section. Add 'data: {{train: FILE, eval: FILE}}' or a Hub name.")
        return out
    local = uses_local_files(data, root)
    for split in splits:
        wanted = getattr(data, split) if local else (split != "test" or data.test_split)
        if not wanted:
            continue
        loaded = _load_local(name, data, split, root, problems) if local else _load_hub(name, data, split, problems)
        if loaded is None:
            continue
        dataset, source = loaded
        if split == "train" and data.eval_fraction:
            if data.split_by and data.split_by not in dataset.column_names:
                problems.add(f"{source}: split_by column '{data.split_by}' not found; columns are "
                             f"{dataset.column_names}.")
                continue
            dataset, held_out = split_by_group(dataset, data.split_by, data.eval_fraction)
            out.splits["eval"] = _first(held_out, data.max_eval_samples)
            out.sources["eval"] = f"{source} (held out)"
        dataset = _first(dataset, {"train": data.max_train_samples, "eval": data.max_eval_samples}.get(split))
        if len(dataset) == 0:
            problems.add(f"{source}: the {split} split of task '{name}' is empty. Point it at a file with rows.")
            continue
        # A test split may come without labels; only its text columns are needed.
        required = list(task.text) if split == "test" else task.required_columns()
        missing = [c for c in required if c not in dataset.column_names]
        if missing:
            problems.add(
                f"{source}: column '{missing[0]}' (task '{name}') not found; columns are "
                f"{dataset.column_names}. Fix 'text'/'label' or set 'column_names' (and 'header: false')."
            )
            continue
        out.splits[split] = dataset
        out.sources[split] = source
    return out


def _first(dataset: Dataset, limit: int | None) -> Dataset:
    return dataset.select(range(limit)) if limit is not None and len(dataset) > limit else dataset


__all__ = ["FORMATS", "QUOTING", "DataConfig", "DataRoot", "TaskSplits", "load_task_splits", "resolve_path",
           "uses_local_files"]

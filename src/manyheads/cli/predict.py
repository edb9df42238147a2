"""`manyheads predict MODEL_DIR --input FILE --output FILE.jsonl [--task NAME ...] [--backend torch|onnx]`.

Streams: rows are read lazily, checked, predicted and written in chunks of `--chunk_rows`, so memory does
not grow with the input. Lines go to `OUTPUT.partial` as they are done; the file takes its final name only
when every row is done, so `OUTPUT` never holds a partial result.

`--backend onnx` runs a folder written by `manyheads export --format onnx` in ONNX Runtime, with the same
outputs; `--onnx_file model_int8.onnx` picks its int8 graph.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, TYPE_CHECKING, Any

from ..errors import ConfigError
from .common import THRESHOLD_HELP, apply_threshold, model_dir_problem, parse_threshold, quiet_libraries

if TYPE_CHECKING:
    from ..serving.predictor import MultiTaskPredictor

HELP = "Predict every task (or the chosen ones) for each row of a CSV/TSV/JSONL file, one encoder pass per batch."
CHUNK_ROWS = 8192  # rows read, checked and predicted together: bounds memory; large enough that sorting
# rows by length within a chunk pads about as little as sorting the whole input (1024 was 6 % slower)
PARTIAL = ".partial"
PREVIOUS = ".previous"
EPILOG = """\
Streaming: JSONL is read line by line and CSV/TSV row by row (a .json list is read whole: use JSONL for big
inputs). Rows are predicted in chunks of --chunk_rows and written to OUTPUT.partial as each chunk is done;
OUTPUT.partial is renamed to OUTPUT when every row is done: OUTPUT never holds a partial result (a killed run
leaves OUTPUT.partial; a run stopped by an error removes it). An OUTPUT of an earlier run is moved to
OUTPUT.previous when a run starts (so a killed run never leaves an old, complete OUTPUT beside its partial one),
deleted when the run completes, and put back when it stops at an error. --output may not be the --input file.

Which tasks run on a row: with --task, exactly those, and each must be able to read every row; without it,
every task whose input fields the row has (a single-text task also reads a plain 'text' field), and a row
with the fields of no task is an error.

Bad rows: a field missing (for a task named with --task), or a value that is not text (null, a number, a
list where a string is expected; a token task also takes a list of words) is an error naming the line and
field. --on_error fail (default) stops there with exit code 2 and writes no OUTPUT. --on_error skip predicts
on: each task that cannot read a row gets {"error": "<message>"} in place of its prediction, the row's other
tasks are predicted as usual, and a row that no task can read gets a top-level "error":
  {"index": 6, "sentiment": {"label": "pos", ...}, "match": {"error": "in.jsonl:7: field 'other' is null..."}}
  {"index": 7, "error": "in.jsonl:8: no task can read this row: its fields are ['id']; ..."}
A file that cannot be read (not UTF-8, a malformed JSON line, a CSV row with the wrong number of fields)
always stops the run.

Output: one JSON line per input row, in input order: {"index": <0-based row>, "<task>": <prediction>, ...}.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The epilog's examples are JSON lines: keep its line breaks.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("model_dir", help="folder written by 'manyheads train' (--backend onnx: by 'manyheads export "
                                            "--format onnx')")
    parser.add_argument("--input", required=True,
                        help="UTF-8 CSV, TSV (.tsv/.txt), JSONL or JSON (a list, read whole) file of records")
    parser.add_argument("--output", required=True,
                        help="JSONL file: one line per input row (written as OUTPUT.partial until complete)")
    parser.add_argument("--task", action="append", help="only this task (repeat for several)")
    parser.add_argument("--batch_size", type=int, default=32, help="rows per encoder pass")
    parser.add_argument("--chunk_rows", type=int, default=None,
                        help=f"rows read, checked, predicted and written at a time (default: the larger of "
                             f"{CHUNK_ROWS} and --batch_size); a batch never spans two chunks")
    parser.add_argument("--on_error", choices=["fail", "skip"], default="fail",
                        help="a row whose fields a task cannot read: stop (fail) or mark it with an \"error\" "
                             "and go on (skip); see below")
    parser.add_argument("--threshold", action="append", metavar="VALUE",
                        help=f"{THRESHOLD_HELP} (default: the model's own, as saved)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 ... (default: cuda if available; --backend onnx: cpu)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                        help="torch: the saved PyTorch model; onnx: ONNX Runtime on a folder written by 'manyheads "
                             "export --format onnx' (same outputs; needs pip install \"manyheads[onnx]\")")
    parser.add_argument("--onnx_file", default=None,
                        help="--backend onnx: the graph in MODEL_DIR to run, e.g. model_int8.onnx "
                             "(default: model.onnx)")


class BadRow(ConfigError):
    """A row that a task cannot read, under --on_error fail (the file itself could be read)."""


@dataclass
class Summary:
    rows: int = 0
    per_task: Counter[str] = field(default_factory=Counter)
    rows_with_errors: int = 0
    first_error: str | None = None


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..records import iter_records
    from ..serving.predictor import MultiTaskPredictor

    problems = _argument_problems(args)
    threshold = parse_threshold(args.threshold)
    if problems:
        raise ConfigError(problems)
    quiet_libraries()
    try:
        predictor = MultiTaskPredictor(args.model_dir, device=args.device, batch_size=args.batch_size,
                                       backend=args.backend, onnx_file=args.onnx_file)
    except ConfigError:
        raise  # already names the folder and the fix (e.g. strict loading's ModelLoadError)
    except _graph_errors(args.backend) as err:
        # ONNX Runtime parses the graph only when the session is created: a truncated copy fails here.
        graph = os.path.join(args.model_dir, args.onnx_file or "model.onnx")
        # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from <path> failed:Protobuf parsing failed."
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = text.rsplit("failed:", 1)[-1].strip().rstrip(".")
        raise ConfigError(f"MODEL_DIR: {graph} cannot be read as an ONNX graph ({reason}); the file is truncated or "
                          "corrupted. Export it again: manyheads export <the trained model's folder> --format onnx "
                          f"--output {args.model_dir} --overwrite.") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"MODEL_DIR: could not load the model in {args.model_dir}: {err}") from None
    unknown = [t for t in args.task or [] if t not in predictor.tasks]
    if unknown:
        raise ConfigError(f"--task: {unknown} not in this model; its tasks are {predictor.tasks}.")
    if threshold is not None:
        apply_threshold({name: predictor.heads[name] for name in args.task or predictor.tasks}, threshold,
                        "--threshold")
    note = predictor.passes_note(args.task)
    if note:
        print(f"note: {note}.", file=sys.stderr)
    chunk_rows = args.chunk_rows or max(CHUNK_ROWS, args.batch_size)
    partial, previous = args.output + PARTIAL, args.output + PREVIOUS
    if os.path.isfile(args.output):
        # An earlier run's complete OUTPUT beside this run's OUTPUT.partial would pass for this run's result if this
        # run were killed: it waits as OUTPUT.previous, and comes back if this run stops at a bad row.
        os.replace(args.output, previous)
    try:
        handle = open(partial, "w", encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--output: cannot write {partial}: {err.strerror}.") from None
    try:
        with handle:
            summary = _stream(predictor, iter_records(args.input), handle, args.task, args.on_error, chunk_rows)
            os.fsync(handle.fileno())  # the renamed file must hold every line, even after a crash
    except ConfigError as err:
        # A bad row or an unreadable file: the lines written so far are of no use on their own. (A killed
        # run cannot get here: it leaves OUTPUT.partial, which says what it is.)
        os.remove(partial)
        if os.path.isfile(previous):
            os.replace(previous, args.output)
        hint = " (--on_error skip marks such rows and predicts the others)" if isinstance(err, BadRow) else ""
        raise ConfigError([*err.problems, f"--output: {args.output} not written: the run stopped at the problem "
                                          f"above, and {partial} was removed{hint}."]) from None
    os.replace(partial, args.output)
    if os.path.isfile(previous):
        os.remove(previous)
    tasks = ", ".join(f"{name} {summary.per_task[name]}" for name in predictor.tasks if summary.per_task[name])
    print(f"{summary.rows} rows -> {args.output}; rows predicted per task: {tasks or 'none'}")
    if summary.rows_with_errors:
        print(f"{summary.rows_with_errors} rows marked with \"error\" (--on_error skip); the first: "
              f"{summary.first_error}")
    return 0


def _graph_errors(backend: str) -> tuple[type[BaseException], ...]:
    """ONNX Runtime's errors for a graph file it cannot parse (truncated, corrupted, not a graph); none for torch.

    Its exception classes derive from `Exception` only, so `(OSError, ValueError)` misses them."""
    if backend != "onnx":
        return ()
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph, InvalidProtobuf, NoModel
    except ImportError:  # onnxruntime missing: loading the folder says how to install it
        return ()
    return InvalidProtobuf, InvalidGraph, NoModel


def _argument_problems(args: argparse.Namespace) -> list[str]:
    """Every problem of the options and paths, found before anything is loaded or written."""
    problems = []
    if args.batch_size < 1:
        problems.append(f"--batch_size: got {args.batch_size}; give the rows per encoder pass (>= 1), e.g. 32.")
    if args.chunk_rows is not None and args.chunk_rows < 1:
        problems.append(f"--chunk_rows: got {args.chunk_rows}; give the rows per chunk (>= 1), e.g. {CHUNK_ROWS}.")
    if not os.path.isfile(args.input):
        problems.append(f"--input: file not found: {args.input}. Check the path.")
    elif not os.access(args.input, os.R_OK):
        problems.append(f"--input: {args.input} cannot be read (no permission).")
    folder = os.path.dirname(args.output) or "."
    if os.path.isfile(args.input) and os.path.exists(args.output) and os.path.samefile(args.input, args.output):
        problems.append(f"--output: {args.output} is the --input file; predictions would replace the rows being "
                        "read. Give another file.")
    elif os.path.isdir(args.output):
        problems.append(f"--output: {args.output} is a folder; give a file in it, e.g. "
                        f"{os.path.join(args.output, 'predictions.jsonl')}.")
    elif not os.path.isdir(folder):
        problems.append(f"--output: folder {folder} does not exist; create it (mkdir -p {folder}) or choose "
                        "another path.")
    if args.onnx_file is not None and args.backend != "onnx":
        problems.append(f"--onnx_file: {args.onnx_file} is a graph of an ONNX export; add --backend onnx (and give "
                        "the folder written by 'manyheads export --format onnx').")
    model_problem = model_dir_problem(args.model_dir)
    if model_problem:
        problems.append(model_problem)
    return problems


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _stream(predictor: MultiTaskPredictor, rows: Iterable[tuple[str, dict[str, Any]]], handle: IO[str],
            tasks: list[str] | None, on_error: str, chunk_rows: int) -> Summary:
    """Check, predict and write `rows` chunk by chunk; raises `ConfigError` at the first bad row under `fail`."""
    summary = Summary()
    for chunk in _chunks(rows, chunk_rows):
        plans = [predictor.plan_row(record, tasks, where) for where, record in chunk]
        problems = [p for plan in plans for p in plan.problems]
        if problems and on_error == "fail":
            raise BadRow(problems[0])
        predictions = predictor.predict_rows([record for _, record in chunk], [plan.tasks for plan in plans])
        for plan, prediction in zip(plans, predictions):
            outputs = {**{name: {"error": message} for name, message in plan.errors.items()}, **prediction}
            line: dict[str, Any] = {"index": summary.rows}
            if plan.error:
                line["error"] = plan.error
            line.update((name, outputs[name]) for name in predictor.tasks if name in outputs)
            handle.write(json.dumps(line) + "\n")
            summary.rows += 1
            summary.per_task.update(prediction.keys())
            if plan.problems:
                summary.rows_with_errors += 1
                summary.first_error = summary.first_error or plan.problems[0]
        handle.flush()  # what is done is on disk (in OUTPUT.partial) if the run is killed
    return summary

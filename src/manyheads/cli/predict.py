"""`manyheads predict MODEL_DIR --input FILE --output FILE.jsonl [--task NAME ...]`."""

from __future__ import annotations

import argparse
import json
import os

from .common import quiet_libraries

HELP = "Predict every task (or the chosen ones) for each row of a CSV/TSV/JSONL file, one encoder pass per batch."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="folder written by 'manyheads train'")
    parser.add_argument("--input", required=True, help="CSV, TSV, JSON or JSONL file of records")
    parser.add_argument("--output", required=True, help="JSONL file: one line per input row")
    parser.add_argument("--task", action="append", help="only this task (repeat for several)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import ConfigError
    from ..inference import MultiTaskPredictor, read_records

    quiet_libraries()
    if not os.path.isfile(args.input):
        raise ConfigError(f"--input: file not found: {args.input}. Check the path.")
    records = read_records(args.input)
    predictor = MultiTaskPredictor(args.model_dir, device=args.device, batch_size=args.batch_size)
    unknown = [t for t in args.task or [] if t not in predictor.tasks]
    if unknown:
        raise ConfigError(f"--task: {unknown} not in this model; its tasks are {predictor.tasks}.")
    predictions = predictor.predict(records, args.task)
    ran = sorted({t for p in predictions for t in p})
    if records and not ran:
        raise ConfigError(f"--input: no task can read these columns {sorted(records[0])}; the tasks read "
                          f"{ {t: predictor.model.tasks[t].text for t in predictor.tasks} }.")
    with open(args.output, "w", encoding="utf-8") as handle:
        for index, prediction in enumerate(predictions):
            handle.write(json.dumps({"index": index, **prediction}) + "\n")
    print(f"{len(predictions)} rows, tasks {ran} -> {args.output}")
    return 0

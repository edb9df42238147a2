"""`manyheads export MODEL_DIR --task NAME --output DIR`: one task as a stock AutoModelFor... folder."""

from __future__ import annotations

import argparse
import os

from .common import quiet_libraries

HELP = "Export one task as a stock transformers model folder (loadable by AutoModelFor... and pipeline)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="folder written by 'manyheads train'")
    parser.add_argument("--task", required=True, help="the task to export")
    parser.add_argument("--output", required=True, help="folder to write")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import ConfigError
    from ..export import ExportError, export_task

    quiet_libraries()
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ConfigError(f"--output: {args.output} is a file; export writes a folder (config, weights, tokenizer). "
                          "Give a new or existing folder.")
    try:
        class_name = export_task(args.model_dir, args.task, args.output)
    except ExportError as err:
        raise ConfigError(str(err)) from None
    print(f"task '{args.task}' exported as {class_name} to {args.output}")
    return 0

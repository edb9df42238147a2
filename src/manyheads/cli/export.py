"""`manyheads export MODEL_DIR --output DIR [--format stock|onnx] [--task NAME ...] [--quantize int8]`.

`--format stock` (default): one task as a stock AutoModelFor... folder. `--format onnx`: the encoder and the
heads of every task (or of the --task ones) as one ONNX graph, checked against PyTorch (see `manyheads.export.onnx`).
"""

from __future__ import annotations

import argparse
import os

from ..errors import ConfigError
from .common import model_dir_problem, quiet_libraries

HELP = ("Export one task as a stock transformers model folder (--format stock), or every task as one ONNX graph "
        "(--format onnx).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="folder written by 'manyheads train'")
    parser.add_argument("--format", choices=["stock", "onnx"], default="stock",
                        help="stock: one task as an AutoModelFor... folder (loadable by pipeline); onnx: model.onnx "
                             "with one logits_<task> output per task, plus config and tokenizer")
    parser.add_argument("--task", action="append",
                        help="stock: the task to export (exactly one); onnx: a task to include (repeat for several; "
                             "default: every task)")
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a model that --output already holds (never MODEL_DIR itself)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="onnx only: also write model_int8.onnx (ONNX Runtime dynamic int8 quantization)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    # A missing folder, a file or a plain encoder folder: one line here, not a traceback from loading it.
    model_problem = model_dir_problem(args.model_dir)
    problems = [model_problem] if model_problem else []
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        problems.append(f"--output: {args.output} is a file; export writes a folder (config, weights, tokenizer). "
                        "Give a new or existing folder.")
    problems += _output_problems(args.model_dir, args.output, args.overwrite)
    if args.quantize and args.format != "onnx":
        problems.append(f"--quantize: {args.quantize} quantization applies to ONNX graphs; add --format onnx "
                        "(a stock folder keeps its PyTorch weights).")
    tasks = args.task or []
    if args.format == "stock" and len(tasks) != 1:
        problems.append(f"--task: --format stock exports one task; got {len(tasks)} ({tasks}). Give exactly one "
                        "--task NAME, or use --format onnx for several tasks in one graph.")
    if problems:
        raise ConfigError(problems)
    quiet_libraries()
    if args.format == "onnx":
        return _run_onnx(args)
    from ..export.stock import ExportError, export_task

    try:
        class_name = export_task(args.model_dir, tasks[0], args.output)
    except ExportError as err:
        raise ConfigError(str(err)) from None
    print(f"task '{tasks[0]}' exported as {class_name} to {args.output}")
    return 0


# Files whose presence says a folder holds a model (manyheads, stock transformers or an ONNX export).
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "model.onnx")


def _output_problems(model_dir: str, output: str, overwrite: bool) -> list[str]:
    """An export never writes over the model it reads, nor over another model unless --overwrite says so."""
    if not os.path.isdir(output):
        return []
    if os.path.isdir(model_dir) and os.path.samefile(model_dir, output):
        return [f"--output: {output} is MODEL_DIR itself; exporting there would overwrite the multi-task model. "
                "Give another folder."]
    found = [name for name in MODEL_FILES if os.path.exists(os.path.join(output, name))]
    if found and not overwrite:
        return [f"--output: {output} already holds a model ({', '.join(found)}); the export would overwrite it. "
                "Give a new folder, or add --overwrite to replace that model."]
    return []


def _run_onnx(args: argparse.Namespace) -> int:
    from ..export.onnx import export_onnx

    done = export_onnx(args.model_dir, args.output, tasks=args.task, quantize=args.quantize)
    diffs = ", ".join(f"{name} {diff:.1e}" for name, diff in done.max_diff.items())
    graph = os.path.join(args.output, done.files["fp32"])
    print(f"tasks {', '.join(done.tasks)} exported as one ONNX graph to {graph}")
    print(f"max |ONNX - PyTorch| of the logits per task (generated inputs): {diffs}")
    if done.int8:
        # A multilabel head decides per label at its thresholds: its arg-max would say nothing about its answers.
        how = {"thresholds": "same label set at its thresholds", "arg-max": "same arg-max"}
        agreement = ", ".join(f"{name} {v['agreement']:.1%} {how.get(v.get('decision'), 'same arg-max')} "
                              f"(max diff {v['max_diff']:.1e})" for name, v in done.int8.items())
        print(f"int8 graph {os.path.join(args.output, done.files['int8'])}; decision agreement with fp32 per task "
              f"(generated inputs): {agreement}")
    return 0

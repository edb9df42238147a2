"""Study 13 (issue 25): does `torch_compile: true` pay for a multi-task model on this machine?

What is measured
    Two tasks (SST-2 and RTE rows, MiniLM, the library's defaults: length grouping on, the precision `bf16: auto`
    picks unless --precision says otherwise) trained for `--steps` optimizer steps, once without and once with
    `torch_compile: true`, from the same initial weights and on the same batches. For each run: the wall time of
    `trainer.train()`, the first step's time (where compiling happens), and the median step time over the last
    half of the steps (steady state: shapes seen before no longer recompile). The break-even step count is where
    the compiled run's extra start-up is paid back by its faster steps (none when its steps are not faster).

Run from the repository root:

    HF_HUB_OFFLINE=1 python bench/compile.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    add_common_arguments,
    command_line,
    header_lines,
    now,
    parse_with_presets,
    publish,
    quiet_libraries,
    require_files,
    step_timer,
    training_fields,
    write_glue_subset,
)

TASKS = {"sst2": "sentence", "rte": ["sentence1", "sentence2"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(parser, "sst2/train.tsv and rte/train.tsv")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rows", type=int, default=1024, help="training rows per task")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--seed", type=int, default=42)
    args = parse_with_presets(parser, argv, {"quick": {"steps": 4, "rows": 64, "batch_size": 8}})
    require_files(parser, args.data_dir, [Path(t) / "train.tsv" for t in TASKS])
    return args


def train_once(args: argparse.Namespace, data_dir: Path, output_dir: str, model: Any, prepared: Any,
               compile_: bool) -> dict[str, float]:
    from manyheads.recipe import build_config, build_trainer

    fields = training_fields(output_dir, args.batch_size, args.steps, args.seed, bf16=False)
    fields.pop("use_cpu")
    fields["bf16"] = {"auto": "auto", "bf16": True, "fp32": False}[args.precision]
    run = build_config({"model": args.model, "data_dir": str(data_dir), "max_length": args.max_length,
                        "tasks": task_entries(), "training": {**fields, "torch_compile": compile_}})
    trainer = build_trainer(run, prepared, model=copy.deepcopy(model))
    timer = step_timer()
    trainer.add_callback(timer)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    steps = [b - a for a, b in zip([start, *timer.ends[:-1]], timer.ends)]
    return {"wall": wall, "first": steps[0], "steady": statistics.median(steps[len(steps) // 2:]),
            "bf16": float(trainer.args.bf16)}


def task_entries() -> list[dict[str, Any]]:
    return [{"name": t, "type": "classification", "text": text, "label": "label",
             "data": {"train": f"{t}/train.tsv", "quoting": "none"}} for t, text in TASKS.items()]


def main(argv: list[str] | None = None) -> int:
    from manyheads.recipe import build_config, build_model, prepare_data

    args = parse_args(argv)
    command, date, load_before = command_line("compile.py", argv), now(), os.getloadavg()
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="manyheads-compile-") as tmp:
        data_dir = Path(tmp) / "data"
        for task in TASKS:
            write_glue_subset(args.data_dir, data_dir, task, "train", args.rows, seed=0)
        base = build_config({"model": args.model, "data_dir": str(data_dir), "max_length": args.max_length,
                             "tasks": task_entries()})
        prepared = prepare_data(base)
        model = build_model(base, prepared.tasks, seed=args.seed)
        runs = {}
        for compile_ in (False, True):
            print(f"training {args.steps} steps, torch_compile={compile_}", flush=True)
            runs[compile_] = train_once(args, data_dir, os.path.join(tmp, f"out-{compile_}"), model, prepared,
                                        compile_)
            print(f"  {runs[compile_]}", flush=True)
    plain, compiled = runs[False], runs[True]
    saved = plain["steady"] - compiled["steady"]
    extra = compiled["wall"] - plain["wall"] + saved * args.steps  # start-up cost beyond the step time saved
    break_even = f"{extra / saved:.0f} steps" if saved > 0 else "never (compiled steps are not faster)"
    lines = [*header_lines("torch_compile on a multi-task model", command, date, load_before, os.getloadavg()),
             f"- settings: tasks {', '.join(TASKS)} ({args.rows} rows each), MiniLM `{args.model}`, {args.steps} "
             f"steps of {args.batch_size}, max_length {args.max_length}, length grouping on, precision "
             f"{args.precision} ({'bf16' if plain['bf16'] else 'fp32'}), same initial weights and batches", "",
             "| run | train() wall s | first step s | median step s (last half) |", "|---|---:|---:|---:|"]
    for name, r in (("eager", plain), ("torch_compile", compiled)):
        lines.append(f"| {name} | {r['wall']:.1f} | {r['first']:.2f} | {r['steady']:.3f} |")
    lines += ["", f"- steady-state step time compiled / eager: {compiled['steady'] / plain['steady']:.2f}; "
              f"break-even: {break_even}", ""]
    publish(args, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

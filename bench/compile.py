"""Study 13 (issue 25): does `torch_compile: true` pay for a multi-task model on this machine?

What it measures and how: bench/README.md, study 13.

    HF_HUB_OFFLINE=1 python bench/compile.py --data_dir ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import _common as bc

TASKS = ["sst2", "rte"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bc.parser(__doc__)
    bc.add_common_arguments(parser, "sst2/train.tsv and rte/train.tsv")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rows", type=int, default=1024, help="training rows per task")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--seed", type=int, default=42)
    args = bc.parse_with_presets(parser, argv, {"quick": {"steps": 4, "rows": 64, "batch_size": 8}})
    bc.require_files(parser, args.data_dir, [Path(t) / "train.tsv" for t in TASKS])
    args.tasks, args.samples_per_task, args.bf16 = TASKS, args.rows, False
    return args


def train_once(ctx: bc.TimedRuns, compile_: bool) -> dict[str, float]:
    bf16 = {"auto": "auto", "bf16": True, "fp32": False}[ctx.args.precision]
    times, _ = ctx.train(ctx.recipe(ctx.args.steps, f"out-{compile_}", bf16=bf16, torch_compile=compile_,
                                    use_cpu=False))
    steps = [b - a for a, b in zip(times, times[1:])]
    return {"wall": ctx.last_wall, "first": steps[0], "steady": statistics.median(steps[len(steps) // 2:]),
            "bf16": float(ctx.last_args.bf16)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = bc.Invocation.of("compile.py", argv)
    bc.quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="manyheads-compile-") as tmp:
        ctx = bc.TimedRuns(args, tmp).prepare()
        runs = {}
        for compile_ in (False, True):
            print(f"training {args.steps} steps, torch_compile={compile_}", flush=True)
            runs[compile_] = train_once(ctx, compile_)
            print(f"  {runs[compile_]}", flush=True)
    plain, compiled = runs[False], runs[True]
    saved = plain["steady"] - compiled["steady"]
    extra = compiled["wall"] - plain["wall"] + saved * args.steps  # start-up cost beyond the step time saved
    break_even = f"{extra / saved:.0f} steps" if saved > 0 else "never (compiled steps are not faster)"
    lines = [*invocation.header("torch_compile on a multi-task model"),
             f"- settings: tasks {', '.join(TASKS)} ({args.rows} rows each), MiniLM `{args.model}`, {args.steps} "
             f"steps of {args.batch_size}, max_length {args.max_length}, length grouping on, precision "
             f"{args.precision} ({'bf16' if plain['bf16'] else 'fp32'}), same initial weights and batches", "",
             "| run | train() wall s | first step s | median step s (last half) |", "|---|---:|---:|---:|"]
    for name, r in (("eager", plain), ("torch_compile", compiled)):
        lines.append(f"| {name} | {r['wall']:.1f} | {r['first']:.2f} | {r['steady']:.3f} |")
    lines += ["", f"- steady-state step time compiled / eager: {compiled['steady'] / plain['steady']:.2f}; "
              f"break-even: {break_even}", ""]
    bc.publish(args, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

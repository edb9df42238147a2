"""`manyheads compare CONFIG [--seeds 1 2 3] [--jobs N] [--output_dir DIR] [--key value ...]`: does multi-task
help here?

Trains the config's multi-task model and each task alone (with `--groups`, each group of tasks too; with
`--finetune`, each task fine-tuned from the multi-task model), at the same number of training examples per task and
with the same recipe, for each seed; writes `compare.json` and `compare.md` (per task: mean ± sd of the main
metric, the difference, whether it is beyond the seeds' spread, a verdict; ΔMTL; stored parameters). Running
the same command again continues an interrupted comparison. See `manyheads.recipe.compare`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import traceback
from pathlib import Path
from typing import IO, Any

HELP = "Multi-task vs each task alone, at equal examples seen, over seeds: does multi-task help here?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config of the multi-task run (two or more tasks)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3],
                        help="one run of each model per seed (default: 1 2 3); replaces training.seed")
    parser.add_argument("--alone", nargs="+", default=None, metavar="TASK",
                        help="the tasks also trained alone (default: every task); the others train only in the "
                             "multi-task run, and only these get a verdict")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained side by side, each in its own process (default: 1, one after the other in "
                             "this process)")
    parser.add_argument("--output_dir", default=None,
                        help="the comparison's folder (default: runs/<config name>-compare); one subfolder per run")
    parser.add_argument("--groups", nargs="+", default=None, metavar="TASKS",
                        help="also train each group as one multi-task run per seed, its tasks seeing as many examples "
                             "as in the all-in-one run: one argument per group, tasks comma-separated ('rte,mrpc' "
                             "'stsb,cola'), or a file: groups.json ({\"groups\": [[...], ...]}) or affinity.json:K "
                             "(its recommended grouping into K groups); tasks in no group are trained alone as always")
    parser.add_argument("--finetune", nargs="?", const="1.0", default=None, metavar="STEPS_OR_MULTIPLE",
                        help="also fine-tune each task alone from each seed's multi-task model (MT-DNN: its encoder "
                             "and the task's head). Budget: as many examples of the task as the all-in-one run gave it "
                             "(the single-task run's steps); an integer is that many optimizer steps instead, a number "
                             "with a decimal point that multiple of the default (0.5: half). Stored parameters count "
                             "one encoder per task")
    parser.add_argument("--plan_only", action="store_true",
                        help="print every planned run (optimizer steps, examples per task) and stop: nothing trains")
    parser.set_defaults(accepts_overrides=True)
    parser.epilog = ("Flags after the config override it for every run, as in 'manyheads train': --max_steps 200 "
                     "--data_dir data/")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import ConfigError
    from ..recipe.compare import plan_comparison, run_comparison
    from ..recipe.compare_groups import parse_finetune, read_groups
    from ..recipe.compare_table import configurations_table, markdown_table
    from .common import quiet_libraries

    if args.jobs < 1:
        raise ConfigError(f"--jobs: {args.jobs}; give 1 or more runs at a time.")
    quiet_libraries()
    output_dir = args.output_dir or os.path.join("runs", f"{Path(args.config).stem}-compare")
    groups = read_groups(args.groups) if args.groups else None
    comparison = plan_comparison(args.config, extra, args.seeds, output_dir, alone=args.alone, groups=groups,
                                 finetune=parse_finetune(args.finetune))
    if args.plan_only:
        print("\n".join(plan_lines(comparison)))
        return 0
    summary = run_comparison(comparison, jobs=args.jobs, echo=lambda line: print(line, flush=True),
                             train_here=train_here)
    print()
    print("\n".join(markdown_table(summary)))
    if summary.get("configurations"):
        print()
        print("\n".join(configurations_table(summary["configurations"])))
    print(f"\ncomparison written to {Path(output_dir) / 'compare.json'} and compare.md")
    return 0


def train_here(argv: list[str], log: IO[str]) -> int:
    """`manyheads train ...` in this process, its output going to `log`; the exit code (1 for a crash, whose
    traceback goes to the log, so that the other runs go on)."""
    from . import train
    from .common import run_command

    parser = argparse.ArgumentParser(prog="manyheads train")
    train.add_arguments(parser)
    args, extra = parser.parse_known_args(argv[1:])
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            return run_command(train, args, extra)
        except Exception:  # a crash of one run (out of memory, a bug) is that run's failure
            traceback.print_exc()
            return 1


def plan_lines(comparison: Any) -> list[str]:
    """The planned runs as a Markdown table: one row per run, with its optimizer steps and examples per task."""
    training = comparison.run.training_arguments()
    # The heads' rates are shown when they are not simply learning_rate: both sides follow the same rule.
    rates = training.head_learning_rate is not None or training.head_learning_rate_scaling != "none"
    lines = [f"{len(comparison.runs)} runs planned in {comparison.output_dir} (nothing trained: --plan_only)", "",
             "| run | optimizer steps | examples per task |" + (" heads' learning rate |" if rates else ""),
             "|---|---:|---|" + ("---|" if rates else "")]
    for run in comparison.runs:
        examples = ", ".join(f"{task} {count}" for task, count in run.examples.items())
        after = f" (from {run.starts_from})" if run.starts_from else ""
        rate = (" " + ", ".join(f"{task} {value:.3g}" for task, value in run.head_rates.items()) + " |") \
            if rates else ""
        lines.append(f"| {run.key}{after} | {run.max_steps} | {examples} |{rate}")
    steps = sum(run.max_steps for run in comparison.runs)
    lines += ["", f"total: {steps} optimizer steps over {len(comparison.seeds)} seed(s)"]
    return lines
